"""Results of patch_sweep and ablate_heads."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from lens_mcp.schemas.common import (
    Cost,
    Grid,
    Grid3,
    GridSpread,
    PairMetrics,
    Result,
    Rounded,
    SparseGrid,
    grid_axis_values,
    round_nested,
    warnings_field,
)
from lens_mcp.schemas.figures import Heatmap, position_labels

NullableGrid = Annotated[list[list[float | None]], AfterValidator(round_nested)]
"""A 2-D grid of rounded floats; null where a cell was skipped."""
NullableGrid3 = Annotated[list[list[list[float | None]]], AfterValidator(round_nested)]

Component = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos"]
"""What a patch writes: outputs (the residual stream, sublayer outputs, head outputs)."""
SweepComponent = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos", "q", "k", "v", "pattern"
]
"""patch_sweep's components: the outputs, plus head inputs (q, k, v) and attention patterns."""
PatchMethod = Literal["driven", "driven-full", "hooked"]
AblationMode = Literal["zero", "mean", "resample", "corrupted_mean"]


class PatchCell(BaseModel):
    layer: int
    position: int | None = Field(None, description="Patched position (null when every position was patched)")
    head: int | None = Field(None, description="Patched head (heads / heads_by_pos)")
    clean_token: str | None = Field(None, description="The clean prompt's token at that position")
    corrupted_token: str | None = Field(None, description="The corrupted prompt's token at that position")
    value: Rounded = Field(description="The cell's value, as in the grid")


class PatchPairMetrics(PairMetrics):
    clean_tokens: list[str] = Field(description="This pair's clean prompt tokens (BOS is position 0)")
    corrupted_tokens: list[str] = Field(description="This pair's corrupted prompt tokens")


class SweepSpread(BaseModel):
    """How much each cell varies over the pairs (same layout as the grid; null where the grid is null)."""

    n_pairs: int
    std: NullableGrid | NullableGrid3 = Field(description="Population standard deviation over pairs")
    min: NullableGrid | NullableGrid3
    max: NullableGrid | NullableGrid3


class PatchSweepResult(Result):
    component: SweepComponent
    direction: Literal["denoise", "noise"] = Field(
        description="denoise: clean activations patched into the corrupted run; noise: corrupted into the clean run"
    )
    metric: str = Field(description="What the metric measures, at the last position")
    normalized: bool = Field(description="True: the grid is normalized as `meaning` says; false: the raw metric")
    meaning: str = Field(description="What a grid value means: sign, and what 1 is")
    clean_tokens: list[str] | None = Field(
        default=None, description="The clean prompt's tokens (BOS is position 0); with pairs, in `pairs`"
    )
    corrupted_tokens: list[str] | None = Field(default=None, description="The corrupted prompt's tokens")
    clean_metric: Rounded | None = Field(
        default=None, description="Metric on the clean prompt (with pairs: mean over pairs)"
    )
    corrupted_metric: Rounded | None = Field(
        default=None, description="Metric on the corrupted prompt (with pairs: mean over pairs)"
    )
    axes: list[str] = Field(
        default_factory=list,
        description="Grid axes, outermost first, e.g. ['layer', 'position']; 'kv_head' = key/value head",
    )
    layers: list[int] = Field(default_factory=list, description="Layer of each grid row")
    positions: list[int] | None = Field(
        default=None, description="Position of each position-axis entry (as given, when pairs differ in length)"
    )
    heads: list[int] | None = Field(default=None, description="Head (or key/value head) of each head-axis entry")
    grid: NullableGrid | NullableGrid3 | None = Field(
        default_factory=list,
        description="Values, indexed as `axes` says (4 significant digits; with pairs, the mean over pairs); "
        "null = skipped (identical activations). Null as a whole when the grid is given as `sparse` (mostly "
        "empty) or only summarized (`layer_max`, too large for the response cap)",
    )
    sparse: SparseGrid | None = Field(
        default=None, description="A mostly null or zero grid: only the cells that hold a value (with their spread)"
    )
    layer_max: list[Rounded | None] | None = Field(
        default=None,
        description="When the grid was too large to return: the largest |value| in each layer (see top_cells)",
    )
    spread: SweepSpread | None = Field(default=None, description="With pairs: each cell's spread over pairs")
    pairs: list[PatchPairMetrics] | None = Field(default=None, description="With pairs: each pair's metrics and tokens")
    top_cells: list[PatchCell] = Field(
        default_factory=list, description="Cells with the largest |value|, largest first"
    )
    n_cells: int = Field(description="Cells per pair")
    forward_passes: int = Field(
        default=0,
        description="Batched forward passes run, the clean and corrupted runs included "
        "(TransformerLens's patching functions run one per cell)",
    )
    skipped_cells: int = Field(
        default=0,
        description="Cells whose clean and corrupted activations are identical (null in the grid; nothing to run)",
    )
    method: PatchMethod | None = Field(
        default=None,
        description="driven: patched rows start at the patched layer and reuse the corrupted run for unchanged "
        "positions; driven-full: start at the patched layer but recompute every position (the model's blocks "
        "take an argument that cannot be cut to a suffix); hooked: full forward passes with hooks; null: dry run",
    )
    seconds: Rounded = 0.0
    cost: Cost | None = Field(
        default=None, description="The estimate made before computing (always given with dry_run)"
    )
    dry_run: bool = Field(default=False, description="True: nothing was computed; only `cost` is filled in")
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = warnings_field()

    def heatmaps(self) -> list[Heatmap]:
        restored = "fraction of clean restored" if self.direction == "denoise" else "fraction of clean broken"
        units = restored if self.normalized else self.metric.removesuffix(" at the last position")
        signed = self.normalized or self.metric.startswith("logit(")
        title = f"patch_sweep {self.component}: {self.metric}{' (normalized)' if self.normalized else ''}"
        value_range = (0.0, 1.0) if not signed and self.metric.startswith("probability") else None
        notes = ["hatched: null (identical activations) or exactly 0"] if self.sparse is not None else None
        return sweep_heatmap(self, title=title, units=units, signed=signed, value_range=value_range, notes=notes)

    def axis_values(self) -> list[list[int]]:
        """The values along each of `axes` (layers, then heads, then positions)."""
        return grid_axis_values(self.axes, self.layers, self.heads, self.positions)


