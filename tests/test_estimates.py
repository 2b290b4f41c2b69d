"""Cost estimates that can be trusted: patch_sweep's estimate counts exactly the token-layers its engine then
runs (cells that change nothing and positions before each row's first difference are not counted), its seconds
stay within 0.5x-2x of the time taken, the throughput follows what batches measure; and results that fit: a
mostly empty grid comes back sparse, a grid over the response cap as its top cells and a per-layer summary."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lens_mcp.limits import Limits
from lens_mcp.tools.causal.patch_sweep import patch_sweep
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import observe
from tests.shared import CLEAN, CORRUPTED, SWEEP

LONG_CLEAN = " ".join(f"w{i}" for i in range(10, 50))
LATE = LONG_CLEAN.rsplit(" ", 1)[0] + " w99"  # differs at the last word only
EARLY = "w10 w98 " + LONG_CLEAN.split(" ", 2)[2]  # differs at the second word
DATASET = [
    {"clean_prompt": CLEAN, "corrupted_prompt": CORRUPTED, "answer": " w64", "wrong_answer": " w77"},
    {"clean_prompt": "w1 w2 w3 w4 w5 w1 w2 w3 w4", "corrupted_prompt": "w1 w2 w3 w4 w6 w1 w2 w3 w4",
     "answer": " w5", "wrong_answer": " w6"},
]  # fmt: skip
CASES = {
    "resid_pre, differs late": {"clean_prompt": LONG_CLEAN, "corrupted_prompt": LATE, "answer": " w5",
                                "wrong_answer": " w6", "component": "resid_pre"},
    "resid_pre, differs early": {"clean_prompt": LONG_CLEAN, "corrupted_prompt": EARLY, "answer": " w5",
                                 "wrong_answer": " w6", "component": "resid_pre"},
    "heads_by_pos": {**SWEEP, "component": "heads_by_pos"},
    "heads": {**SWEEP, "component": "heads"},
    "attn_out, pairs": {"pairs": DATASET, "component": "attn_out"},
    "heads_by_pos, pairs": {"pairs": DATASET, "component": "heads_by_pos"},
}  # fmt: skip


@contextmanager
def counting_blocks(tc: ToolContext) -> Iterator[list[int]]:
    """Token-layers run by every block call (rows x positions of the block's input)."""
    counted: list[int] = []

    def count(_module: object, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        counted.append(int(x.shape[0]) * int(x.shape[1]))

    handles = [block.register_forward_pre_hook(count, with_kwargs=True) for block in tc.view.blocks]
    try:
        yield counted
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_estimate_counts_exactly_the_work_the_engine_runs(toy: ToolContext, case: str) -> None:
    arguments = CASES[case]
    with counting_blocks(toy) as dry:
        estimate = patch_sweep(toy, **arguments, dry_run=True)
    assert estimate.cost is not None
    reference = sum(dry)  # a dry run runs the clean and corrupted passes only, to learn what the sweep skips
    n_pairs = len(arguments.get("pairs", [None]))
    assert len(dry) == toy.view.n_layers * len(
        {len(p["clean_prompt"].split()) for p in arguments.get("pairs", [arguments])}
    )
    with counting_blocks(toy) as run:
        result = patch_sweep(toy, **arguments)
    assert sum(run) - reference == estimate.cost.work_units, f"{case}: ran {sum(run) - reference}"
    assert result.cost is not None and result.cost.work_units == estimate.cost.work_units
    assert result.cost.cells == result.n_cells * n_pairs


def test_a_pair_that_differs_late_is_estimated_far_below_one_that_differs_early(toy: ToolContext) -> None:
    late = patch_sweep(toy, **CASES["resid_pre, differs late"], dry_run=True)
    early = patch_sweep(toy, **CASES["resid_pre, differs early"], dry_run=True)
    assert late.cost is not None and early.cost is not None
    # late: only the last position's row differs, one position each; early: 30 rows of up to 30 positions
    assert late.cost.work_units * 20 < early.cost.work_units


def test_estimated_seconds_stay_within_half_and_twice_the_time_taken(toy: ToolContext) -> None:
    """Summed over the matrix (single toy calls take milliseconds, where timer noise would dominate)."""
    toy.model.throughput = None  # measured afresh, as at load
    estimated = taken = 0.0
    for arguments in CASES.values():
        for _ in range(3):
            started = time.perf_counter()
            result = patch_sweep(toy, **arguments)
            taken += time.perf_counter() - started
            assert result.cost is not None
            estimated += result.cost.seconds
    assert 0.5 <= taken / estimated <= 2.0, f"took {taken:.2f}s against {estimated:.2f}s estimated"


def test_throughput_follows_what_batches_measure(toy: ToolContext) -> None:
    saved = toy.model.throughput, toy.model.block_call_seconds
    try:
        toy.model.throughput, toy.model.block_call_seconds = 1000.0, 0.001
        for _ in range(20):  # the machine became 4x slower: 1000 token-layers now take 4 s (+ 10 calls)
            observe(toy, 1000, 10, 4.0 + 10 * 0.001)
        assert toy.model.throughput == pytest.approx(250.0, rel=0.01)
        # a batch of a few late positions through many blocks (expected: 0.01 s of arithmetic, 0.1 s of calls) took
        # 1 s: its time is the calls' overhead, not the arithmetic, and leaves the throughput alone
        observe(toy, 2.5, 100, 1.0)
        assert toy.model.throughput == pytest.approx(250.0, rel=0.01)
    finally:
        toy.model.throughput, toy.model.block_call_seconds = saved


def test_a_mostly_empty_grid_comes_back_sparse_and_equal_to_the_dense_one(toy: ToolContext) -> None:
    arguments = {**CASES["resid_pre, differs late"], "component": "heads_by_pos", "positions": None}
    result = patch_sweep(toy, **arguments)
    assert result.grid is None and result.sparse is not None
    assert result.sparse.axes == ["layer", "head", "position"] == result.axes
    dense = result.sparse.dense(result.axis_values())
    listed = [v for v in dense if v is not None]
    assert len(listed) == len(result.sparse.values) <= result.n_cells - result.skipped_cells
    # every listed cell equals the same cell patched alone
    for i in range(0, len(result.sparse.values), max(1, len(result.sparse.values) // 4)):
        layer, head, position = (column[i] for column in result.sparse.coords)
        alone = patch_sweep(toy, **{**arguments, "layers": [layer], "positions": [position]})
        assert alone.grid is not None
        assert alone.grid[0][head][0] == pytest.approx(result.sparse.values[i], rel=2e-3, abs=1e-6)  # type: ignore[index]


def test_a_grid_over_the_response_cap_is_summarized_not_refused(toy: ToolContext) -> None:
    full = patch_sweep(toy, **CASES["heads_by_pos"])
    small = dataclasses.replace(toy, limits=Limits(max_response_chars=3000))
    summarized = patch_sweep(small, **CASES["heads_by_pos"])
    assert summarized.grid is None and summarized.sparse is None and summarized.layer_max is not None
    assert len(summarized.model_dump_json()) <= 3000
    assert summarized.top_cells == full.top_cells
    for layer, largest in enumerate(summarized.layer_max):
        values = [abs(v) for row in full.grid[layer] for v in row if v is not None]  # type: ignore[index,union-attr]
        assert largest == pytest.approx(max(values), rel=1e-6)
    assert any("over the response cap" in note and "layers=" in note for note in summarized.notes)


def test_edge_attribution_and_faithfulness_estimates_stay_within_half_and_twice(toy: ToolContext) -> None:
    """Their passes run with per-head hook points on: estimated at the slowdown measured for them (summed over a
    few calls, as above)."""
    from lens_mcp.tools.circuits.circuit_faithfulness import circuit_faithfulness
    from lens_mcp.tools.circuits.edge_attribution import edge_attribution

    toy.model.throughput = None  # measured afresh, as at load
    toy.model.slowdowns.clear()
    # 8 pairs of the longest prompts the toy model takes: a call of 2 short pairs takes about 20 ms, mostly the
    # Python of building its hooks and result, which no estimate of the passes' arithmetic is meant to follow
    long_pairs = [{"clean_prompt": LONG_CLEAN, "corrupted_prompt": other, "answer": " w5", "wrong_answer": " w6"}
                  for other in (LATE, EARLY)] * 4  # fmt: skip
    calls = [
        lambda: edge_attribution(toy, pairs=long_pairs, verify_top=0),
        lambda: edge_attribution(toy, pairs=long_pairs, method="eap-ig", ig_steps=3, verify_top=0),
        lambda: circuit_faithfulness(toy, pairs=long_pairs, circuit="last", k=[5, 20, 60]),
    ]
    calls[0]()  # warm-up: the first call of a process builds what later calls reuse
    estimated = taken = 0.0
    for call in calls * 3:
        started = time.perf_counter()
        result = call()
        taken += time.perf_counter() - started
        estimated += result.cost.seconds
    assert len(toy.model.slowdowns) == 2 and min(toy.model.slowdowns.values()) >= 1.0
    assert 0.5 <= taken / estimated <= 2.0, f"took {taken:.2f}s against {estimated:.2f}s estimated"
