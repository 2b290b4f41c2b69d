"""steering_vector: a direction in the residual stream stored by name for generate: the difference of mean
residuals between two sets of prompts (activation addition), or an SAE feature's decoder direction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.features import SteeringVectorResult
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate
from lens_mcp.tools.core.hook_names import hook_layer, hook_name
from lens_mcp.tools.core.tokens import encode
from lens_mcp.tools.core.validation import check_int, resolve_layer, resolve_position
from lens_mcp.tools.features._sae import body_start, flat, get_sae

MAX_PROMPTS = 64
MAX_NAME_CHARS = 64
MAX_STORED = 64
REFERENCE_TEXT = (
    "The city council met on Tuesday to discuss the new budget. Several members raised concerns about "
    "the cost of repairing the old bridge, while others argued that the library needed more funding."
)


@dataclass
class SteeringVector:
    vector: torch.Tensor  # [d] on the model's device, fp32
    hook: str
    source: str

    @property
    def layer(self) -> int | None:
        return hook_layer(self.hook)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise LensError(f"name: pass a short label of 1..{MAX_NAME_CHARS} characters, e.g. name='love_hate'.")
    return name.strip()


def _check_prompts(prompts: object, arg: str) -> list[str]:
    if not isinstance(prompts, list) or not prompts:
        raise LensError(f"{arg}: pass a non-empty list of prompts, e.g. {arg}=['I love you', 'What a joy'].")
    if len(prompts) > MAX_PROMPTS:
        raise LensError(f"{arg}: {len(prompts)} prompts, over the cap of {MAX_PROMPTS}; pass fewer.")
    return prompts


def residuals_at(
    tc: ToolContext, prompts: list[str], hook: str, position: int, arg: str, done: int, total: int
) -> tuple[torch.Tensor, list[float]]:
    """The activation at `hook` and `position` of each prompt [n, d], plus the norms of every non-BOS token's
    activation (for the typical norm). One forward pass per prompt, stopped after the hook's block."""
    layer = hook_layer(hook)
    stop = layer + 1 if layer is not None and layer + 1 < tc.view.n_layers else None
    rows: list[torch.Tensor] = []
    norms: list[float] = []
    for index, prompt in enumerate(prompts):
        tokens = encode(tc, prompt, f"{arg}[{index}]")
        pos = resolve_position(position, int(tokens.shape[-1]), "position")
        captured: dict[str, torch.Tensor] = {}

        def grab(
            activation: torch.Tensor, hook: Any = None, captured: dict[str, torch.Tensor] = captured
        ) -> torch.Tensor:
            captured["x"] = activation[0].detach().clone()
            return activation

        with torch.no_grad(), tc.view.hooks(fwd_hooks=[(hook, grab)]):
            tc.view(tokens, stop_at_layer=stop) if stop is not None else tc.view(tokens)
        x = flat(captured["x"], hook).float()
        rows.append(x[pos])
        norms += x[body_start(tc, tokens) :].norm(dim=-1).tolist()
        tc.progress(done + index + 1, total, f"{arg}[{index}]")
    return torch.stack(rows), norms