def shape_nested(flat: list[float | None], sizes: list[int]) -> list[Any]:
    """A row-major flat list as nested lists of the given sizes."""
    if len(sizes) <= 1:
        return list(flat)
    step = len(flat) // sizes[0]
    return [shape_nested(flat[i * step : (i + 1) * step], sizes[1:]) for i in range(sizes[0])]


def sweep_heatmap(
    result: PatchSweepResult | AttributionPatchResult,
    *,
    title: str,
    units: str,
    signed: bool,
    value_range: tuple[float, float] | None = None,
    notes: list[str] | None = None,
) -> list[Heatmap]:
    """A sweep's grid as one heatmap: layer x position, layer x head, or (layer, head) x position for a 3-D grid
    (one row per head, layer-major, as the grid nests); key/value heads are labelled KV. A sparse grid is drawn
    with the cells it does not list empty (hatched). Nothing for an empty grid (a dry run) or one only summarized."""
    if result.grid is None and result.sparse is not None:
        axis_values = result.axis_values()
        nested = shape_nested(result.sparse.dense(axis_values), [len(values) for values in axis_values])
        result = result.model_copy(update={"grid": nested})
    if not result.grid or not result.layers:
        return []
    head_axis = result.axes[1] if len(result.axes) > 1 and result.axes[1] in ("head", "kv_head") else None
    kv = head_axis == "kv_head"
    head_word, head_letter = ("key/value head", "KV") if kv else ("head", "H")
    position_axis = "position" + (" (clean token)" if result.clean_tokens else "")
    common = {"units": units, "signed": signed, "value_range": value_range, "notes": notes or [], "title": title}
    if head_axis is not None and result.axes[-1] == "position":
        heads, positions = result.heads or [], result.positions or []
        values = [list(row) for layer_rows in result.grid for row in layer_rows]  # type: ignore[union-attr,arg-type]
        return [
            Heatmap(
                name="grid",
                values=values,
                rows=[f"L{layer}{head_letter}{head}" for layer in result.layers for head in heads],
                columns=position_labels(positions, result.clean_tokens),
                row_axis=f"layer, {head_word}",
                column_axis=position_axis,
                **common,
            )
        ]
    if head_axis is not None:
        columns, column_axis = [str(head) for head in result.heads or []], head_word
    elif result.axes[-1] == "position":
        columns, column_axis = position_labels(result.positions or [], result.clean_tokens), position_axis
    else:  # one value per layer
        columns, column_axis = ["all"], "positions"
    return [
        Heatmap(
            name="grid",
            values=[list(row) for row in result.grid],  # type: ignore[arg-type]
            rows=[str(layer) for layer in result.layers],
            columns=columns,
            row_axis="layer",
            column_axis=column_axis,
            **common,
        )
    ]


