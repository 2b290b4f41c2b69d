"""logit_lens: read the residual stream before each layer (and after the last) as a next-token prediction.

The convention of TransformerLens's `accumulated_resid(apply_ln=True)` at the final layer: each residual
vector goes through the model's own final norm with its statistics recomputed for that vector, then W_U, b_U
(and any output transform), so the last row is the model's real prediction. Only the one position is cached
and unembedded."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from lens_mcp.schemas.reading import AnswerTrajectory, LogitLens, TopTokens
from lens_mcp.tools.core.arguments import Position, Prompt
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.forward import cached_forward, final_norm, unembed
from lens_mcp.tools.core.metrics import answer_warnings
from lens_mcp.tools.core.tokens import encode, single_token_id, token_string, token_strings
from lens_mcp.tools.core.validation import check_top_k, resolve_position


def lens_logits(tc: ToolContext, tokens: torch.Tensor, pos: int) -> torch.Tensor:
    """(n_layers + 1, d_vocab): logits read off resid_pre of every layer and the last resid_post at `pos`."""
    n_layers = tc.view.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    names.append(f"blocks.{n_layers - 1}.hook_resid_post")
    _, cache = cached_forward(tc, tokens, names, positions=[pos])
    device = tc.view.W_U.device  # under a device_map the layers live on different devices
    stack = torch.stack([cache[name][0, 0].to(device) for name in names])
    with torch.no_grad():
        return unembed(tc, final_norm(tc, stack))


def logit_lens(
    tc: ToolContext,
    prompt: Prompt,
    position: Position = -1,
    top_k: Annotated[int, Field(description="Tokens to list per layer")] = 5,
    answer: Annotated[
        str | None,
        Field(description=("Optional single token (e.g. ' Paris') whose probability and rank to track at every layer")),
    ] = None,
) -> LogitLens:
    """Logit lens at one position: for the residual stream entering each layer, and after the last layer, the
    top_k tokens (token, id, prob) it would predict through the model's final norm and unembedding
    (TransformerLens's accumulated_resid(apply_ln=True) convention; the 'final' row is the model's real output).
    With `answer`, that token's probability and rank (1 = top) at every row, showing the layer where the
    model settles on it. Next: head_attribution to see which heads write the answer."""
    tokens = encode(tc, prompt)
    n_tokens = int(tokens.shape[-1])
    pos = resolve_position(position, n_tokens)
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    answer_id = None if answer is None else single_token_id(tc, answer, "answer")

    logits = lens_logits(tc, tokens, pos).float()
    probs = logits.softmax(dim=-1)
    values, ids = probs.topk(top_k, dim=-1)
    top = [
        TopTokens(tokens=token_strings(tc, row_ids), ids=row_ids.tolist(), probs=row_values.tolist())
        for row_ids, row_values in zip(ids, values, strict=True)
    ]
    trajectory = None
    warnings: list[str] = []
    if answer_id is not None and answer is not None:
        warnings = answer_warnings(tc, [("answer", answer, answer_id)], [logits[-1]])
        answer_logits = logits[:, answer_id : answer_id + 1]
        ranks = (logits > answer_logits).sum(dim=-1) + 1
        trajectory = AnswerTrajectory(
            token=token_string(tc, answer_id), id=answer_id, probs=probs[:, answer_id].tolist(), ranks=ranks.tolist()
        )
    n_layers = tc.view.n_layers
    return LogitLens(
        position=pos,
        token=token_string(tc, int(tokens[0, pos])),
        rows=[f"{layer}_pre" for layer in range(n_layers)] + ["final"],
        top=top,
        answer=trajectory,
        warnings=warnings,
    )
