"""load_model: replace the loaded model; on failure the previous one stays loaded."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from lens_mcp.progress import ProgressReporter
from lens_mcp.schemas.model import ModelInfo
from lens_mcp.tools.core.context import HostControl, ToolContext
from lens_mcp.tools.core.model_facts import describe


def load_model(
    host: HostControl,
    progress: ProgressReporter,
    model: Annotated[
        str,
        Field(
            description="smollm2-135m, toy-induction, a Hugging Face name (gpt2, "
            "EleutherAI/pythia-70m; needs a network or HF cache), a folder saved "
            "with save_pretrained, or a .gguf file path"
        ),
    ],
    device: Annotated[
        Literal["auto", "cpu", "cuda", "mps"] | None,
        Field(description="auto (default) picks cuda, then cpu; mps only when named"),
    ] = None,
    dtype: Annotated[
        Literal["float32", "bfloat16", "float16"] | None,
        Field(description="Weights dtype; float32 (default) gives exact attributions"),
    ] = None,
) -> ModelInfo:
    """Load a different model and make it the one every tool uses; returns the same facts as model_info.
    Takes seconds (a .gguf's first load dequantizes and caches it: ~30 s). Other calls keep using the current
    model until the new one is ready; cancelling this call abandons the load. If loading fails, the previous
    model stays loaded and usable, and the error says why and what to try. The server may confine paths to
    its --load-root folders and turn Hugging Face names off (then the error says "not allowed")."""
    loaded = host.load(model, device, dtype, progress, confine=True)
    return describe(ToolContext(loaded, host.limits))
