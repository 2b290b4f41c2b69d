"""Hook families: short names for per-layer hook points, as TransformerLens's get_act_name uses them."""

from __future__ import annotations

from typing import Any

FAMILY_TEMPLATES: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "rot_q": "blocks.{layer}.attn.hook_rot_q",
    "rot_k": "blocks.{layer}.attn.hook_rot_k",
    "mlp_pre": "blocks.{layer}.mlp.hook_pre",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
}


def hook_name(family: str, layer: int) -> str:
    return FAMILY_TEMPLATES[family].format(layer=layer)


def available_families(bridge: Any) -> list[str]:
    """The families whose layer-0 hook point exists on this model (e.g. no mlp_* on attention-only)."""
    names = bridge.hook_dict
    return [family for family in FAMILY_TEMPLATES if hook_name(family, 0) in names]
