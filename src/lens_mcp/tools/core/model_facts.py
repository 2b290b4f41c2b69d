"""The facts about a loaded model that model_info, load_model and the model resource report."""

from __future__ import annotations

from lens_mcp.schemas.model import ModelInfo
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.hook_names import available_families


def describe(tc: ToolContext) -> ModelInfo:
    model, view = tc.model, tc.view
    return ModelInfo(
        name=model.spec.name,
        source=model.spec.source,
        architecture=view.architecture,
        n_layers=view.n_layers,
        n_heads=view.n_heads,
        n_kv_heads=view.n_kv_heads,
        d_model=view.d_model,
        d_head=view.d_head,
        d_mlp=view.d_mlp,
        d_vocab=view.d_vocab,
        n_ctx=view.n_ctx,
        device=model.device,
        dtype=model.dtype_name,
        hook_families=available_families(view),
        load_seconds=model.load_seconds,
        from_cache=model.from_cache,
        max_prompt_tokens=tc.max_prompt_tokens,
        saes=[f"{hook} ({sae.architecture}, d_sae={sae.d_sae}, from {sae.source})" for hook, sae in model.saes.items()],
        steering_vectors=list(model.steering_vectors),
    )
