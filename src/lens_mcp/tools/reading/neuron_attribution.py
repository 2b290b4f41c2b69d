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

from lens_mcp.schemas.components import NeuronAttribution, NeuronScore
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, grid_chars, single_pass_cost
from lens_mcp.tools.core.direct import (
    LINEAR_NOTE,
    DirectReadout,
)
from lens_mcp.tools.core.metrics import resolve_metric
from lens_mcp.tools.core.tokens import encode, token_string
from lens_mcp.tools.core.validation import check_top_k, resolve_layers, resolve_position
from lens_mcp.tools.reading._neurons import check_has_mlps, mlp_weights, neuron_reads


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
