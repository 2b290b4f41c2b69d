"""Grids that fit: a mostly empty grid returned sparse (the cells that hold a value, plus the axes), and a grid
too large for the response cap replaced by its top cells and a per-layer summary instead of a refusal."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from lens_mcp.schemas.common import SparseGrid, round_sig

SPARSE_MIN_CELLS = 200
"""Grids smaller than this stay dense whatever they hold: they are cheap, and easier to read whole."""
SPARSE_EMPTY_SHARE = 0.5
"""A grid at least this share of null or zero cells is returned sparse."""
RESPONSE_MARGIN = 2_000
"""Characters kept free under the response cap for the envelope around the result."""


def empty_share(flat: Sequence[float | None]) -> float:
    return sum(v is None or v == 0 for v in flat) / max(1, len(flat))


def wants_sparse(flat: Sequence[float | None]) -> bool:
    return len(flat) >= SPARSE_MIN_CELLS and empty_share(flat) >= SPARSE_EMPTY_SHARE


def cell_coords(axis_values: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The coordinates of every cell of a grid whose axes hold `axis_values`, in the grid's (row-major) order."""
    return list(itertools.product(*axis_values))


def sparse_grid(
    axes: Sequence[str],
    axis_values: Sequence[Sequence[int]],
    flat: Sequence[float | None],
    omitted: str,
    spread: Mapping[str, Sequence[float | None]] | None = None,
) -> SparseGrid:
    """The cells of `flat` (row-major over `axis_values`) that hold a non-zero value, columnar."""
    coords = cell_coords(axis_values)
    kept = [i for i, value in enumerate(flat) if value is not None and value != 0]
    columns = [[coords[i][a] for i in kept] for a in range(len(axes))]
    extra: dict[str, Any] = {name: [values[i] for i in kept] for name, values in (spread or {}).items()}
    values = [float(flat[i] or 0.0) for i in kept]
    return SparseGrid(axes=list(axes), coords=columns, values=values, omitted=omitted, **extra)


def layer_summary(flat: Sequence[float | None], n_layers: int) -> list[float | None]:
    """The largest |value| of each layer's cells (None where a layer has none), for a grid too large to return."""
    width = len(flat) // max(1, n_layers)
    summary: list[float | None] = []
    for layer in range(n_layers):
        values = [abs(v) for v in flat[layer * width : (layer + 1) * width] if v is not None]
        summary.append(round_sig(max(values)) if values else None)
    return summary


class FittedResult(Protocol):
    """A result holding a layer-major grid that may come back dense (`grid`, with its `spread` over pairs),
    sparse (`sparse`), or only summarized (`layer_max`, beside the result's top cells)."""

    axes: list[str]
    layers: list[int]
    grid: Any
    spread: Any
    sparse: SparseGrid | None
    layer_max: list[float | None] | None
    notes: list[str]

    def axis_values(self) -> list[list[int]]: ...

    def model_dump_json(self) -> str: ...


Fitted = TypeVar("Fitted", bound=FittedResult)


def fit_grid(
    result: Fitted,
    flat: Sequence[float | None],
    spread: Mapping[str, Sequence[float | None]] | None,
    max_chars: int,
    *,
    omitted: str,
    narrow: str,
) -> Fitted:
    """The grid of `result` made to fit: sparse when mostly empty (`omitted` says what the cells not listed are);
    over `max_chars` (less RESPONSE_MARGIN) as its top cells and each layer's largest |value| (`layer_max`), with a
    note saying how to narrow the call (`narrow`). `flat` is the grid row-major over result.axis_values(), `spread`
    its per-pair std/min/max in the same order."""
    if wants_sparse(flat):
        result.sparse = sparse_grid(result.axes, result.axis_values(), flat, omitted, spread=spread)
        result.grid, result.spread = None, None
    if len(result.model_dump_json()) <= max_chars - RESPONSE_MARGIN:
        return result
    result.grid, result.spread, result.sparse = None, None, None
    result.layer_max = layer_summary(flat, len(result.layers))
    result.notes.append(
        f"the grid ({len(flat):,} cells) is over the response cap (max_response_chars={max_chars:,}): only "
        f"top_cells and each layer's largest |value| (layer_max) are returned. For the whole grid: {narrow} (e.g. "
        "the layers where layer_max is large)"
    )
    return result
