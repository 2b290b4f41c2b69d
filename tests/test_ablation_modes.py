"""ablate_heads' resample and corrupted-mean modes, logprob/prob/loss metrics and prompt datasets, on the toy
model against hand-written hooks (and the planted induction head L1H2)."""

from __future__ import annotations

import pytest
import torch

from lens_mcp.errors import LensError
from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.schemas.common import round_sig
from lens_mcp.server.app import build_server
from lens_mcp.tools.causal.ablate_heads import ablate_heads
from lens_mcp.tools.core.context import ToolContext
from tests.mcp_client import call_tool, error_text, result_data
from tests.shared import ANSWER, CLEAN, CORRUPTED, WRONG, hand_logits, loss

HALF = " ".join(f"w{(17 * i + 5) % 250}" for i in range(20))  # 20 distinct words, as the toy model was trained on
REPEATED = f"{HALF} {HALF}"  # BOS + 20 tokens + the same 20 again
SECOND_HALF = list(range(22, 41))  # tokens an induction copy predicts (the second repeat after its first token)


@pytest.mark.parametrize("mode", ["resample", "corrupted_mean"])
def test_resample_and_corrupted_mean_equal_hand_written_hooks(toy: ToolContext, mode: str) -> None:
    heads = [(1, 2), (0, 1)]
    a, b = toy.model.bridge.to_single_token(ANSWER), toy.model.bridge.to_single_token(WRONG)
    result = ablate_heads(
        toy, CLEAN, [list(h) for h in heads], ANSWER, WRONG, mode=mode, corrupted_prompt=CORRUPTED, individually=True
    )
    together = hand_logits(toy, CLEAN, heads, mode, CORRUPTED)[-1]
    assert result.metric_after == round_sig(float(together[a] - together[b]))
    assert result.individual is not None
    for effect in result.individual:
        alone = hand_logits(toy, CLEAN, [(effect.layer, effect.head)], mode, CORRUPTED)[-1]
        assert effect.metric == round_sig(float(alone[a] - alone[b]))
    if mode == "resample":
        # The induction head reads the corrupted prompt's token: resampling it moves the answer toward ' w77'.
        assert result.effect is not None and result.effect < -2


def test_corrupted_mean_may_use_a_prompt_of_another_length(toy: ToolContext) -> None:
    source = "w20 w31 w42"
    result = ablate_heads(toy, CLEAN, [[1, 2]], ANSWER, WRONG, mode="corrupted_mean", corrupted_prompt=source)
    a, b = toy.model.bridge.to_single_token(ANSWER), toy.model.bridge.to_single_token(WRONG)
    alone = hand_logits(toy, CLEAN, [(1, 2)], "corrupted_mean", source)[-1]
    assert result.metric_after == round_sig(float(alone[a] - alone[b]))


@pytest.mark.parametrize("metric", ["logprob", "prob"])
def test_probability_metrics_equal_hand_written_hooks(toy: ToolContext, metric: str) -> None:
    result = ablate_heads(toy, CLEAN, [[1, 2]], ANSWER, metric=metric)
    a = toy.model.bridge.to_single_token(ANSWER)
    with torch.no_grad():
        clean = toy.model.bridge(toy.model.bridge.to_tokens(CLEAN))[0, -1].float().log_softmax(-1)[a]
    after = hand_logits(toy, CLEAN, [(1, 2)], "zero", None)[-1].float().log_softmax(-1)[a]
    transform = torch.exp if metric == "prob" else (lambda x: x)
    assert result.metric_before == round_sig(float(transform(clean)))
    assert result.metric_after == round_sig(float(transform(after)))


def test_loss_over_the_repeated_half_shows_the_induction_head(toy: ToolContext) -> None:
    induction = ablate_heads(toy, REPEATED, [[1, 2]], metric="loss", positions=SECOND_HALF)
    other = ablate_heads(toy, REPEATED, [[1, 0]], metric="loss", positions=SECOND_HALF)
    with torch.no_grad():
        plain = toy.model.bridge(toy.model.bridge.to_tokens(REPEATED))[0]
    assert induction.metric_before == round_sig(loss(toy, plain, REPEATED, SECOND_HALF))
    ablated = hand_logits(toy, REPEATED, [(1, 2)], "zero", None)
    assert induction.metric_after == round_sig(loss(toy, ablated, REPEATED, SECOND_HALF))
    assert induction.metric_before is not None and induction.metric_before < 1.0
    assert induction.effect is not None and other.effect is not None
    assert induction.effect > 2.0 and abs(other.effect) < 0.5 * induction.effect
    assert induction.prob_before is None and "loss" in induction.metric
    every = ablate_heads(toy, REPEATED, [[1, 2]], metric="loss")
    assert every.metric_before == round_sig(loss(toy, plain, REPEATED, list(range(1, 41))))


