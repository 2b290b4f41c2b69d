"""One normalization for datasets, in every tool that takes pairs=: pooled, (mean patched - mean corrupted) /
(mean clean - mean corrupted). The same pairs through patch_sweep, attribution_patch and path_patch give the
same 0 and 1, and the same values where the tools measure the same thing (the toy model's MLPs write zero, so
a head's path into the next residual stream carries its whole effect)."""

from __future__ import annotations

import pytest
import torch

from lens_mcp.tools.causal.attribution_patch import attribution_patch
from lens_mcp.tools.causal.patch_sweep import patch_sweep
from lens_mcp.tools.causal.path_patch import path_patch
from lens_mcp.tools.core.context import ToolContext

# Same length, each pair differing at position 5 only (the token after the first "A"), with pair gaps that
# differ, so that pooled and per-pair normalization disagree.
PAIRS = [
    {"clean_prompt": "w20 w31 w42 w53 w64 w20 w31 w42 w53", "corrupted_prompt": "w20 w31 w42 w53 w77 w20 w31 w42 w53"},
    {"clean_prompt": "w10 w11 w12 w13 w20 w10 w11 w12 w13", "corrupted_prompt": "w10 w11 w12 w13 w30 w10 w11 w12 w13"},
    {"clean_prompt": "w5 w6 w7 w8 w9 w5 w6 w7 w8", "corrupted_prompt": "w5 w6 w7 w8 w40 w5 w6 w7 w8"},
]
ANSWERS = [(" w64", " w77"), (" w20", " w30"), (" w9", " w40")]
DATASET = [{**p, "answer": a, "wrong_answer": w} for p, (a, w) in zip(PAIRS, ANSWERS, strict=True)]
TOL = 1e-3


def flat(grid: list) -> list:
    return [v for row in grid for v in (flat(row) if isinstance(row, list) else [row])]


def test_pooled_normalization_is_the_dataset_ratio_of_means(toy: ToolContext) -> None:
    raw = patch_sweep(toy, pairs=DATASET, component="heads", normalize=False)
    normalized = patch_sweep(toy, pairs=DATASET, component="heads")
    assert raw.pairs is not None
    metrics = [(p.clean_metric, p.corrupted_metric) for p in raw.pairs]
    assert all(a is not None and b is not None for a, b in metrics)
    clean = sum(float(a) for a, _ in metrics) / len(metrics)
    corrupted = sum(float(b) for _, b in metrics) / len(metrics)
    gaps = [float(a) - float(b) for a, b in metrics]
    assert max(gaps) > 1.2 * min(gaps)  # per-pair and pooled normalization differ on this dataset
    expected = [(v - corrupted) / (clean - corrupted) for v in flat(raw.grid)]
    assert flat(normalized.grid) == pytest.approx(expected, rel=TOL, abs=TOL)
    assert normalized.spread is not None  # each pair's change in the same units: they average to the grid
    assert "pooled" in normalized.meaning


def test_one_means_the_clean_behaviour_restored_in_every_tool(toy: ToolContext) -> None:
    # The pairs differ at position 5 only: the clean residual stream there restores each pair exactly.
    sweep = patch_sweep(toy, pairs=DATASET, component="resid_pre", layers=[0], positions=[5])
    assert flat(sweep.grid) == [pytest.approx(1.0, abs=1e-4)]
    gradient = attribution_patch(toy, pairs=DATASET, component="resid_pre", layers=[0], positions=[5], verify_top=1)
    assert gradient.verified[0].exact == pytest.approx(1.0, abs=1e-4)
    noised = patch_sweep(toy, pairs=DATASET, component="resid_pre", layers=[0], positions=[5], direction="noise")
    assert flat(noised.grid) == [pytest.approx(1.0, abs=1e-4)]


def test_sibling_tools_agree_cell_by_cell(toy: ToolContext) -> None:
    heads = patch_sweep(toy, pairs=DATASET, component="heads")
    sweep = torch.tensor(flat(heads.grid), dtype=torch.float64).reshape(2, -1)
    # Layer-0 heads: their path into the residual stream entering block 1 is their whole effect (MLP 0 is 0).
    into_block_1 = path_patch(toy, senders=None, receivers={"resid": 1}, pairs=DATASET)
    # Layer-1 heads: their direct path to the logits is their whole effect (MLP 1 is 0).
    into_logits = path_patch(toy, senders=None, receivers="logits", pairs=DATASET)
    assert into_block_1.grid is not None and into_logits.grid is not None
    assert into_block_1.grid[0] == pytest.approx(sweep[0].tolist(), rel=TOL, abs=TOL)
    assert into_logits.grid[1] == pytest.approx(sweep[1].tolist(), rel=TOL, abs=TOL)
    assert max(abs(v) for v in sweep[1].tolist()) > 0.3  # the induction heads carry the behaviour
    # attribution_patch's exactly patched cells are patch_sweep's values.
    gradient = attribution_patch(toy, pairs=DATASET, component="heads", verify_top=4)
    for cell in gradient.verified:
        assert cell.head is not None
        assert cell.exact == pytest.approx(float(sweep[cell.layer][cell.head]), rel=TOL, abs=TOL)
