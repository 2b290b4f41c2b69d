"""Hook families: short names for per-layer hook points, as TransformerLens's get_act_name uses them."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from lens_mcp.errors import LensError
from lens_mcp.tools.core.model_view import ModelView

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


def available_families(view: ModelView) -> list[str]:
    """The families whose layer-0 hook point exists on this model (e.g. no mlp_* on attention-only)."""
    names = view.hook_dict
    return [family for family in FAMILY_TEMPLATES if hook_name(family, 0) in names]


# ---- hook selection by family, exact name or glob (never code) ------------------------------------
# Selecting hooks for run_with_cache: a selector is a family name, an exact hook name, or a glob matched with
# fnmatch. Nothing is evaluated.

_GLOB_CHARS = frozenset("*?[")
_LAYER_PART = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class HookGroup:
    """One summary row-group: hook points of one kind across layers (or one non-layer hook point)."""

    label: str  # the family ("resid_post"), or a template ("blocks.{layer}.attn.hook_z"), or a name ("hook_embed")
    names: list[str] = field(default_factory=list)  # one hook name per row
    layers: list[int | None] = field(default_factory=list)  # the layer of each row (None: not in a block)


def hook_layer(name: str) -> int | None:
    match = _LAYER_PART.match(name)
    return int(match.group(1)) if match else None


def hook_template(name: str) -> str:
    """'blocks.3.attn.hook_z' -> 'blocks.{layer}.attn.hook_z'; names outside blocks stay as they are."""
    return _LAYER_PART.sub("blocks.{layer}.", name, count=1)


def _family_of_template(template: str) -> str | None:
    for family, family_template in FAMILY_TEMPLATES.items():
        if family_template == template:
            return family
    return None


def _selector_error(view: ModelView, selector: object, arg: str, why: str) -> LensError:
    return LensError(
        f"{arg}: {selector!r} {why}. Use a family ({', '.join(available_families(view))}), an exact hook name "
        "(e.g. 'blocks.0.attn.hook_z', 'hook_embed'), or a glob over hook names (e.g. 'blocks.*.hook_resid_post')."
    )


def resolve_hook_selection(
    view: ModelView, selectors: list[str], layers: list[int] | None = None, arg: str = "hooks"
) -> list[HookGroup]:
    """Turn selectors into groups of concrete, fireable hook names, in the order asked.

    A family expands to its hook at each layer (`layers`, default all); a glob (fnmatch, case-sensitive) to the
    matching hook points, restricted to `layers` for per-layer points; an exact name to itself. Aliases of one
    hook point are kept once. Matches are grouped by kind (the name with its layer number taken out)."""
    if not isinstance(selectors, list) or not selectors:
        raise LensError(f"{arg}: pass a non-empty list, e.g. ['resid_post'] or ['pattern', 'blocks.3.attn.hook_z'].")
    hook_dict = view.hook_dict
    n_layers = view.n_layers
    layer_set = None if layers is None else set(layers)
    families = available_families(view)
    groups: dict[str, HookGroup] = {}
    seen_points: set[int] = set()

    def add(name: str, label: str | None = None) -> None:
        point_id = id(hook_dict[name])
        if point_id in seen_points:
            return
        seen_points.add(point_id)
        template = hook_template(name)
        key = label or _family_of_template(template) or template
        group = groups.setdefault(key, HookGroup(key))
        group.names.append(name)
        group.layers.append(hook_layer(name))

    for selector in selectors:
        if not isinstance(selector, str) or not selector.strip():
            raise _selector_error(view, selector, arg, "is not a hook selector")
        selector = selector.strip()
        if selector in FAMILY_TEMPLATES:
            if selector not in families:
                raise _selector_error(view, selector, arg, "is a family this model does not have")
            for layer in range(n_layers):
                if layer_set is None or layer in layer_set:
                    name = hook_name(selector, layer)
                    if name in hook_dict:
                        add(name, selector)
        elif _GLOB_CHARS & set(selector):
            matched = [name for name in hook_dict if fnmatch.fnmatchcase(name, selector)]
            preferred: dict[int, str] = {}  # one name per hook point, the family spelling when it has one
            for name in matched:
                point_id = id(hook_dict[name])
                if point_id not in preferred or (
                    _family_of_template(hook_template(name)) is not None
                    and _family_of_template(hook_template(preferred[point_id])) is None
                ):
                    preferred[point_id] = name
            kept = [
                name
                for name in preferred.values()
                if view.fireable(name)
                and (layer_set is None or hook_layer(name) is None or hook_layer(name) in layer_set)
            ]
            if not kept:
                raise _selector_error(
                    view,
                    selector,
                    arg,
                    "matches no hook point that fires on this model"
                    + (" within layers=" + str(sorted(layer_set)) if layer_set and matched else ""),
                )
            for name in kept:
                add(name)
        elif selector in hook_dict:
            if not view.fireable(selector):
                raise _selector_error(
                    view,
                    selector,
                    arg,
                    "is switched off on this model and never fires "
                    "(per-head outputs: use 'z', whose heads run_with_cache summarizes)",
                )
            add(selector)
        else:
            raise _selector_error(view, selector, arg, "is neither a family nor a hook name of this model")
    return list(groups.values())
