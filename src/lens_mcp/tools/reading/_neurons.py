"""MLP neurons read at a position (activations, W_out rows), shared by neuron_attribution and mlp_neurons. Private to tools/reading/."""

from __future__ import annotations

import torch

from lens_mcp.errors import LensError
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.direct import (
    SCALE_HOOK,
    has_final_norm,
    refuse_sublayer_post_norm,
)
from lens_mcp.tools.core.forward import summarizing_forward


def check_has_mlps(tc: ToolContext) -> None:
    refuse_sublayer_post_norm(tc, "ln2", "Reading MLP neurons")
    if tc.view.d_mlp is None:
        raise LensError("this model is attention-only: it has no MLP neurons. Use head_attribution instead.")


def mlp_weights(tc: ToolContext, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_out (d_mlp, d_model), b_out or None) of one layer, as stored (no stacking over layers)."""
    mlp = tc.view.blocks[layer].mlp
    try:
        W_out = mlp.W_out
    except AttributeError:
        W_out = None
    if not isinstance(W_out, torch.Tensor) or W_out.ndim != 2:
        raise LensError(
            f"layer {layer}'s MLP has no single W_out matrix (e.g. a mixture of experts): neuron readouts are "
            "not supported on this model."
        )
    try:
        b_out = mlp.b_out
    except AttributeError:
        b_out = None
    return W_out, b_out if isinstance(b_out, torch.Tensor) else None


def neuron_reads(
    tc: ToolContext, tokens: torch.Tensor, layers: list[int], pos: int
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None, torch.Tensor]:
    """One forward pass: ({layer: hook_post at pos (d_mlp)}, final-norm scale at pos, logits at pos), with each
    layer's activations checked to rebuild its cached MLP output at pos."""
    post: dict[int, torch.Tensor] = {}
    outs: dict[int, torch.Tensor] = {}
    kept: dict[str, torch.Tensor] = {}
    names: list[str] = []
    for layer in layers:
        names += [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"]
    missing = [name for name in names if name not in tc.view.hook_dict]
    if missing:
        raise LensError(f"this model has no hook {missing[0]}: neuron readouts are not supported on it.")
    if has_final_norm(tc):
        names.append(SCALE_HOOK)

    def keep(name: str, act: torch.Tensor) -> None:
        if name == SCALE_HOOK:
            kept["scale"] = act[0, pos].reshape(-1)[:1].float()
            return
        layer = int(name.split(".")[1])
        (post if name.endswith("hook_post") else outs)[layer] = act[0, pos].float()

    logits = summarizing_forward(tc, tokens, names, keep)[0, pos].float()
    tolerance = 1e-3 if tc.model.dtype == torch.float32 else 2e-2
    with torch.no_grad():
        check_rebuilds(tc, layers, post, outs, tolerance)
    return post, kept.get("scale"), logits


def check_rebuilds(
    tc: ToolContext, layers: list[int], post: dict[int, torch.Tensor], outs: dict[int, torch.Tensor], tolerance: float
) -> None:
    for layer in layers:
        W_out, b_out = mlp_weights(tc, layer)
        rebuilt = post[layer].to(W_out.device) @ W_out.float()
        if b_out is not None:
            rebuilt = rebuilt + b_out.float()
        out = outs[layer].to(rebuilt.device)
        if float((rebuilt - out).abs().max()) > tolerance * (1.0 + float(out.abs().max())):
            raise LensError(
                f"layer {layer}'s MLP output is not hook_post @ W_out + b_out on this model (e.g. experts or a "
                "norm after the MLP), so per-neuron attributions would be wrong; they are refused here."
            )
