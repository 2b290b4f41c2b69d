"""Result of path_patch."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from lens_mcp.schemas.common import Result, Rounded, round_sig


def _round_or_null(values: object) -> object:
    """round_sig over nested lists, NaN (no path) becoming null."""
    if isinstance(values, (list, tuple)):
        return [_round_or_null(v) for v in values]
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return None
    return round_sig(values)  # type: ignore[arg-type]


NullableGrid = Annotated[list[list[float | None]] | list[list[list[float | None]]], AfterValidator(_round_or_null)]
"""A 2-D or 3-D grid of rounded floats with nulls where a cell has no value."""


class PathEdge(BaseModel):
    sender: tuple[int, int] = Field(description="Sender head as [layer, head]")
    receiver: str = Field(
        description="What the path enters: 'L9H6.q' (head 6 of layer 9, its query input; a key/value head for "
        "k/v under grouped-query attention), 'logits', or 'resid_pre[L]'; several are patched together"
    )
    value: Rounded = Field(description="The path's value, as in the grid")


class PathPatchResult(Result):
    receivers: str = Field(description="The receivers: 'all_heads', or the fixed receiver set")
    receiver_input: str | None = Field(
        description="The head input the paths enter (q, k or v); null for logits / resid receivers"
    )
    metric: str = Field(description="What the metric measures, at the last position")
    normalized: bool = Field(
        description="True: values = (patched - corrupted) / (clean - corrupted); false: the raw patched metric"
    )
    meaning: str = Field(description="What one grid cell means")
    clean_tokens: list[str] = Field(description="The clean prompt's tokens (BOS is position 0)")
    corrupted_tokens: list[str] = Field(description="The corrupted prompt's tokens")
    clean_metric: Rounded = Field(description="Metric on the clean prompt")
    corrupted_metric: Rounded = Field(description="Metric on the corrupted prompt")
    positions: list[int] | None = Field(description="Positions whose sender write was patched (null: all)")
    axes: list[str] = Field(
        description="Grid axes, outermost first: ['sender_layer', 'sender_head'] for a fixed receiver set, "
        "['receiver_layer', 'receiver_head'] for one sender into 'all_heads', with a leading 'sender' axis for "
        "several"
    )
    senders: list[list[int]] | None = Field(None, description="Sender of each entry of a leading 'sender' axis")
    layers: list[int] = Field(description="Layer of each grid row (sender or receiver layer, as `axes` says)")
    heads: list[int] = Field(description="Head of each grid column")
    grid: NullableGrid = Field(
        description="Values indexed as `axes` says (4 significant digits); null: not asked, or no path "
        "(the receiver does not come after the sender)"
    )
    top_paths: list[PathEdge] = Field(description="Paths with the largest |value|, largest first")
    n_paths: int = Field(description="Paths computed (sender x receiver rows)")
    forward_passes: int = Field(
        description="Batched passes run, the clean and corrupted runs included (TransformerLens's "
        "get_act_patch_direct_path runs one full pass per receiver)"
    )
    method: str = Field(
        description="driven: rows start at the receiver's layer and reuse the corrupted run; hooked: full "
        "forward passes with hooks; readout: logits receivers, computed from the final residual stream alone"
    )
    seconds: Rounded
    notes: list[str] = Field(default_factory=list)