def test_pairs_average_single_calls(toy: ToolContext) -> None:
    items = [
        (CLEAN, CORRUPTED, ANSWER, WRONG),
        ("w10 w11 w12 w13 w20 w10 w11 w12 w13", "w10 w11 w12 w13 w30 w10 w11 w12 w13", " w20", " w30"),
        ("w5 w6 w7 w8 w9 w10 w5 w6 w7 w8 w9", "w5 w6 w7 w8 w9 w40 w5 w6 w7 w8 w9", " w10", " w40"),  # longer
    ]
    pairs = [dict(clean_prompt=a, corrupted_prompt=b, answer=c, wrong_answer=d) for a, b, c, d in items]
    heads = [[1, 2], [1, 1]]
    dataset = ablate_heads(toy, heads=heads, mode="resample", individually=True, pairs=pairs)
    singles = [
        ablate_heads(toy, a, heads, c, d, mode="resample", corrupted_prompt=b, individually=True)
        for a, b, c, d in items
    ]
    effects = torch.tensor([s.effect for s in singles], dtype=torch.float64)
    assert dataset.effect == pytest.approx(float(effects.mean()), rel=1e-3)
    assert dataset.effect_spread is not None
    assert dataset.effect_spread.std == pytest.approx(float(effects.std(unbiased=False)), rel=1e-2)
    assert dataset.effect_spread.min == pytest.approx(float(effects.min()), rel=1e-3)
    assert dataset.pairs is not None and dataset.tokens is None
    for row, single in zip(dataset.pairs, singles, strict=True):
        assert (row.clean_metric, row.metric_after) == (single.metric_before, single.metric_after)
        assert row.tokens == single.tokens
    assert dataset.pairs[0].corrupted_metric is not None and dataset.pairs[0].corrupted_metric < 0  # ' w77' wins
    assert dataset.individual is not None and singles[0].individual is not None
    by_head = {(e.layer, e.head): e for e in dataset.individual}
    for layer, head in [(1, 2), (1, 1)]:
        mean = (
            sum(next(e.effect for e in s.individual or [] if (e.layer, e.head) == (layer, head)) for s in singles) / 3
        )
        assert by_head[(layer, head)].effect == pytest.approx(mean, rel=1e-3, abs=1e-4)


def test_bad_ablation_arguments(toy: ToolContext) -> None:
    with pytest.raises(LensError, match="corrupted_prompt is required"):
        ablate_heads(toy, CLEAN, [[1, 2]], ANSWER, mode="resample")
    with pytest.raises(LensError, match="same length for mode='resample'"):
        ablate_heads(toy, CLEAN, [[1, 2]], ANSWER, mode="resample", corrupted_prompt="w1 w2")
    with pytest.raises(LensError, match="answer is required"):
        ablate_heads(toy, CLEAN, [[1, 2]])
    with pytest.raises(LensError, match="positions= is only used by metric='loss'"):
        ablate_heads(toy, CLEAN, [[1, 2]], ANSWER, positions=[3])
    with pytest.raises(LensError, match="0 \\(BOS\\) is never predicted"):
        ablate_heads(toy, CLEAN, [[1, 2]], metric="loss", positions=[0, 3])
    with pytest.raises(LensError, match="metric='entropy'"):
        ablate_heads(toy, CLEAN, [[1, 2]], ANSWER, metric="entropy")
    with pytest.raises(LensError, match="only used by mode='resample'"):
        ablate_heads(toy, CLEAN, [[1, 2]], ANSWER, corrupted_prompt=CORRUPTED)


async def test_ablation_modes_through_a_client(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    baseline = count_hooks(toy_host.model.bridge)
    data = result_data(
        await call_tool(
            server,
            "ablate_heads",
            {"prompt": REPEATED, "heads": [[1, 2]], "metric": "loss", "positions": SECOND_HALF},
        )
    )
    assert data["effect"] > 2 and data["prob_before"] is None and data["tokens"][0] == "<|bos|>"
    estimate = result_data(
        await call_tool(
            server,
            "ablate_heads",
            {"prompt": CLEAN, "heads": [[1, 2], [0, 1]], "answer": ANSWER, "individually": True, "dry_run": True},
        )
    )
    assert estimate["dry_run"] and estimate["cost"]["cells"] == 3 and estimate["metric_after"] is None
    text = error_text(
        await call_tool(
            server, "ablate_heads", {"prompt": CLEAN, "heads": [[1, 2]], "answer": ANSWER, "mode": "resample"}
        )
    )
    assert "corrupted_prompt is required" in text
    text = error_text(await call_tool(server, "ablate_heads", {"prompt": CLEAN, "answer": ANSWER}))
    assert "heads" in text
    assert count_hooks(toy_host.model.bridge) == baseline
