"""What a tool function receives besides its arguments: the model (through its typed view), the caps, the
load policy and a progress reporter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from lens_mcp.limits import Limits
from lens_mcp.loading import LoadedModel
from lens_mcp.loading.policy import LoadPolicy
from lens_mcp.progress import ProgressReporter, no_progress
from lens_mcp.tools.core.model_view import ModelView


@dataclass
class ToolContext:
    model: LoadedModel
    limits: Limits = field(default_factory=Limits)
    progress: ProgressReporter = no_progress
    load_policy: LoadPolicy | None = None
    """What a client may load (folders, Hub names); None allows anything (direct calls and tests)."""
    view: ModelView = field(init=False)
    """The model's hooks, weights, sizes and capabilities: the only way tools reach the engine."""

    def __post_init__(self) -> None:
        self.view = ModelView(self.model.bridge)

    @property
    def max_prompt_tokens(self) -> int:
        return self.limits.prompt_cap(self.view.n_ctx)


class HostControl(Protocol):
    """What a tool that replaces the model (load_model) may ask of the server's model host."""

    @property
    def limits(self) -> Limits: ...

    def load(
        self,
        spec_text: str,
        device: str | None = None,
        dtype: str | None = None,
        progress: ProgressReporter = no_progress,
        *,
        confine: bool = False,
    ) -> LoadedModel: ...
