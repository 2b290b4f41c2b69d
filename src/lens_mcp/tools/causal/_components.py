"""The patching components of the causal family: which hook family each patches, and the check that the loaded
model has it. Private to tools/causal/."""

from __future__ import annotations

from collections.abc import Sequence

from lens_mcp.errors import LensError
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.hook_names import hook_name

COMPONENT_FAMILY = {
    "resid_pre": "resid_pre",
    "resid_mid": "resid_mid",
    "resid_post": "resid_post",
    "attn_out": "attn_out",
    "mlp_out": "mlp_out",
    "heads": "z",
    "heads_by_pos": "z",
    "q": "q",
    "k": "k",
    "v": "v",
    "pattern": "pattern",
}
PER_HEAD = ("heads", "q", "k", "v", "pattern")
"""Components that patch one head at every position (no position axis)."""
AFTER_LAST_ATTENTION = ("resid_mid", "resid_post", "attn_out", "mlp_out", "heads_by_pos")
"""Per-position components that, in the last layer, reach the last position only through that position."""


OUTPUT_COMPONENTS: tuple[str, ...] = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "heads",
    "heads_by_pos",
)
"""The components other tools (attribution_patch) share with patch_sweep: outputs, not head inputs or patterns."""


def check_component(tc: ToolContext, component: str, components: Sequence[str] = OUTPUT_COMPONENTS) -> str:
    if component not in components:
        raise LensError(f"component={component!r} is not one of {', '.join(components)}.")
    family = COMPONENT_FAMILY[component]
    if hook_name(family, 0) not in tc.view.hook_dict:
        available = [c for c in components if hook_name(COMPONENT_FAMILY[c], 0) in tc.view.hook_dict]
        raise LensError(
            f"component={component!r}: this model has no {hook_name(family, 0)} hook point "
            f"(e.g. an attention-only model has no MLP); use one of {', '.join(available)}."
        )
    return family
