"""Result of path_patch."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from lens_mcp.schemas.common import Cost, PairMetrics, Result, Rounded, round_sig
from lens_mcp.schemas.figures import Heatmap


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


class PathSpread(BaseModel):
    """How much each cell varies over the pairs of a dataset (same shape as the grid; null where it is)."""

    n_pairs: int = Field(description="How many pairs the mean is over")
    std: NullableGrid = Field(description="Population standard deviation of each cell over pairs")
    min: NullableGrid = Field(description="Smallest value of each cell over pairs")
    max: NullableGrid = Field(description="Largest value of each cell over pairs")


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
    clean_tokens: list[str] = Field(description="The clean prompt's tokens (BOS is position 0; pair 0's with pairs)")
    corrupted_tokens: list[str] = Field(description="The corrupted prompt's tokens (pair 0's with pairs)")
    clean_metric: Rounded | None = Field(default=None, description="Metric on the clean prompt (mean over pairs)")
    corrupted_metric: Rounded | None = Field(
        default=None, description="Metric on the corrupted prompt (mean over pairs)"
    )
    positions: list[int] | None = Field(
        default=None, description="Positions whose sender write was patched (null: all)"
    )
    axes: list[str] = Field(
        default_factory=list,
        description="Grid axes, outermost first: ['sender_layer', 'sender_head'] for a fixed receiver set, "
        "['receiver_layer', 'receiver_head'] for one sender into 'all_heads', with a leading 'sender' axis for "
        "several",
    )
    senders: list[list[int]] | None = Field(default=None, description="Sender of each entry of a leading 'sender' axis")
    layers: list[int] = Field(
        default_factory=list, description="Layer of each grid row (sender or receiver layer, as `axes` says)"
    )
    heads: list[int] = Field(default_factory=list, description="Head of each grid column")
    grid: NullableGrid | None = Field(
        default=None,
        description="Values indexed as `axes` says (4 significant digits; the mean over pairs); null: not asked, "
        "or no path (the receiver does not come after the sender)",
    )
    spread: PathSpread | None = Field(default=None, description="With pairs: each cell's spread over the pairs")
    pairs: list[PairMetrics] | None = Field(
        default=None, description="With pairs: each pair's clean and corrupted metric"
    )
    top_paths: list[PathEdge] = Field(default_factory=list, description="Paths with the largest |value|, largest first")
    n_paths: int = Field(description="Paths (sender x receiver rows) per pair")
    forward_passes: int = Field(
        default=0,
        description="Batched passes run, the clean and corrupted runs included (TransformerLens's "
        "get_act_patch_direct_path runs one full pass per receiver)",
    )
    method: str = Field(
        description="driven: rows start at the receiver's layer and reuse the corrupted run; hooked: full "
        "forward passes with hooks; readout: logits receivers, computed from the final residual stream alone; "
        "dry_run: nothing computed"
    )
    seconds: Rounded
    cost: Cost | None = Field(default=None, description="The estimate made before computing")
    dry_run: bool = Field(default=False, description="True: only `cost` is filled in")
    notes: list[str] = Field(default_factory=list)

    def heatmaps(self) -> list[Heatmap]:
        """The grid as one heatmap: sender layer x head (fixed receivers), receiver layer x head (one sender), or
        (sender, receiver layer) x receiver head (several senders, one row per pair, sender-major)."""
        if self.dry_run or not self.grid or not self.layers:
            return []
        metric = self.metric.removesuffix(" at the last position")
        units = "fraction of clean - corrupted restored" if self.normalized else metric
        into = self.receivers + (f" ({self.receiver_input} input)" if self.receiver_input else "")
        title = f"path_patch into {into}: {metric}{' (normalized)' if self.normalized else ''}"
        grouped = [note for note in self.notes if note.startswith("grouped-query attention")]
        receiver = "receiver key/value head" if grouped else "receiver head"
        common = {
            "name": "grid",
            "title": title,
            "units": units,
            "signed": self.normalized or metric.startswith("logit"),
            "columns": [str(head) for head in self.heads],
        }
        if self.axes == ["sender_layer", "sender_head"]:
            return [
                Heatmap(
                    values=[list(row) for row in self.grid],  # type: ignore[arg-type]
                    rows=[str(layer) for layer in self.layers],
                    row_axis="sender layer",
                    column_axis="sender head",
                    notes=["hatched: not a sender asked for"],
                    **common,
                )
            ]
        notes = ["hatched: no path (the receiver is not after the sender)", *grouped]
        if self.axes == ["receiver_layer", "receiver_head"]:
            sender = f" (from L{self.top_paths[0].sender[0]}H{self.top_paths[0].sender[1]})" if self.top_paths else ""
            return [
                Heatmap(
                    values=[list(row) for row in self.grid],  # type: ignore[arg-type]
                    rows=[str(layer) for layer in self.layers],
                    row_axis=f"receiver layer{sender}",
                    column_axis=receiver,
                    notes=notes,
                    **common,
                )
            ]
        senders = self.senders or []
        return [
            Heatmap(
                values=[list(row) for block in self.grid for row in block],  # type: ignore[union-attr,arg-type]
                rows=[f"L{s[0]}H{s[1]} > L{layer}" for s in senders for layer in self.layers],
                row_axis="sender > receiver layer",
                column_axis=receiver,
                notes=notes,
                **common,
            )
        ]
