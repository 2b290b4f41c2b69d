"""The shape every patching result shares: the direction of a patch, the dataset normalization, the grid layout
and the one-line meaning of a normalized value.

Normalization over a dataset is pooled, as in the literature (Wang et al. 2022; Hanna et al. 2024):
denoise (mean patched - mean corrupted) / (mean clean - mean corrupted), noise (mean clean - mean patched) /
(mean clean - mean corrupted). Each pair's own value is its change divided by that same pooled gap, so the
per-pair values (the spread) are in the result's units and average exactly to the pooled value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from lens_mcp.errors import LensError

Direction = Literal["denoise", "noise"]
DIRECTIONS: tuple[Direction, ...] = ("denoise", "noise")
TOP_CELLS = 10
"""Cells listed in a patching result's `top`."""
FLAT_GAP = 1e-6
"""Below this clean - corrupted gap a metric cannot be normalized."""


def check_direction(direction: object) -> Direction:
    if direction not in DIRECTIONS:
        raise LensError(f"direction={direction!r} is not one of {', '.join(DIRECTIONS)}.")
    return direction


@dataclass(frozen=True)
class Normalized:
    per_pair: torch.Tensor
    """[pairs, cells]: each pair's change over the pooled gap (normalized), or its patched metric (raw)."""
    normalized: bool
    note: str | None = None
    """Why a requested normalization was not applied."""

    @property
    def mean(self) -> torch.Tensor:
        """The pooled value per cell (NaN cells, e.g. no path, stay NaN)."""
        return self.per_pair.mean(dim=0)


def pooled_gap(clean: torch.Tensor, corrupted: torch.Tensor) -> float:
    """mean clean - mean corrupted over the pairs."""
    return float(clean.double().mean() - corrupted.double().mean())


def normalize_pooled(
    patched: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor, direction: str, normalize: bool = True
) -> Normalized:
    """patched [pairs, cells] metrics; clean and corrupted [pairs] metrics of the unpatched runs."""
    patched = patched.double()
    clean, corrupted = clean.double(), corrupted.double()
    if not normalize:
        return Normalized(patched, False)
    gap = pooled_gap(clean, corrupted)
    if abs(gap) < FLAT_GAP:
        which = "" if patched.shape[0] == 1 else " (means over the pairs)"
        return Normalized(
            patched,
            False,
            f"clean and corrupted metrics are equal{which}, so the grid cannot be normalized: raw metric shown",
        )
    if direction == "denoise":
        return Normalized((patched - corrupted[:, None]) / gap, True)
    return Normalized((clean[:, None] - patched) / gap, True)


def pooled_note(n_pairs: int) -> str:
    """How a dataset's normalized value was computed (empty for one pair)."""
    if n_pairs <= 1:
        return ""
    return (
        f" (over {n_pairs} pairs, pooled: the mean change over the pairs divided by mean clean - mean corrupted; "
        "the spread lists each pair's change in the same units)"
    )


def patching_meaning(
    direction: str,
    normalized: bool,
    metric: str,
    n_pairs: int = 1,
    *,
    what: str = "activation",
    estimated: bool = False,
) -> str:
    """The one-line meaning of a patching value: sign, what 0 and 1 are, and how a dataset is pooled."""
    prefix = "estimated " if estimated else ""
    if not normalized:
        receiving, source = ("corrupted", "clean") if direction == "denoise" else ("clean", "corrupted")
        over = f" (mean over {n_pairs} pairs)" if n_pairs > 1 else ""
        return (
            f"{prefix}metric ({metric}) of the {receiving} run with that {source} {what} patched in{over}; "
            "compare with clean_metric and corrupted_metric"
        )
    if direction == "denoise":
        return (
            f"{prefix}(patched - corrupted) / (clean - corrupted): 1 = this clean {what} alone restores the clean "
            f"behaviour in the corrupted run, 0 = no effect, negative = pushes further toward the corrupted answer"
            f"{pooled_note(n_pairs)}"
        )
    return (
        f"{prefix}(clean - patched) / (clean - corrupted): 1 = this corrupted {what} alone fully breaks the clean "
        f"behaviour in the clean run, 0 = no effect, negative = strengthens the clean answer{pooled_note(n_pairs)}"
    )


def shape_grid(flat: list[Any], n_layers: int, n_heads: int | None, n_pos: int | None) -> list[Any]:
    """A flat layer-major list of cells as nested lists: [layer][head][position], [layer][head] or
    [layer][position]."""
    if n_heads is not None and n_pos is not None:
        return [
            [flat[(i * n_heads + h) * n_pos : (i * n_heads + h + 1) * n_pos] for h in range(n_heads)]
            for i in range(n_layers)
        ]
    width = n_heads if n_heads is not None else n_pos or 1
    return [flat[i * width : (i + 1) * width] for i in range(n_layers)]
