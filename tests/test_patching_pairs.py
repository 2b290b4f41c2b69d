"""patch_sweep over a prompt dataset (pairs=[...]) on the toy model: the mean over pairs equals the mean of
single-pair calls, the spread and per-pair metrics match them, lengths may differ only where positions count
from the end, and the cost is known (dry_run, refusal) before any forward pass."""

from __future__ import annotations

import time

import pytest
import torch

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.server.app import build_server
from lens_mcp.tools.causal.patch_sweep import patch_sweep
from lens_mcp.tools.core.context import ToolContext
from tests.mcp_client import call_tool, error_text, result_data
from tests.shared import pooled_from_singles

# Induction-shaped pairs: the clean prompt repeats "... A B ... A" (answer B), the corrupted one has C for B.
SAME_LENGTH = [
    ("w20 w31 w42 w53 w64 w20 w31 w42 w53", "w20 w31 w42 w53 w77 w20 w31 w42 w53", " w64", " w77"),
    ("w10 w11 w12 w13 w20 w10 w11 w12 w13", "w10 w11 w12 w13 w30 w10 w11 w12 w13", " w20", " w30"),
    ("w5 w6 w7 w8 w9 w5 w6 w7 w8", "w5 w6 w7 w8 w40 w5 w6 w7 w8", " w9", " w40"),
]
LONGER = ("w50 w51 w52 w53 w54 w55 w50 w51 w52 w53 w54", "w50 w51 w52 w53 w54 w60 w50 w51 w52 w53 w54", " w55", " w60")


def as_pairs(items: list[tuple[str, str, str, str]]) -> list[dict[str, str]]:
    return [dict(clean_prompt=a, corrupted_prompt=b, answer=c, wrong_answer=d) for a, b, c, d in items]


def flat(grid: list) -> list:
    return [v for row in grid for v in (flat(row) if isinstance(row, list) else [row])]


@pytest.mark.parametrize(
    ("component", "positions", "items", "direction"),
    [
        ("heads_by_pos", None, SAME_LENGTH, "denoise"),
        ("resid_pre", [-1, -2, -5], [*SAME_LENGTH, LONGER], "denoise"),
        ("heads", None, [*SAME_LENGTH, LONGER], "noise"),
        ("v", None, SAME_LENGTH, "noise"),
    ],
)
def test_the_mean_over_pairs_equals_the_mean_of_single_calls(
    toy: ToolContext, component: str, positions: list[int] | None, items: list, direction: str
) -> None:
    kwargs = dict(component=component, positions=positions, direction=direction, normalize=True)
    dataset = patch_sweep(toy, pairs=as_pairs(items), **kwargs)
    singles = [patch_sweep(toy, *item, **kwargs) for item in items]
    n_cells = len(flat(singles[0].grid))
    grids = torch.tensor([[0.0 if v is None else v for v in flat(s.grid)] for s in singles], dtype=torch.float64)
    pooled = pooled_from_singles(grids, [s.clean_metric for s in singles], [s.corrupted_metric for s in singles])
    assert dataset.n_cells == n_cells and dataset.spread is not None and dataset.spread.n_pairs == len(items)
    for cell in range(n_cells):
        values = [flat(s.grid)[cell] for s in singles]
        if all(v is None for v in values):
            assert flat(dataset.grid)[cell] is None
            continue
        present = pooled[:, cell]
        # Single-call values are rounded to 4 digits: the mean agrees to that precision.
        assert flat(dataset.grid)[cell] == pytest.approx(float(present.mean()), rel=2e-3, abs=2e-4)
        assert flat(dataset.spread.std)[cell] == pytest.approx(float(present.std(unbiased=False)), rel=2e-2, abs=5e-4)
        assert flat(dataset.spread.min)[cell] == pytest.approx(float(present.min()), rel=2e-3, abs=2e-4)
    assert dataset.pairs is not None
    for index, (row, single) in enumerate(zip(dataset.pairs, singles, strict=True)):
        assert row.index == index
        assert (row.clean_metric, row.corrupted_metric) == (single.clean_metric, single.corrupted_metric)
        assert row.clean_tokens == single.clean_tokens and row.corrupted_tokens == single.corrupted_tokens
    assert dataset.clean_tokens is None  # each prompt's tokens appear once, under pairs
    assert "pooled" in dataset.meaning


def test_rows_of_all_pairs_share_batches(toy: ToolContext) -> None:
    dataset = patch_sweep(toy, pairs=as_pairs(SAME_LENGTH), component="heads_by_pos")
    single = patch_sweep(toy, *SAME_LENGTH[0], component="heads_by_pos")
    # One engine: one paired run for all pairs plus the patched batches; not one call per pair.
    assert dataset.forward_passes < len(SAME_LENGTH) * single.forward_passes


