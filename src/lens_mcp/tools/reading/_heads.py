"""What one head reads and writes at a position, shared by head_output and head_attribution's by_source split. Private to tools/reading/."""

from __future__ import annotations

import torch

from lens_mcp.schemas.components import TokenEffect
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.direct import (
    SCALE_HOOK,
    has_final_norm,
)
from lens_mcp.tools.core.forward import summarizing_forward
from lens_mcp.tools.core.tokens import token_strings


def head_reads(tc: ToolContext, tokens: torch.Tensor, layer: int, head: int, pos: int) -> dict[str, torch.Tensor]:
    """One forward pass keeping: z (d_head) and the attention row (n) of `head` at `pos`, the values of its
    key/value head at every position (n, d_head), and the final norm's scale at `pos` (if any)."""
    kv = tc.view.kv_head_of(head)
    prefix = f"blocks.{layer}.attn."
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str, act: torch.Tensor) -> None:
        if name == prefix + "hook_z":
            kept["z"] = act[0, pos, head].float()
        elif name == prefix + "hook_pattern":
            kept["pattern"] = act[0, head, pos].float()
        elif name == prefix + "hook_v":
            kept["v"] = act[0, :, kv if act.shape[2] != tc.view.n_heads else head].float()
        elif name == SCALE_HOOK:
            kept["scale"] = act[0, pos].reshape(-1)[:1].float()

    names = [prefix + "hook_z", prefix + "hook_pattern", prefix + "hook_v"]
    if has_final_norm(tc):
        names.append(SCALE_HOOK)
    kept["logits"] = summarizing_forward(tc, tokens, names, keep)[0, pos].float()
    return kept


def top_effects(tc: ToolContext, logits: torch.Tensor, k: int) -> tuple[list[TokenEffect], list[TokenEffect]]:
    """The k tokens raised most and the k lowered most by a vector of direct logit contributions."""
    k = min(k, int(logits.numel()))
    up_values, up_ids = logits.topk(k)
    down_values, down_ids = (-logits).topk(k)

    def effects(ids: torch.Tensor, values: torch.Tensor) -> list[TokenEffect]:
        strings = token_strings(tc, ids)
        return [TokenEffect(token=s, id=int(i), logit=float(v)) for s, i, v in zip(strings, ids, values, strict=True)]

    return effects(up_ids, up_values), effects(down_ids, -down_values)