class HeadEffect(BaseModel):
    layer: int
    head: int
    metric: Rounded = Field(description="Metric with only this head ablated (with pairs: mean over pairs)")
    effect: Rounded = Field(
        description="metric - metric_before (negative: the head supported the answer; for the loss, positive: "
        "it helped)"
    )
    effect_std: Rounded | None = Field(None, description="With pairs: standard deviation of the effect over pairs")


class EffectSpread(BaseModel):
    std: Rounded = Field(description="Population standard deviation of the effect over pairs")
    min: Rounded
    max: Rounded


class AblationPairResult(PairMetrics):
    metric_after: Rounded = Field(description="This pair's metric with all listed heads ablated")
    effect: Rounded
    tokens: list[str] = Field(description="This pair's prompt tokens (BOS is position 0)")


class AblateHeadsResult(Result):
    tokens: list[str] | None = Field(
        default=None, description="The prompt's tokens (BOS is position 0); with pairs, in pairs"
    )
    mode: AblationMode
    metric: str = Field(description="What the metric measures")
    meaning: str = Field(default="", description="What the effect means: sign")
    heads: list[tuple[int, int]] = Field(description="Ablated heads as [layer, head]")
    kept: list[tuple[int, int]] | None = Field(
        default=None, description="keep=[...]: the heads kept; every other head (listed in heads) was ablated"
    )
    metric_before: Rounded | None = Field(default=None, description="Metric without ablation (with pairs: mean)")
    metric_after: Rounded | None = Field(
        default=None, description="Metric with all listed heads ablated together (with pairs: mean)"
    )
    effect: Rounded | None = Field(default=None, description="metric_after - metric_before (with pairs: mean)")
    effect_spread: EffectSpread | None = Field(default=None, description="With pairs: the effect's spread over pairs")
    prob_before: Rounded | None = Field(
        default=None, description="Probability of the answer before ablation (answer metrics only)"
    )
    prob_after: Rounded | None = Field(
        default=None, description="Probability of the answer with all listed heads ablated"
    )
    individual: list[HeadEffect] | None = Field(
        default=None,
        description="Each head ablated alone (individually=true), the heads the behaviour needs most first",
    )
    pairs: list[AblationPairResult] | None = Field(
        default=None,
        description="With pairs: per pair, the metric on its prompt (clean_metric), on its corrupted prompt, and "
        "after ablation",
    )
    cost: Cost | None = Field(default=None, description="The estimate made before computing")
    dry_run: bool = Field(default=False, description="True: nothing was computed; only `cost` is filled in")
    warnings: list[str] = warnings_field()

    def explain(self) -> str:
        return (
            f"effect = metric_after - metric_before, in the units of {self.metric}; negative: the ablated heads "
            "supported the answer, 0: no effect"
        )


# ---- attribution_patch ----------------------------------------------------------------------------------------


class VerifiedCell(BaseModel):
    layer: int
    head: int | None = Field(None, description="Head (heads / heads_by_pos)")
    position: int | None = Field(None, description="Position (null when every position was patched)")
    clean_token: str | None = Field(None, description="The clean prompt's token at that position")
    corrupted_token: str | None = Field(None, description="The corrupted prompt's token at that position")
    estimate: Rounded = Field(description="Attribution estimate, in the grid's units")
    exact: Rounded = Field(description="Exact activation patching (as patch_sweep computes it), same units")
    problem: Literal["sign", "magnitude"] | None = Field(
        None,
        description="sign: estimate and exact differ in sign; magnitude: same sign but off by more than half "
        "of the exact value; null: agree (differences under 1% of the clean-corrupted gap are ignored)",
    )


class RankAgreement(BaseModel):
    n_verified: int = Field(description="Cells checked exactly")
    spearman: Rounded | None = Field(
        None, description="Spearman rank correlation of estimate and exact over the verified cells (null if < 3)"
    )
    top_k: int = Field(description="k of top_k_overlap: half the verified cells, at least 1")
    top_k_overlap: int = Field(
        description="Cells among the k largest |estimate| that are also among the k largest |exact|"
    )
    sign_wrong: int = Field(description="Verified cells whose estimate has the wrong sign")
    magnitude_wrong: int = Field(description="Verified cells with the right sign but off by more than half")


