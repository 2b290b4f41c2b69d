"""No call holds the model for long: over-cap calls are refused before any forward pass, and batches are sized
by time so progress (where a cancel lands) arrives batch by batch. Scaled-down versions of the cases that
used to run for minutes: a huge run_with_cache summary, a long induction_scores batch, a long patch sweep."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.tools.causal.patch_sweep import patch_sweep
from lens_mcp.tools.core.batching import BatchPlan, iter_batched
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.reading import induction_scores as induction_module
from lens_mcp.tools.reading import run_with_cache as run_with_cache_module
from lens_mcp.tools.reading.induction_scores import induction_scores
from lens_mcp.tools.reading.run_with_cache import run_with_cache


class Cancelled(Exception):
    """What a cancelled call's progress reporter raises."""


@pytest.fixture()
def slow_toy(toy: ToolContext) -> Iterator[ToolContext]:
    """The toy model pretending to be slow (100 token-layers per second), so time bounds bite at toy sizes."""
    saved = toy.model.throughput
    toy.model.throughput = 100.0
    yield toy
    toy.model.throughput = saved


def _no_forward(*args: object, **kwargs: object) -> None:
    raise AssertionError("a forward pass ran although the call should have been refused first")


def test_run_with_cache_refuses_an_oversized_summary_before_the_forward_pass(
    toy: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_with_cache_module, "summarizing_forward", _no_forward)
    small = dataclasses.replace(toy, limits=Limits(max_response_chars=2000))
    prompt = " ".join(f"w{i % 40}" for i in range(40))
    with pytest.raises(LensError, match=r"refused before computing.*max_response_chars=2000.*fewer hooks="):
        run_with_cache(small, prompt, hooks="*")


def test_induction_scores_refuses_over_the_seconds_cap_before_computing(
    slow_toy: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(induction_module, "head_scores_and_losses", _no_forward)
    capped = dataclasses.replace(slow_toy, limits=Limits(max_call_seconds=5))
    with pytest.raises(LensError, match=r"max_call_seconds=5.*a smaller n_seqs or seq_len"):
        induction_scores(capped, seq_len=20, n_seqs=8)


def test_induction_scores_batches_by_time_and_a_cancel_lands_after_one_batch(
    slow_toy: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    original = induction_module.head_scores_and_losses

    def counted(tc: ToolContext, tokens: object, targets: object) -> object:
        batches.append(int(tokens.shape[0]))
        return original(tc, tokens, targets)

    monkeypatch.setattr(induction_module, "head_scores_and_losses", counted)
    # 41 tokens x 2 layers per row at 100 token-layers/s: 0.82 s a row, so the first 3 s batch holds 3 rows;
    # the toy is really far faster, so the next batch grows (doubling while batches take under half the target)
    whole = induction_scores(slow_toy, seq_len=20, n_seqs=8)
    assert batches == [3, 5]

    batches.clear()

    def cancel_after_first_batch(done: float, total: float | None = None, message: str | None = None) -> None:
        if done >= 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        induction_scores(dataclasses.replace(slow_toy, progress=cancel_after_first_batch), seq_len=20, n_seqs=8)
    assert batches == [3]
    # batching by time does not change the numbers
    monkeypatch.setattr(induction_module, "head_scores_and_losses", original)
    slow_toy.model.throughput = 1e12
    one_batch = induction_scores(slow_toy, seq_len=20, n_seqs=8)
    for got, want in zip(one_batch.induction, whole.induction, strict=True):
        assert got == pytest.approx(want, abs=1e-3)
    assert one_batch.loss_second_repeat == pytest.approx(whole.loss_second_repeat, rel=1e-3)


def test_patch_sweep_reports_progress_batch_by_batch_when_rows_are_slow(slow_toy: ToolContext) -> None:
    reports: list[float] = []
    tc = dataclasses.replace(slow_toy, progress=lambda done, total=None, message=None: reports.append(done))
    prompt = " ".join(f"w{i}" for i in range(1, 13))
    corrupted = " ".join(f"w{i}" for i in range(2, 14))
    patch_sweep(tc, prompt, corrupted, " w13", " w14", component="resid_pre", metric="logit_diff")
    # 13-token rows through <= 2 layers at 100 token-layers/s: at most 11 rows per 3 s batch, 26 cells in all
    assert len([r for r in reports if r > 0]) >= 3


def test_batches_sized_by_time_grow_and_shrink_towards_the_target() -> None:
    fast_plan = BatchPlan(rows=2, reason="max_batch_seconds", ceiling=16, target_seconds=0.2)
    sizes: list[int] = []
    for batch, _ in iter_batched(list(range(50)), lambda b: None, fast_plan):
        sizes.append(len(batch))
    assert sizes == [2, 4, 8, 16, 16, 4]  # doubles up to the ceiling; the last batch is what is left

    slow_plan = BatchPlan(rows=8, reason="max_batch_seconds", ceiling=16, target_seconds=0.02)
    sizes = []
    for batch, _ in iter_batched(list(range(20)), lambda b: time.sleep(0.06), slow_plan):
        sizes.append(len(batch))
    assert sizes == [8, 4, 2, 1, 1, 1, 1, 1, 1]  # over twice the target: halves, down to one row

    sizes = [len(batch) for batch, _ in iter_batched(list(range(10)), lambda b: None, 3)]
    assert sizes == [3, 3, 3, 1]  # a plain row count stays fixed
