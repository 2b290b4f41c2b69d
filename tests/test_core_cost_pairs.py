"""The shared cost estimate and prompt-dataset mechanics, against hand calculations on the toy model."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.core.batching import plan_rows
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate, measured_throughput, rows_for_time, work_units
from lens_mcp.tools.core.pairs import PromptPair, encode_pairs, positions_from_end, resolve_pairs, spread


@pytest.fixture()
def fixed_speed(toy: ToolContext) -> Iterator[ToolContext]:
    """The toy model with a known throughput (1,000 token-layers per second) and a known fixed cost per block call
    (10 ms), restored afterwards."""
    saved = toy.model.throughput, toy.model.block_call_seconds
    toy.model.throughput, toy.model.block_call_seconds = 1000.0, 0.01
    yield toy
    toy.model.throughput, toy.model.block_call_seconds = saved


def test_work_units_and_seconds_follow_the_hand_count(fixed_speed: ToolContext) -> None:
    tc = fixed_speed
    n_layers = int(tc.model.cfg.n_layers)
    work = Work(
        rows=10, tokens_per_row=8, layer_fraction=0.5, backward_rows=2, cells=10, result_chars=1234, rows_per_pass=5
    )
    units = math.ceil((10 + 2 * 2) * 8 * n_layers * 0.5)
    assert work_units(tc, work) == units
    cost = estimate(tc, work)
    assert cost.work_units == units and cost.forward_passes == 2 + 1
    # two forward passes and one backward (two block calls per block) through half the blocks, 10 ms a call
    block_calls = (2 + 2 * 1) * max(1.0, n_layers * 0.5)
    assert cost.seconds == pytest.approx(units / 1000.0 + block_calls * 0.01, rel=1e-3)
    assert (cost.cells, cost.result_chars) == (10, 1234)


def test_enforce_refuses_over_each_cap_and_says_how_to_narrow(fixed_speed: ToolContext) -> None:
    tc = fixed_speed
    within = estimate(tc, Work(rows=1, tokens_per_row=4))
    enforce(tc, within, "fewer layers")  # no error
    slow = dataclasses.replace(tc, limits=Limits(max_call_seconds=1))
    with pytest.raises(LensError, match=r"max_call_seconds=1.*Narrow it: fewer layers=\[\.\.\.\]"):
        enforce(slow, estimate(slow, Work(rows=100, tokens_per_row=40)), "fewer layers=[...]")
    small = dataclasses.replace(tc, limits=Limits(max_work_units=10))
    with pytest.raises(LensError, match="max_work_units=10"):
        enforce(small, estimate(small, Work(rows=3, tokens_per_row=4)), "fewer rows")
    with pytest.raises(LensError, match="max_response_chars"):
        enforce(tc, estimate(tc, Work(rows=1, tokens_per_row=4, result_chars=10**7)), "a smaller top_k")


def test_rows_for_time_keeps_a_batch_near_max_batch_seconds(fixed_speed: ToolContext) -> None:
    tc = fixed_speed
    n_layers = int(tc.model.cfg.n_layers)
    # one row of 10 tokens through every block takes 10 * n_layers / 1000 s
    expected = int(tc.limits.max_batch_seconds / (10 * n_layers / 1000.0))
    assert rows_for_time(tc, 10) == max(1, expected)
    plan = plan_rows(tc.limits, "cpu", 10, 1, wanted=10**6, seconds_per_row=10 * n_layers / 1000.0)
    assert plan.rows == max(1, expected) and plan.reason == "max_batch_seconds"


def test_measured_throughput_is_positive_and_kept(toy: ToolContext) -> None:
    saved = toy.model.throughput
    toy.model.throughput = None
    try:
        first = measured_throughput(toy)
        assert first > 0 and toy.model.throughput == first
        assert measured_throughput(toy) == first  # measured once per model
    finally:
        toy.model.throughput = saved


def test_spread_matches_a_hand_calculation_and_skips_nan_cells() -> None:
    values = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 6.0, float("nan")], [5.0, float("nan"), float("nan")]])
    stats = spread(values)
    assert stats.n == 3
    assert stats.mean.tolist()[:2] == [3.0, 4.0]
    assert stats.std[0].item() == pytest.approx(math.sqrt(((1 - 3) ** 2 + 0 + (5 - 3) ** 2) / 3))
    assert stats.std[1].item() == pytest.approx(2.0)  # the NaN of pair 2 is left out: values 2 and 6
    assert (stats.min[0].item(), stats.max[0].item()) == (1.0, 5.0)
    assert math.isnan(stats.mean[2].item())  # skipped in every pair


def test_resolve_pairs_takes_one_form_and_names_the_faulty_pair(toy: ToolContext) -> None:
    single = resolve_pairs(toy, None, clean_prompt="w1 w2", corrupted_prompt="w3 w4", answer=" w5")
    assert single == [PromptPair(clean_prompt="w1 w2", corrupted_prompt="w3 w4", answer=" w5")]
    with pytest.raises(LensError, match="not both"):
        resolve_pairs(toy, [{"clean_prompt": "a", "corrupted_prompt": "b", "answer": " c"}], clean_prompt="x")
    with pytest.raises(LensError, match="clean_prompt is required"):
        resolve_pairs(toy, None, clean_prompt=None)
    with pytest.raises(LensError, match="empty"):
        resolve_pairs(toy, [], clean_prompt=None)
    with pytest.raises(LensError, match=r"pairs\[1\]\.corrupted_prompt is required"):
        resolve_pairs(
            toy,
            [{"clean_prompt": "a", "corrupted_prompt": "b", "answer": " c"}, {"clean_prompt": "a", "answer": " c"}],
            clean_prompt=None,
        )
    capped = dataclasses.replace(toy, limits=Limits(max_pairs=2))
    with pytest.raises(LensError, match="max_pairs=2"):
        resolve_pairs(capped, [{"clean_prompt": "a", "corrupted_prompt": "b", "answer": " c"}] * 3, clean_prompt=None)


def test_encode_pairs_checks_lengths_within_and_across_pairs(toy: ToolContext) -> None:
    pairs = [
        PromptPair(clean_prompt="w1 w2", corrupted_prompt="w3 w4"),
        PromptPair(clean_prompt="w1 w2 w3", corrupted_prompt="w3 w4 w5"),
    ]
    with pytest.raises(LensError, match=r"pairs\[1\] is 4 tokens long but pairs\[0\] is 3"):
        encode_pairs(toy, pairs)
    tokens = encode_pairs(toy, pairs, fixed_positions=False)
    assert [tuple(t.shape) for t in tokens] == [(2, 3), (2, 4)]
    assert tokens[1][0].tolist() == toy.model.bridge.to_tokens("w1 w2 w3")[0].tolist()
    with pytest.raises(LensError, match=r"pairs\[0\]\.clean_prompt and pairs\[0\]\.corrupted_prompt"):
        encode_pairs(toy, [PromptPair(clean_prompt="w1", corrupted_prompt="w1 w2"), pairs[0]])
    assert positions_from_end([-1, -3]) and not positions_from_end([0, -1]) and not positions_from_end(None)


def test_a_malformed_pair_is_a_readable_error(toy: ToolContext) -> None:
    with pytest.raises(LensError, match=r"pairs\[1\] is not a valid item \(clean_prompt: .*\)"):
        resolve_pairs(
            toy,
            [{"clean_prompt": "a", "corrupted_prompt": "b", "answer": " c"}, {"clean_prompt": 3}],
            clean_prompt=None,
        )


def test_the_throughput_is_measured_at_load_before_any_call() -> None:
    host = ModelHost(Limits())
    loaded = host.load("toy-induction", device="cpu")
    assert loaded.throughput is not None and loaded.throughput > 0
