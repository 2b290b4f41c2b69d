"""model_info: the facts about the loaded model an agent needs before choosing layers and heads."""

from __future__ import annotations

from lens_mcp.loading import LoadedModel
from lens_mcp.schemas.model import ModelInfo
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.hook_names import available_families


def describe(model: LoadedModel, max_prompt_tokens: int) -> ModelInfo:
    cfg = model.cfg
    return ModelInfo(
        name=model.spec.name,
        source="gguf" if model.spec.source == "gguf" else model.spec.source,
        architecture=str(getattr(cfg, "architecture", None) or type(model.bridge.original_model).__name__),
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        d_mlp=None if getattr(cfg, "attn_only", False) else cfg.d_mlp,
        d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx,
        device=model.device,
        dtype=model.dtype_name,
        hook_families=available_families(model.bridge),
        load_seconds=model.load_seconds,
        from_cache=model.from_cache,
        max_prompt_tokens=max_prompt_tokens,
        saes=[f"{hook} ({sae.architecture}, d_sae={sae.d_sae}, from {sae.source})" for hook, sae in model.saes.items()],
        steering_vectors=list(model.steering_vectors),
    )


def model_info(tc: ToolContext) -> ModelInfo:
    """Facts about the loaded model: layers, heads (n_kv_heads < n_heads means grouped-query attention),
    sizes, context length, device, dtype, the hook families run_with_cache accepts, load time, and the loaded
    SAEs and stored steering vectors.
    Call this first: every layer/head argument of the other tools is checked against these numbers."""
    return describe(tc.model, tc.max_prompt_tokens)