def steering_vector(
    tc: ToolContext,
    name: Annotated[str, Field(description="Label to store the vector under (generate refers to it), e.g. 'happy'")],
    positive_prompts: Annotated[
        list[str] | None, Field(description="Prompts showing the property, e.g. ['I love this', 'What a joy']")
    ] = None,
    negative_prompts: Annotated[
        list[str] | None, Field(description="Contrasting prompts, e.g. ['I hate this', 'What a pain']")
    ] = None,
    layer: Annotated[
        int | None, Field(description="Residual stream before block `layer` (resid_pre) where it is read and added")
    ] = None,
    position: Annotated[int, Field(description="Token position read in each prompt (-1 = last)")] = -1,
    from_feature: Annotated[
        int | None, Field(description="Instead of prompts: this SAE feature's decoder direction")
    ] = None,
    hook: Annotated[str | None, Field(description="With from_feature: hook of the SAE (omit if one is loaded)")] = None,
) -> SteeringVectorResult:
    """Make a steering vector and store it under `name` for generate(interventions=[{"steer": name, "alpha":
    ...}]). Contrast mode (positive_prompts, negative_prompts, layer): mean residual at resid_pre of `layer` at
    `position` over the positive prompts minus the same over the negative ones (activation addition); alpha=1
    adds exactly that difference. from_feature mode: the SAE feature's decoder direction at the SAE's hook, in
    the hook's units (alpha = feature activation added). Reports the vector's norm against the typical residual
    norm there (mean over the prompts' non-BOS tokens; in from_feature mode over a fixed reference text): a
    ratio near 1 or more is a strong push. Also the mean projection of each prompt set on the unit vector.
    Storing a name again replaces it. Vectors live with the loaded model."""
    name = _check_name(name)
    if name not in tc.model.steering_vectors and len(tc.model.steering_vectors) >= MAX_STORED:
        raise LensError(f"name: {MAX_STORED} steering vectors are stored already; reuse a name to replace one.")
    check_int(position, "position")
    positive_projection = negative_projection = None
    if from_feature is not None:
        if positive_prompts is not None or negative_prompts is not None:
            raise LensError("from_feature: pass either from_feature or positive_prompts/negative_prompts, not both.")
        sae = get_sae(tc, hook)
        feature = check_int(from_feature, "from_feature")
        if not 0 <= feature < sae.d_sae:
            raise LensError(
                f"from_feature={feature} is out of range: the SAE on {sae.hook_name} has features 0..{sae.d_sae - 1}; "
                f"use 0..{sae.d_sae - 1}."
            )
        if sae.normalize_activations in ("layer_norm", "constant_norm_rescale"):
            raise LensError(
                f"from_feature: the SAE normalizes each token ({sae.normalize_activations}), so its decoder direction "
                "has no fixed scale in the residual stream; use contrast prompts instead."
            )
        vector = sae.directions([feature], sae.norm_state(torch.zeros(1, sae.d_in, device=sae.W_dec.device)))[0]
        if vector.shape[-1] != tc.view.d_model or sae.hook_name.endswith("hook_z"):
            raise LensError(
                f"from_feature: the SAE reads {sae.hook_name} (width {sae.d_in}), not the residual stream; "
                "steering needs an SAE on a resid_pre/resid_mid/resid_post hook."
            )
        target = sae.hook_name
        source = f"sae feature {feature} on {target}"
        _, norms = residuals_at(tc, [REFERENCE_TEXT], target, -1, "reference text", 0, 1)
        n_pos = n_neg = 0
    else:
        if layer is None:
            raise LensError(
                "layer: pass the layer whose resid_pre the vector is read at (see model_info), e.g. layer=6."
            )
        positives = _check_prompts(positive_prompts, "positive_prompts")
        negatives = _check_prompts(negative_prompts, "negative_prompts")
        target = hook_name("resid_pre", resolve_layer(layer, tc.view.n_layers))
        total = len(positives) + len(negatives)
        lengths = [int(encode(tc, text, f"positive_prompts[{i}]").shape[-1]) for i, text in enumerate(positives)]
        lengths += [int(encode(tc, text, f"negative_prompts[{i}]").shape[-1]) for i, text in enumerate(negatives)]
        work = Work(
            rows=total,
            tokens_per_row=-(-sum(lengths) // total),
            layer_fraction=min(1.0, ((hook_layer(target) or 0) + 1) / tc.view.n_layers),
            rows_per_pass=1,
        )
        enforce(tc, estimate(tc, work), "fewer or shorter prompts")
        pos_rows, pos_norms = residuals_at(tc, positives, target, position, "positive_prompts", 0, total)
        neg_rows, neg_norms = residuals_at(tc, negatives, target, position, "negative_prompts", len(positives), total)
        vector = pos_rows.mean(dim=0) - neg_rows.mean(dim=0)
        norms = pos_norms + neg_norms
        unit = vector / vector.norm().clamp_min(1e-12)
        positive_projection = float((pos_rows @ unit).mean())
        negative_projection = float((neg_rows @ unit).mean())
        source = "contrast"
        n_pos, n_neg = len(positives), len(negatives)
    norm = float(vector.norm())
    if norm == 0:
        raise LensError("the vector is zero (the two prompt sets give the same residual); use prompts that differ.")
    typical = sum(norms) / len(norms) if norms else None
    target_layer = hook_layer(target)
    tc.model.steering_vectors[name] = SteeringVector(vector.detach().clone(), target, source)
    return SteeringVectorResult(
        name=name,
        hook=target,
        layer=-1 if target_layer is None else target_layer,
        source=source,
        norm=norm,
        typical_resid_norm=typical,
        norm_ratio=None if not typical else norm / typical,
        positive_projection=positive_projection,
        negative_projection=negative_projection,
        n_positive=n_pos,
        n_negative=n_neg,
        stored=list(tc.model.steering_vectors),
        meaning=(
            f"generate adds alpha x this vector at {target} (every position but BOS); norm_ratio = its norm over "
            "the typical residual norm there (1 = as large as the residual itself)."
        ),
    )
