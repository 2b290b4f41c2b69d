"""neuron_attribution: the MLP neurons with the largest direct effect on logit(answer) - logit(wrong_answer).

A neuron's activation is the MLP's `hook_post` (act(pre), or act(gate) x up for a gated MLP), the vector W_out
reads, so activation x W_out row, summed over neurons, plus b_out is the MLP's output. The activations are
checked to rebuild each MLP's cached output before anything is attributed (a model whose MLP is not
`hook_post @ W_out + b_out`, e.g. a mixture of experts, is refused). One forward pass whose hooks keep the
position only; the readout freezes the final norm's scale on this run (core/direct.py)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.common import Cost
from lens_mcp.schemas.components import NeuronAttribution, NeuronScore
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, grid_chars, work_units
from lens_mcp.tools.core.direct import (
    LINEAR_NOTE,
    SCALE_HOOK,
    DirectReadout,
    has_final_norm,
    refuse_sublayer_post_norm,
)
from lens_mcp.tools.core.forward import summarizing_forward
from lens_mcp.tools.core.metrics import resolve_metric
from lens_mcp.tools.core.tokens import encode, token_string
from lens_mcp.tools.core.validation import check_top_k, resolve_layers, resolve_position


def single_pass_cost(tc: ToolContext, work: Work) -> Cost:
    """The cost of a call that runs one forward pass, without measuring the device's throughput for it (a probe
    of several passes): seconds from the throughput when it is already known, else 0 (one pass is never the
    problem; the result size and the work units are what the caps bound here)."""
    units = work_units(tc, work)
    throughput = tc.model.throughput
    return Cost(
        cells=work.cells,
        forward_passes=1,
        work_units=units,
        seconds=units / throughput if throughput else 0.0,
        result_chars=work.result_chars,
        throughput=throughput or 0.0,
    )


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
        _check_rebuilds(tc, layers, post, outs, tolerance)
    return post, kept.get("scale"), logits


def _check_rebuilds(
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


def neuron_attribution(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The text to run (BOS is prepended)")],
    answer: Annotated[str, Field(description="The expected next token, one token (e.g. ' Paris')")],
    wrong_answer: Annotated[
        str | None,
        Field(
            description="A competing token (' Rome'); attribute logit(answer) - logit(wrong_answer). Omitted: logit(answer)"
        ),
    ] = None,
    layers: Annotated[
        list[int] | None, Field(description="MLP layers to search (negative from the end). Default: all")
    ] = None,
    position: Annotated[int, Field(description="Position whose prediction is attributed (-1 = last)")] = -1,
    top_k: Annotated[int, Field(description="How many neurons to list by absolute attribution")] = 20,
) -> NeuronAttribution:
    """Direct logit attribution per MLP neuron: activation x (W_out row . direction), where direction is
    W_U[:, answer] - W_U[:, wrong_answer] through the final norm's scale frozen on this run (centred for a
    LayerNorm): the units of head_attribution, whose `other.mlp[layer]` equals layer_totals + bias_totals.
    Positive pushes towards answer. The activation is hook_post: act(pre) for a plain MLP, act(gate) x up for a
    gated one (Llama, SmolLM2), so a negative activation times a negative row is a positive push.
    Returns the top_k neurons over the searched layers with activation and attribution, each layer's sum over
    neurons, and `actual`. Direct effects only: a neuron that matters through later layers can score near 0.
    Next: mlp_neurons(layer, position) for what a neuron's output promotes; patch_sweep for total effects."""
    check_has_mlps(tc)
    tokens = encode(tc, prompt)
    n_tokens = int(tokens.shape[-1])
    pos = resolve_position(position, n_tokens)
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    metric = resolve_metric(tc, answer, wrong_answer)
    layer_list = resolve_layers(layers, tc.view.n_layers)
    d_mlp = tc.view.d_mlp or 0

    cost = single_pass_cost(
        tc,
        Work(
            rows=1,
            tokens_per_row=n_tokens,
            cells=len(layer_list) * d_mlp,
            result_chars=grid_chars(2 * len(layer_list), overhead=800) + 90 * top_k,
        ),
    )
    enforce(tc, cost, narrow="fewer layers=[...] or a smaller top_k")

    post, scale, logits = neuron_reads(tc, tokens, layer_list, pos)
    readout = DirectReadout.from_scale(tc, scale)
    with torch.no_grad():
        direction = readout.direction(metric.answer_id, metric.wrong_id)
        per_layer, bias_totals = [], []
        for layer in layer_list:
            W_out, b_out = mlp_weights(tc, layer)
            row_effect = W_out.float() @ direction.to(W_out.device)  # (d_mlp,)
            per_layer.append((post[layer].to(row_effect.device) * row_effect).to(direction.device))
            bias_totals.append(float(b_out.float() @ direction.to(b_out.device)) if b_out is not None else 0.0)
        attributions = torch.stack(per_layer)  # (layers, d_mlp)
        activations = torch.stack([post[layer].to(direction.device) for layer in layer_list])
        flat = attributions.flatten()
        order = flat.abs().argsort(descending=True)[: min(top_k, flat.numel())]
    top = [
        NeuronScore(
            layer=layer_list[int(i) // d_mlp],
            neuron=int(i) % d_mlp,
            activation=float(activations.flatten()[i]),
            attribution=float(flat[i]),
        )
        for i in order
    ]
    return NeuronAttribution(
        metric=metric.description,
        position=pos,
        token=token_string(tc, int(tokens[0, pos])),
        layers=layer_list,
        top_neurons=top,
        layer_totals=attributions.sum(dim=-1).tolist(),
        bias_totals=bias_totals,
        actual=float(metric(logits)),
        meaning=(
            f"attribution = a neuron's direct contribution to {metric.description} at position {pos} "
            "(final-norm scale frozen on this run); positive pushes towards the answer; the units of `actual`."
        ),
        note="" if readout.linear else LINEAR_NOTE.strip(),
    )