def test_pairs_of_different_lengths_need_positions_from_the_end(toy: ToolContext) -> None:
    with pytest.raises(LensError, match=r"pairs\[3\] is 12 tokens long but pairs\[0\] is 10.*negative"):
        patch_sweep(toy, pairs=as_pairs([*SAME_LENGTH, LONGER]), component="resid_pre")
    with pytest.raises(LensError, match=r"pairs\[3\] is 12 tokens long"):
        patch_sweep(toy, pairs=as_pairs([*SAME_LENGTH, LONGER]), component="heads_by_pos", positions=[-1, 2])
    result = patch_sweep(toy, pairs=as_pairs([*SAME_LENGTH, LONGER]), component="attn_out", positions=[-1])
    assert result.positions == [-1]


def test_bad_pairs_are_named(toy: ToolContext) -> None:
    bad = as_pairs(SAME_LENGTH)
    bad[1]["answer"] = " w20 w21"
    with pytest.raises(LensError, match=r"pairs\[1\]\..*single token"):
        patch_sweep(toy, pairs=bad)
    with pytest.raises(LensError, match="not both"):
        patch_sweep(toy, *SAME_LENGTH[0], pairs=as_pairs(SAME_LENGTH))
    with pytest.raises(LensError, match=r"pairs\[2\]\.clean_prompt and pairs\[2\]\.corrupted_prompt must tokenize"):
        patch_sweep(toy, pairs=as_pairs([*SAME_LENGTH[:2], (SAME_LENGTH[2][0], "w1 w2", " w9", " w40")]))
    with pytest.raises(LensError, match="max_pairs=2"):
        patch_sweep(ToolContext(toy.model, Limits(max_pairs=2)), pairs=as_pairs(SAME_LENGTH))


def test_dry_run_and_refusal_come_before_any_forward_pass(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    estimate = patch_sweep(toy, pairs=as_pairs(SAME_LENGTH), component="heads_by_pos", dry_run=True)
    assert estimate.dry_run and estimate.cost is not None and estimate.grid == []
    n_cells = toy.model.cfg.n_layers * toy.model.cfg.n_heads * 10
    assert estimate.n_cells == n_cells and estimate.cost.cells == n_cells * len(SAME_LENGTH)
    real = patch_sweep(toy, pairs=as_pairs(SAME_LENGTH), component="heads_by_pos")
    assert real.cost is not None  # the same plan; its seconds include the measured reference runs
    assert real.cost.model_dump(exclude={"seconds", "throughput"}) == estimate.cost.model_dump(
        exclude={"seconds", "throughput"}
    )
    assert len(real.model_dump_json()) <= 2 * estimate.cost.result_chars

    def no_forward(*args: object, **kwargs: object) -> None:
        raise AssertionError("a forward pass ran")

    tight = ToolContext(toy.model, Limits(max_work_units=100))
    monkeypatch.setattr(type(toy.model.bridge), "run_with_cache", no_forward)
    started = time.perf_counter()
    with pytest.raises(LensError, match="refused before computing.*max_work_units=100.*layers="):
        patch_sweep(tight, pairs=as_pairs(SAME_LENGTH), component="heads_by_pos")
    assert time.perf_counter() - started < 2


async def test_pairs_through_a_client(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    baseline = count_hooks(toy_host.model.bridge)
    data = result_data(await call_tool(server, "patch_sweep", {"pairs": as_pairs(SAME_LENGTH), "component": "heads"}))
    assert len(data["pairs"]) == 3 and data["spread"]["n_pairs"] == 3
    assert data["axes"] == ["layer", "head"] and data["clean_tokens"] is None
    with toy_host.use() as model:
        direct = patch_sweep(ToolContext(model, toy_host.limits), pairs=as_pairs(SAME_LENGTH), component="heads")
    assert data["grid"] == direct.grid
    text = error_text(await call_tool(server, "patch_sweep", {"pairs": [{"clean_prompt": "w1 w2"}]}))
    assert "pairs[0].corrupted_prompt is required" in text
    text = error_text(await call_tool(server, "patch_sweep", {"pairs": [{"clean_prompt": "w1", "bogus": 1}]}))
    assert "pairs[0]" in text and "Extra inputs are not permitted" in text
    text = error_text(await call_tool(server, "patch_sweep", {"pairs": []}))
    assert "pairs is empty" in text
    assert count_hooks(toy_host.model.bridge) == baseline
