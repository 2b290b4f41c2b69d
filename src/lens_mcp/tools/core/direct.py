"""Direct readout of one component's write into the residual stream: what it adds to the logits.

A component's vector c (a head's output, a neuron's activation x its W_out row) goes through the final norm
with that norm's statistics FROZEN on the run it came from (centred when the norm is a LayerNorm, divided by
the cached scale at the position, times the norm's own weight when it is not folded into W_U), then through
W_U with no bias: TransformerLens's `apply_ln_to_stack` convention, the same one head_attribution uses. The
sum over every component of a run is then that run's logits (less b_U). A logit scale (a linear output
transform) multiplies every term; a soft cap is not linear, so readouts on such a model are of the pre-cap
logits, and `LINEAR_NOTE` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lens_mcp.errors import LensError
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.forward import output_slope

SCALE_HOOK = "ln_final.hook_scale"


def final_norm_centres(tc: ToolContext) -> bool:
    """Whether the final norm subtracts the mean (LayerNorm) rather than only scaling (RMSNorm)."""
    return tc.view.capabilities.final_norm_centres


def has_final_norm(tc: ToolContext) -> bool:
    return tc.view.capabilities.final_norm != "none"


def _final_norm_weight(tc: ToolContext, like: torch.Tensor) -> torch.Tensor | None:
    """The elementwise weight the final norm multiplies by, when it is not folded into W_U (None: folded or
    absent). An RMS norm is probed with a constant vector so large that eps does not count, which covers the
    `w` and `1 + w` parametrizations alike; a LayerNorm's weight is read off its module."""
    norm = tc.view.ln_final
    if norm is None or not has_final_norm(tc):
        return None
    d_model = tc.view.d_model
    with torch.no_grad():
        if final_norm_centres(tc):
            weight = getattr(getattr(norm, "original_component", norm), "weight", None)
            weight = weight.detach().float().to(like.device) if isinstance(weight, torch.Tensor) else None
        else:
            probe = torch.full((1, 1, d_model), 1e3, dtype=torch.float32, device=like.device)
            weight = norm(probe.to(dtype=next(iter(tc.view.parameters())).dtype))[0, 0].float().to(like.device)
    if weight is None or torch.allclose(weight, torch.ones_like(weight)):
        return None
    return weight


def refuse_sublayer_post_norm(tc: ToolContext, sublayer: str, what: str) -> None:
    """Refuse a readout of a sublayer's raw output on a model that normalizes that output before adding it to
    the residual stream (Gemma 2's post-attention / post-MLP norms): the raw write would be the wrong vector.
    sublayer: 'ln1' (attention) or 'ln2' (MLP)."""
    name = f"blocks.0.{sublayer}_post.hook_scale"
    if name in tc.view.hook_dict:
        raise LensError(
            f"{what} is not supported on this model yet: it normalizes each {'attention' if sublayer == 'ln1' else 'MLP'}"
            " output again before adding it to the residual stream (a norm after the sublayer), so the raw output "
            "read here would be the wrong vector. head_attribution accounts for such norms."
        )


LINEAR_NOTE = " This model soft-caps its logits; the readout is of the pre-cap logits (the cap is not linear)."


@dataclass
class DirectReadout:
    """The frozen final-norm readout at one position of one run."""

    tc: ToolContext
    scale: float
    """The final norm's scale (RMS or standard deviation) on the run, at the position; 1 without a norm."""
    slope: float
    linear: bool

    @classmethod
    def from_cache(cls, tc: ToolContext, cache: Any, index: int = 0) -> DirectReadout:
        """From a cache holding `ln_final.hook_scale` at the position (`index` into the cached positions)."""
        scale = float(cache[SCALE_HOOK][0, index].reshape(-1)[0]) if has_final_norm(tc) else 1.0
        slope, linear = output_slope(tc)
        return cls(tc, scale, slope, linear)

    @classmethod
    def from_scale(cls, tc: ToolContext, scale: torch.Tensor | float | None) -> DirectReadout:
        """From a scale already kept (None: the model has no final norm)."""
        slope, linear = output_slope(tc)
        value = 1.0 if scale is None else float(scale if isinstance(scale, (int, float)) else scale.reshape(-1)[0])
        return cls(tc, value, slope, linear)

    def prepare(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors (..., d_model) through the frozen final norm: centred, weighted, divided by the scale."""
        device = self.tc.view.W_U.device
        v = vectors.to(device).float()
        if final_norm_centres(self.tc):
            v = v - v.mean(dim=-1, keepdim=True)
        weight = _final_norm_weight(self.tc, v)
        if weight is not None:
            v = v * weight
        return v * (self.slope / self.scale)

    def logits(self, vectors: torch.Tensor, ids: list[int] | None = None) -> torch.Tensor:
        """Each vector's direct contribution to every logit (or to the columns `ids`): (..., d_vocab)."""
        W_U = self.tc.view.W_U
        weight = W_U if ids is None else W_U[:, ids]
        return self.prepare(vectors) @ weight.float()

    def direction(self, answer_id: int, wrong_id: int | None) -> torch.Tensor:
        """d (d_model) such that vector . d is the vector's contribution to logit(answer) - logit(wrong)."""
        W_U = self.tc.view.W_U
        d = W_U[:, answer_id].float()
        if wrong_id is not None:
            d = d - W_U[:, wrong_id].float()
        if final_norm_centres(self.tc):
            d = d - d.mean()  # (x - mean x) . d == x . (d - mean d)
        weight = _final_norm_weight(self.tc, d)
        if weight is not None:
            d = d * weight
        return d * (self.slope / self.scale)
