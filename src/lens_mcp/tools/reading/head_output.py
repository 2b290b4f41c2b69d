"""head_output: what one attention head writes at a position, read as logits, and its OV circuit on one source.

One forward pass whose hooks keep only the head's z and attention row at the position, its key/value head's
values at every position, and the final norm's scale at the position. Readouts go through the final norm with
that scale frozen (core/direct.py), then W_U without b_U."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from lens_mcp.schemas.components import HeadOutput, OVReadout
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.direct import (
    LINEAR_NOTE,
    DirectReadout,
    refuse_sublayer_post_norm,
)
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_top_k, resolve_head, resolve_layer, resolve_position
from lens_mcp.tools.reading._heads import head_reads, top_effects

COPY_RANK = 10


def head_output(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The text to run (BOS is prepended)")],
    layer: Annotated[int, Field(description="Layer (0-based; -1 = last)")],
    head: Annotated[int, Field(description="Query head in that layer (0..n_heads-1 from model_info)")],
    position: Annotated[int, Field(description="Position whose output is read (-1 = last)")] = -1,
    top_k: Annotated[int, Field(description="Tokens to list as promoted and as suppressed")] = 10,
    source_position: Annotated[
        int | None,
        Field(
            description="Source position for the OV readout (negative counts from the end). Default: the "
            "position the head attends to most from `position`, BOS left out"
        ),
    ] = None,
) -> HeadOutput:
    """What one attention head writes at `position`, as tokens: its output z @ W_O through the final norm's
    scale frozen on this run (centred for a LayerNorm) and W_U (no b_U), so each listed `logit` is the head's
    direct contribution to that token's logit, in the units of head_attribution's grid. `promoted`: the top_k
    tokens it raises; `suppressed`: the top_k it lowers.
    `ov`: the head's OV circuit applied to one source position: that source's value vector (the head's input
    there, in context) through W_O and the same readout, as if the head attended only there (multiply by
    `attention` for its actual share). `behaviour` = copying when the source's own token is among the 10 it
    raises most, suppression when among the 10 it lowers most (name movers copy, negative / copy-suppression
    heads suppress). Grouped-query models: the values are those of the head's key/value group (kv_head).
    Next: head_attribution(by_source=true) for each source's share of the head's effect on an answer."""
    refuse_sublayer_post_norm(tc, "ln1", "head_output")
    tokens = encode(tc, prompt)
    n_tokens = int(tokens.shape[-1])
    layer = resolve_layer(layer, tc.view.n_layers)
    head = resolve_head(head, tc.view.n_heads)
    pos = resolve_position(position, n_tokens)
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    source = None if source_position is None else resolve_position(source_position, n_tokens, "source_position")

    kept = head_reads(tc, tokens, layer, head, pos)
    readout = DirectReadout.from_scale(tc, kept.get("scale"))
    with torch.no_grad():
        block = tc.view.blocks[layer]
        # A residual multiplier (Granite) scales what the block adds to the stream: it is part of the write.
        multiplier = tc.view.residual_multiplier(layer)
        W_O = block.attn.W_O[head].float().to(kept["z"].device) * multiplier
        output = kept["z"] @ W_O
        promoted, suppressed = top_effects(tc, readout.logits(output), top_k)

        pattern = kept["pattern"]
        if source is None:
            row = pattern[: pos + 1].clone()
            if pos >= 1:
                row[0] = -1.0  # BOS is where heads rest; its value carries little
            source = int(row.argmax())
        write = kept["v"][source].to(W_O.device) @ W_O
        ov_logits = readout.logits(write)
        source_id = int(tokens[0, source])
        source_logit = float(ov_logits[source_id])
        rank = int((ov_logits > ov_logits[source_id]).sum()) + 1
        ov_up, ov_down = top_effects(tc, ov_logits, top_k)
    d_vocab = int(ov_logits.numel())
    behaviour = "copying" if rank <= COPY_RANK else "suppression" if rank > d_vocab - COPY_RANK else "neither"
    strings = token_strings(tc, tokens[0])
    return HeadOutput(
        layer=layer,
        head=head,
        kv_head=tc.view.kv_head_of(head),
        position=pos,
        token=strings[pos],
        output_norm=float(output.norm()),
        promoted=promoted,
        suppressed=suppressed,
        ov=OVReadout(
            source_position=source,
            source_token=strings[source],
            attention=float(pattern[source]) if source <= pos else 0.0,
            promoted=ov_up,
            suppressed=ov_down,
            source_token_rank=rank,
            source_token_logit=source_logit,
            behaviour=behaviour,
        ),
        meaning=(
            f"logit = L{layer}H{head}'s direct contribution to that token's logit at position {pos} (final-norm "
            "scale frozen on this run); positive raises the token. ov.* = the write carried from one source, "
            "as if attended fully."
        ),
        note="" if readout.linear else LINEAR_NOTE.strip(),
    )
