"""Conventions every result shares: floats rounded to 4 significant digits, tokens as [id, string]."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SIGNIFICANT_DIGITS = 4


def round_sig(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """Round to `digits` significant digits; NaN and inf pass through (they serialize as null)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def round_nested(values: object) -> object:
    """round_sig over nested lists (grids)."""
    if isinstance(values, (list, tuple)):
        return [round_nested(v) for v in values]
    return round_sig(values)  # type: ignore[arg-type]


Rounded = Annotated[float, AfterValidator(round_sig)]
"""A float rounded to 4 significant digits when the model is built."""

Grid = Annotated[list[list[float]], AfterValidator(round_nested)]
"""A 2-D grid (rows x columns) of rounded floats."""

Grid3 = Annotated[list[list[list[float]]], AfterValidator(round_nested)]
"""A 3-D grid of rounded floats."""

TokenPair = tuple[int, str]
"""A token as [id, string]."""


class Result(BaseModel):
    """Base of every tool result."""

    model_config = ConfigDict(extra="forbid")


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


class Cost(BaseModel):
    """What a call costs, estimated before its first forward pass."""

    cells: int = Field(description="Cells in the result")
    forward_passes: int = Field(description="Batched forward (and backward) passes the call runs")
    work_units: int = Field(description="Token-layers of work: tokens x transformer blocks, backward passes twice")
    seconds: Rounded = Field(description="Estimated seconds on this model and device, from a measured throughput")
    result_chars: int = Field(description="Estimated characters of the JSON result")
    throughput: Rounded = Field(description="Measured token-layers per second of this model on this device")
