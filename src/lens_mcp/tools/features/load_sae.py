"""load_sae: read a sparse autoencoder in SAELens's disk format and attach it to the loaded model, keyed by its
hook. Also the shared look-ups the other feature tools use (which SAE, the activation shape at a hook)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from lens_mcp.schemas.features import LoadSaeResult
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.features._sae import attach, sae_info


def load_sae(
    tc: ToolContext,
    spec: Annotated[
        str,
        Field(
            description="A builtin SAE ('smollm2-135m-resid'), a local folder with cfg.json + "
            "sae_weights.safetensors, or a Hugging Face repo id (owner/name) with sae_id"
        ),
    ],
    sae_id: Annotated[
        str | None,
        Field(
            description="Subfolder of the repo (or of the local folder) holding the SAE, e.g. 'blocks.8.hook_resid_pre'"
        ),
    ] = None,
) -> LoadSaeResult:
    """Load a sparse autoencoder (SAELens disk format: ReLU 'standard', JumpReLU, TopK) and attach it to the
    loaded model, keyed by the hook it reads; several can be loaded at once (one per hook; loading another on
    the same hook replaces it). The hook and d_in are checked against the model first: a mismatch is an error
    and nothing changes. The model's weights and outputs are not modified; SAEs are used only by sae_features,
    feature_attribution, steering_vector(from_feature) and generate(sae_feature). Offline, a Hub repo id works
    only if it is already in the local HF cache. model_info lists the loaded SAEs."""
    sae, replaced = attach(tc, spec, sae_id, tc.load_policy)
    return LoadSaeResult(
        loaded=sae_info(sae),
        replaced=replaced,
        saes=list(tc.model.saes),
        notes=list(sae.notes),
        meaning=f"SAE with {sae.d_sae} features on {sae.hook_name} is ready; call sae_features(prompt) next.",
    )