class AttributionPatchResult(Result):
    component: str
    direction: Literal["denoise", "noise"] = Field(
        description="denoise: clean activation into the corrupted run; noise: corrupted activation into the clean run"
    )
    meaning: str = Field(description="What a grid value means: sign, units, what 1 is")
    metric: str = Field(description="What the metric measures, at the last position")
    normalized: bool = Field(description="True: grid in units of the clean - corrupted gap (as patch_sweep)")
    dry_run: bool = Field(False, description="True: only the cost estimate; nothing was computed")
    cost: Cost = Field(description="The estimate made before computing: cells, passes, seconds, result size")
    clean_tokens: list[str] = Field(description="The clean prompt's tokens (BOS is position 0); pairs: pair 0's")
    corrupted_tokens: list[str] = Field(description="The corrupted prompt's tokens; pairs: pair 0's")
    clean_metric: Rounded | None = Field(None, description="Metric on the clean prompt (pairs: mean over pairs)")
    corrupted_metric: Rounded | None = Field(None, description="Metric on the corrupted prompt (pairs: mean)")
    pair_metrics: list[PairMetrics] | None = Field(None, description="Each pair's clean and corrupted metric (pairs)")
    axes: list[str] = Field(description="Grid axes, outermost first, e.g. ['layer', 'head', 'position']")
    layers: list[int] = Field(description="Layer of each grid row")
    positions: list[int] | None = Field(
        None, description="Position of each position-axis entry (negative: counted from the end of each pair)"
    )
    heads: list[int] | None = Field(None, description="Head of each head-axis entry")
    grid: Grid | Grid3 | None = Field(
        default_factory=list,
        description="Estimated effect per cell, indexed as `axes` says (pairs: mean over pairs). Null as a whole "
        "when the grid is given as `sparse` (mostly zero) or only summarized (`layer_max`, too large for the "
        "response cap)",
    )
    sparse: SparseGrid | None = Field(
        default=None,
        description="A mostly zero grid: only the cells that hold a value (with their spread over pairs); the "
        "cells not listed are exactly 0",
    )
    layer_max: list[Rounded | None] | None = Field(
        default=None,
        description="When the grid was too large to return: the largest |value| in each layer (see top_cells)",
    )
    spread: GridSpread | None = Field(None, description="Spread of each cell's estimate over pairs (pairs only)")
    top_cells: list[PatchCell] = Field(
        default_factory=list, description="Cells with the largest |estimate|, largest first"
    )
    verified: list[VerifiedCell] = Field(
        default_factory=list,
        description="The verify_top cells with the largest |estimate|, patched exactly; largest |estimate| first",
    )
    agreement: RankAgreement | None = Field(None, description="How well estimate and exact agree (null: none verified)")
    n_cells: int
    forward_passes: int = Field(0, description="Batched passes run: gradient passes plus exact verification passes")
    seconds: Rounded
    notes: list[str] = Field(default_factory=list)

    def axis_values(self) -> list[list[int]]:
        """The values along each of `axes` (layers, then heads, then positions)."""
        return grid_axis_values(self.axes, self.layers, self.heads, self.positions)

    def heatmaps(self) -> list[Heatmap]:
        if self.dry_run or not (self.grid or self.sparse):
            return []
        metric = self.metric.removesuffix(" at the last position")
        if self.normalized:
            units = "fraction of clean " + ("restored" if self.direction == "denoise" else "broken") + " (estimate)"
        else:
            units = f"{metric} (estimate)"
        notes = ["gradient (linear) estimate; `verified` has exact values of top cells"]
        if self.sparse is not None:
            notes.append("hatched: exactly 0 (the clean and corrupted activations are equal there)")
        if self.agreement is not None and self.agreement.sign_wrong:
            notes.append(
                f"{self.agreement.sign_wrong} of {self.agreement.n_verified} verified cells: estimate has the wrong sign"
            )
        if self.spread is not None:
            notes.append(f"mean over {self.spread.n_pairs} pairs; tokens are pair 0's")
        if any(position < 0 for position in self.positions or []):
            notes.append("negative positions: counted from the end of each pair")
        return sweep_heatmap(
            self,
            title=f"attribution_patch {self.component} ({self.direction}): {metric}"
            f"{' (normalized)' if self.normalized else ''}",
            units=units,
            signed=self.normalized or metric.startswith("logit"),
            notes=notes,
        )
