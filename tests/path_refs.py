"""A hand-written path patch (hooks only), the reference the path_patch tests compare with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lens_mcp.tools.core.context import ToolContext

TOL = 1e-4


Edit = tuple[str, int | None]
"""(hook name, head index on the hook's head axis or None) where the sender's write is added."""


def hand_path_patch(
    tc: ToolContext,
    clean: str,
    corrupted: str,
    sender: Sequence[int],
    edits: Sequence[Edit],
    answer: str = " w64",
    wrong: str | None = " w77",
    positions: Sequence[int] | None = None,
) -> float:
    """One full hooked forward pass of the corrupted prompt with the sender's write added at each edit, through
    TransformerLens's per-head q/k/v input copies (use_split_qkv_input) for head inputs; the metric at the last
    position (logit difference, or log-probability without a wrong answer)."""
    bridge = tc.model.bridge
    delta = sender_write(tc, clean, corrupted, sender)
    if positions is not None:
        keep = torch.zeros(delta.shape[0], dtype=torch.bool)
        keep[list(positions)] = True
        delta = delta * keep[:, None]

    def make(head: int | None) -> Any:
        def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            act = act.clone()
            if head is None:
                act[0] += delta
            else:
                act[0, :, head] += delta
            return act

        return hook

    split = any(name.endswith("_input") for name, _ in edits)
    with torch.no_grad():
        if split:
            bridge.set_use_split_qkv_input(True)
        try:
            logits = bridge.run_with_hooks(
                bridge.to_tokens(corrupted), fwd_hooks=[(name, make(head)) for name, head in edits]
            )
        finally:
            if split:
                bridge.set_use_split_qkv_input(False)
    last = logits[0, -1].float()
    a = bridge.to_single_token(answer)
    if wrong is None:
        return float(last.log_softmax(-1)[a])
    return float(last[a] - last[bridge.to_single_token(wrong)])


def sender_write(tc: ToolContext, clean: str, corrupted: str, sender: Sequence[int]) -> torch.Tensor:
    """(z_clean - z_corrupted) @ W_O of one head, [pos, d_model], from separate runs of the two prompts."""
    bridge = tc.model.bridge
    layer, head = sender
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(bridge.to_tokens(clean), names_filter=[name])
        _, corrupted_cache = bridge.run_with_cache(bridge.to_tokens(corrupted), names_filter=[name])
        w_o = bridge.blocks[layer].attn.W_O[head]
        return clean_cache[name][0, :, head] @ w_o - corrupted_cache[name][0, :, head] @ w_o
