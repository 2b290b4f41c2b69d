"""What a tool function receives besides its arguments: the model, the caps, and a progress reporter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lens_mcp.limits import Limits
from lens_mcp.loading import LoadedModel
from lens_mcp.progress import ProgressReporter, no_progress


@dataclass
class ToolContext:
    model: LoadedModel
    limits: Limits = field(default_factory=Limits)
    progress: ProgressReporter = no_progress

    @property
    def bridge(self) -> Any:
        return self.model.bridge

    @property
    def cfg(self) -> Any:
        return self.model.bridge.cfg

    @property
    def max_prompt_tokens(self) -> int:
        return self.limits.prompt_cap(self.cfg.n_ctx)
