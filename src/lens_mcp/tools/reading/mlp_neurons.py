"""mlp_neurons: the most active neurons of one MLP layer at a position, and the tokens their output promotes.

Activations are hook_post (what W_out reads; act(gate) x up for a gated MLP), checked to rebuild the MLP's
cached output. A neuron's write is activation x its W_out row, read through the final norm's scale frozen on
this run and W_U without b_U (core/direct.py)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from lens_mcp.schemas.components import MLPNeuron, MLPNeurons
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, single_pass_cost
from lens_mcp.tools.core.direct import LINEAR_NOTE, DirectReadout
from lens_mcp.tools.core.tokens import encode, token_string
from lens_mcp.tools.core.validation import check_range, check_top_k, resolve_layer, resolve_position
from lens_mcp.tools.reading._heads import top_effects
from lens_mcp.tools.reading._neurons import check_has_mlps, mlp_weights, neuron_reads

CHARS_PER_TOKEN_EFFECT = 45


def mlp_neurons(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The text to run (BOS is prepended)")],
    layer: Annotated[int, Field(description="MLP layer (0-based; -1 = last)")],
    position: Annotated[int, Field(description="Position to read (-1 = last)")] = -1,
    top_k: Annotated[int, Field(description="How many neurons to list, by absolute activation")] = 10,
    top_tokens: Annotated[int, Field(description="Tokens to list per neuron as promoted and as suppressed")] = 5,
) -> MLPNeurons:
    """The top_k neurons of MLP `layer` by absolute activation at `position`, each with its activation and the
    tokens its write (activation x W_out row) raises and lowers most, through the final norm's scale frozen on
    this run and W_U: each `logit` is that neuron's direct contribution to the token's logit (the units of
    head_attribution). The activation is hook_post: act(pre), or act(gate) x up for a gated MLP (Llama,
    SmolLM2; its sign can be negative, which flips what the neuron promotes). Most active is not most important:
    neuron_attribution ranks neurons by their effect on an answer."""
    check_has_mlps(tc)
    tokens = encode(tc, prompt)
    n_tokens = int(tokens.shape[-1])
    layer = resolve_layer(layer, tc.view.n_layers)
    pos = resolve_position(position, n_tokens)
    d_mlp = tc.view.d_mlp or 0
    top_k = min(check_top_k(top_k, tc.limits.max_top_k), d_mlp)
    top_tokens = check_range(top_tokens, 1, 20, "top_tokens")
    cost = single_pass_cost(
        tc,
        Work(
            rows=1,
            tokens_per_row=n_tokens,
            cells=top_k,
            result_chars=400 + top_k * (60 + 2 * top_tokens * CHARS_PER_TOKEN_EFFECT),
        ),
    )
    enforce(tc, cost, narrow="a smaller top_k or top_tokens")

    post, scale, _ = neuron_reads(tc, tokens, [layer], pos)
    readout = DirectReadout.from_scale(tc, scale)
    activation = post[layer]
    with torch.no_grad():
        order = activation.abs().argsort(descending=True)[:top_k]
        W_out, _ = mlp_weights(tc, layer)
        writes = activation[order, None].to(W_out.device) * W_out[order.to(W_out.device)].float()
        logits = readout.logits(writes)  # (top_k, d_vocab)
    neurons = []
    for row, index in enumerate(order.tolist()):
        promoted, suppressed = top_effects(tc, logits[row], top_tokens)
        neurons.append(
            MLPNeuron(neuron=index, activation=float(activation[index]), promoted=promoted, suppressed=suppressed)
        )
    gated = tc.view.capabilities.gated_mlp
    return MLPNeurons(
        layer=layer,
        position=pos,
        token=token_string(tc, int(tokens[0, pos])),
        d_mlp=d_mlp,
        gated=gated,
        neurons=neurons,
        meaning=(
            f"activation = hook_post at layer {layer}, position {pos}{' (act(gate) x up)' if gated else ''}; "
            "logit = that neuron's direct contribution to the token's logit there; positive raises it."
        ),
        note="" if readout.linear else LINEAR_NOTE.strip(),
    )
