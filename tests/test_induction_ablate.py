"""induction_scores(ablate=[...]) on the toy model: the losses with heads zero-ablated equal a hand-written hook,
and ablating the planted induction head L1H2 raises the repeated-half loss a lot while an unrelated head does not."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lens_mcp.errors import LensError
from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.schemas.common import round_sig
from lens_mcp.server.app import build_server
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.reading.induction_scores import find_targets, induction_scores, repeated_random_tokens
from tests.mcp_client import call_tool, error_text, result_data


def hand_losses(tc: ToolContext, tokens: torch.Tensor, heads: list[tuple[int, int]]) -> tuple[float, float]:
    """Mean loss on first-seen and copyable tokens, with `heads` zeroed by a hand-written hook_z hook and full
    logits from a plain forward pass."""
    hooks = []
    for layer, head in heads:

        def hook(z: torch.Tensor, hook: Any, head: int = head) -> torch.Tensor:
            z = z.clone()
            z[:, :, head] = 0.0
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    with torch.no_grad():
        logprobs = tc.model.bridge.run_with_hooks(tokens, fwd_hooks=hooks).float().log_softmax(-1)
    targets = find_targets(tokens)
    means = []
    for b, p in (targets.first_seen, targets.copyable):
        means.append(float(-logprobs[b, p - 1, tokens[b, p]].double().mean()))
    return means[0], means[1]


def test_ablating_the_induction_head_breaks_copying(toy: ToolContext) -> None:
    tokens, _ = repeated_random_tokens(toy, 20, 8, 0)
    plain = induction_scores(toy, seq_len=20, n_seqs=8, seed=0)
    induction = induction_scores(toy, seq_len=20, n_seqs=8, seed=0, ablate=[[1, 2]])
    unrelated = induction_scores(toy, seq_len=20, n_seqs=8, seed=0, ablate=[[1, 0]])
    assert induction.ablated is not None and unrelated.ablated is not None
    assert induction.ablated.heads == [(1, 2)]
    first, copy = hand_losses(toy, tokens, [(1, 2)])
    assert induction.ablated.loss_first_repeat == round_sig(first)
    assert induction.ablated.loss_second_repeat == round_sig(copy)
    first, copy = hand_losses(toy, tokens, [(1, 0)])
    assert unrelated.ablated.loss_second_repeat == round_sig(copy)
    # The scores and the unablated losses are those of the plain call.
    assert induction.induction == plain.induction and induction.loss_second_repeat == plain.loss_second_repeat
    assert plain.loss_second_repeat is not None and induction.ablated.loss_second_repeat is not None
    assert unrelated.ablated.loss_second_repeat is not None
    rise = induction.ablated.loss_second_repeat - plain.loss_second_repeat
    assert rise > 2.0  # from about 0.9 nats toward chance
    assert unrelated.ablated.loss_second_repeat - plain.loss_second_repeat < 0.25 * rise
    assert abs(induction.ablated.loss_first_repeat - plain.loss_first_repeat) < 0.5  # first sight: nothing to copy
    assert plain.ablated is None


def test_two_heads_together_equal_a_hand_written_hook(toy: ToolContext) -> None:
    prompt = "w5 w9 w13 w17 w21 w25 w5 w9 w13 w17 w21 w25"
    result = induction_scores(toy, prompt=prompt, ablate=[[0, 1], [1, 2]])
    first, copy = hand_losses(toy, toy.model.bridge.to_tokens(prompt), [(0, 1), (1, 2)])
    assert result.ablated is not None
    assert (result.ablated.loss_first_repeat, result.ablated.loss_second_repeat) == (round_sig(first), round_sig(copy))


def test_bad_ablate_argument(toy: ToolContext) -> None:
    with pytest.raises(LensError, match=r"ablate\[0\]\[1\] \(head\)=7 is out of range"):
        induction_scores(toy, seq_len=5, n_seqs=1, ablate=[[1, 7]])
    with pytest.raises(LensError, match="ablate: expected a non-empty list"):
        induction_scores(toy, seq_len=5, n_seqs=1, ablate=[])


async def test_ablate_through_a_client(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    baseline = count_hooks(toy_host.model.bridge)
    data = result_data(await call_tool(server, "induction_scores", {"seq_len": 20, "n_seqs": 4, "ablate": [[1, 2]]}))
    assert data["ablated"]["heads"] == [[1, 2]]
    assert data["ablated"]["loss_second_repeat"] > data["loss_second_repeat"] + 2
    text = error_text(await call_tool(server, "induction_scores", {"seq_len": 5, "ablate": [[9, 0]]}))
    assert "ablate[0][0] (layer)=9 is out of range" in text
    assert count_hooks(toy_host.model.bridge) == baseline
