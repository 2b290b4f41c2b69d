"""attention_pattern: where one head attends from each query position, as top-k sources and entropies.

Only the one layer's pattern is cached, and the forward pass stops after that layer."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from lens_mcp.schemas.reading import AttendedSource, AttentionPattern, QueryAttention
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.forward import cached_forward
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_top_k, resolve_head, resolve_layer, resolve_positions


def attention_pattern(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The text to run (BOS is prepended)")],
    layer: Annotated[int, Field(description="Layer (0-based; -1 = last)")],
    head: Annotated[int, Field(description="Query head in that layer (0..n_heads-1 from model_info)")],
    top_k: Annotated[int, Field(description="Source positions to list per query")] = 3,
    query_positions: Annotated[
        list[int] | None, Field(description=("Query positions to report (negative counts from the end). Default: all"))
    ] = None,
) -> AttentionPattern:
    """One attention head's pattern on `prompt`: for each query position (or those given), the top_k source
    positions it attends to, with weights and string tokens, and the entropy of its attention (nats); plus the
    head's mean entropy. Heads are query heads: on grouped-query models several share one key/value head
    (kv_head says which). Typical signatures: all weight on position 0 (BOS, a resting head), on query-1
    (previous-token head), on the token after an earlier copy of the current one (induction head)."""
    tokens = encode(tc, prompt)
    n_tokens = int(tokens.shape[-1])
    n_heads = tc.view.n_heads
    layer = resolve_layer(layer, tc.view.n_layers)
    head = resolve_head(head, n_heads)
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    queries = resolve_positions(query_positions, n_tokens, "query_positions")

    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = cached_forward(tc, tokens, [name], positions=queries, stop_at_layer=layer + 1)
    pattern = cache[name][0, head].float()  # (queries, sources)
    entropy = torch.special.entr(pattern).sum(dim=-1) + 0.0  # + 0.0 turns -0.0 into 0.0
    strings = token_strings(tc, tokens[0])

    rows = []
    for row, query in enumerate(queries):
        k = min(top_k, query + 1)  # a causal head sees sources 0..query only
        weights, sources = pattern[row, : query + 1].topk(k)
        rows.append(
            QueryAttention(
                position=query,
                token=strings[query],
                entropy=float(entropy[row]),
                top=[
                    AttendedSource(position=int(s), token=strings[int(s)], weight=float(w))
                    for w, s in zip(weights, sources, strict=True)
                ],
            )
        )
    return AttentionPattern(
        layer=layer,
        head=head,
        kv_head=tc.view.kv_head_of(head),
        n_tokens=n_tokens,
        mean_entropy=float(entropy.mean()),
        queries=rows,
    )
