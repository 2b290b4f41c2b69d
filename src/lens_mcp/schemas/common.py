"""Conventions every result shares: floats rounded to 4 significant digits, tokens as [id, string]."""

from __future__ import annotations

import itertools
import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SIGNIFICANT_DIGITS = 4


def round_sig(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """Round to `digits` significant digits; NaN and inf pass through (they serialize as null)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def round_nested(values: object) -> object:
    """round_sig over nested lists (grids); None (a skipped cell) stays None."""
    if isinstance(values, (list, tuple)):
        return [round_nested(v) for v in values]
    return None if values is None else round_sig(values)  # type: ignore[arg-type]


Rounded = Annotated[float, AfterValidator(round_sig)]
"""A float rounded to 4 significant digits when the model is built."""

Grid = Annotated[list[list[float]], AfterValidator(round_nested)]
"""A 2-D grid (rows x columns) of rounded floats."""

Grid3 = Annotated[list[list[list[float]]], AfterValidator(round_nested)]
"""A 3-D grid of rounded floats."""

TokenPair = tuple[int, str]
"""A token as [id, string]."""


class Result(BaseModel):
    """Base of every tool result. `meaning` comes first in the JSON: one line saying what the main number means
    (sign convention, units, what 1 means), so an agent that reads only this result does not misread it. A tool
    may pass it; otherwise the model's `explain()` fills it from the result's own fields."""

    model_config = ConfigDict(extra="forbid")

    meaning: str = Field(
        default="", description="One line: what the main number(s) of this result mean (sign, units, scale)"
    )

    def explain(self) -> str:
        """The default `meaning`, built from the result's fields; result models override it."""
        return ""

    @model_validator(mode="after")
    def _fill_meaning(self) -> Result:
        if not self.meaning:
            self.meaning = self.explain()
        return self


def warnings_field() -> list[str]:
    """`warnings: list[str] = warnings_field()` on results that take answers (see tools.core.metrics)."""
    return Field(
        default_factory=list,
        description="Things to check about the inputs, e.g. an answer that is far less likely than its "
        "leading-space variant at this position",
    )


class TopToken(BaseModel):
    token: str = Field(description="The token's string")
    id: int = Field(description="The token id")
    prob: Rounded = Field(description="Probability under the softmax at this position")


class HeadScore(BaseModel):
    layer: int
    head: int
    score: Rounded = Field(description="The value for this head (sign kept)")


class PairMetrics(BaseModel):
    """One pair of a prompt dataset: its metric on the clean and the corrupted prompt."""

    index: int = Field(description="The pair's index in pairs=[...]")
    clean_metric: Rounded = Field(description="The metric on the pair's clean prompt")
    corrupted_metric: Rounded | None = Field(default=None, description="The metric on its corrupted prompt")


class GridSpread(BaseModel):
    """How much a grid's cells vary over the pairs of a dataset (same shape as the mean grid)."""

    n_pairs: int = Field(description="How many pairs the mean is over")
    std: Grid | Grid3 = Field(description="Population standard deviation of each cell over pairs")
    min: Grid | Grid3 = Field(description="Smallest value of each cell over pairs")
    max: Grid | Grid3 = Field(description="Largest value of each cell over pairs")


class SparseGrid(BaseModel):
    """A mostly empty grid as the list of cells that hold a value, columnar: cell i sits at coords[a][i] on axis
    a (the layer, head or position itself, not an index), with values[i]."""

    axes: list[str] = Field(description="The axes, outermost first (as the result's `axes`)")
    coords: list[list[int]] = Field(description="One list per axis: each listed cell's layer / head / position")
    values: list[Rounded] = Field(description="Each listed cell's value, in the same order")
    std: list[Rounded] | None = Field(default=None, description="With pairs: each listed cell's std over the pairs")
    min: list[Rounded] | None = Field(default=None, description="With pairs: each listed cell's minimum")
    max: list[Rounded] | None = Field(default=None, description="With pairs: each listed cell's maximum")
    omitted: str = Field(description="What the cells not listed are")

    def dense(self, axis_values: list[list[int]], fill: float | None = None) -> list[float | None]:
        """The row-major flat grid over `axis_values` again, cells not listed as `fill` (None: for pictures)."""
        positions = {coords: i for i, coords in enumerate(itertools.product(*axis_values))}
        flat: list[float | None] = [fill] * len(positions)
        for i, value in enumerate(self.values):
            flat[positions[tuple(column[i] for column in self.coords)]] = value
        return flat


def grid_axis_values(
    axes: list[str], layers: list[int], heads: list[int] | None, positions: list[int] | None
) -> list[list[int]]:
    """The values along each of a grid's `axes` (layers, then heads, then positions)."""
    values = [layers]
    if heads is not None and len(axes) > 1 and axes[1] in ("head", "kv_head"):
        values.append(heads)
    if axes and axes[-1] == "position":
        values.append(positions or [])
    return values


class Cost(BaseModel):
    """What a call costs, estimated before its first forward pass."""

    cells: int = Field(description="Cells in the result")
    forward_passes: int = Field(description="Batched forward (and backward) passes the call runs")
    work_units: int = Field(description="Token-layers of work: tokens x transformer blocks, backward passes twice")
    seconds: Rounded = Field(description="Estimated seconds on this model and device, from a measured throughput")
    result_chars: int = Field(description="Estimated characters of the JSON result")
    throughput: Rounded = Field(description="Measured token-layers per second of this model on this device")
    memory_mb: Rounded = Field(
        0.0,
        description="Least memory the call needs beyond the model's weights, in MB: what it keeps across batches "
        "plus one row's activations (a call that cannot fit in the free memory is refused before it runs)",
    )
