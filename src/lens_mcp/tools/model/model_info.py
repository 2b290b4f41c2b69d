"""model_info: the facts about the loaded model an agent needs before choosing layers and heads."""

from __future__ import annotations

from lens_mcp.schemas.model import ModelInfo
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.model_facts import describe


def model_info(tc: ToolContext) -> ModelInfo:
    """Facts about the loaded model: layers, heads (n_kv_heads < n_heads means grouped-query attention),
    sizes, context length, device, dtype, the hook families run_with_cache accepts, load time, and the loaded
    SAEs and stored steering vectors.
    Call this first: every layer/head argument of the other tools is checked against these numbers."""
    return describe(tc)
