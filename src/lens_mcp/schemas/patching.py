"""Results of patch_sweep and ablate_heads."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lens_mcp.schemas.common import Grid, Grid3, Result, Rounded, warnings_field
from lens_mcp.schemas.figures import Heatmap, position_labels


class PatchCell(BaseModel):
    layer: int
    position: int | None = Field(None, description="Patched position (null when every position was patched)")
    head: int | None = Field(None, description="Patched head (heads / heads_by_pos)")
    clean_token: str | None = Field(None, description="The clean prompt's token at that position")
    corrupted_token: str | None = Field(None, description="The corrupted prompt's token at that position")
    value: Rounded = Field(description="The cell's value, as in the grid")


class PatchSweepResult(Result):
    component: str
    metric: str = Field(description="What the metric measures, at the last position")
    normalized: bool = Field(
        description="True: grid = (patched - corrupted) / (clean - corrupted); false: the raw patched metric"
    )
    clean_tokens: list[str] = Field(description="The clean prompt's tokens (BOS is position 0)")
    corrupted_tokens: list[str] = Field(description="The corrupted prompt's tokens")
    clean_metric: Rounded = Field(description="Metric on the clean prompt")
    corrupted_metric: Rounded = Field(description="Metric on the corrupted prompt")
    axes: list[str] = Field(description="Grid axes, outermost first, e.g. ['layer', 'position']")
    layers: list[int] = Field(description="Layer of each grid row")
    positions: list[int] | None = Field(None, description="Position of each position-axis entry")
    heads: list[int] | None = Field(None, description="Head of each head-axis entry")
    grid: Grid | Grid3 = Field(description="Values, indexed as `axes` says (4 significant digits)")
    top_cells: list[PatchCell] = Field(description="Cells with the largest |value|, largest first")
    n_cells: int
    forward_passes: int = Field(
        description="Batched forward passes run, the clean and corrupted runs included "
        "(TransformerLens's patching functions run one per cell)"
    )
    skipped_cells: int = Field(
        description="Cells whose clean and corrupted activations are identical "
        "(they equal the corrupted metric; nothing to run)"
    )
    method: str = Field(
        description="driven: patched rows start at the patched layer and reuse the corrupted "
        "run for unchanged positions; hooked: full forward passes with hooks"
    )
    seconds: Rounded
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = warnings_field()

    def explain(self) -> str:
        if self.normalized:
            return (
                "grid: (patched - corrupted) / (clean - corrupted) of the metric; 1 = restoring that activation "
                "fully restores the clean behaviour, 0 = no effect, negative = pushes further toward the corrupted answer"
            )
        return f"grid: the raw metric ({self.metric}) with that one activation patched in; compare to clean_metric and corrupted_metric"

    def heatmaps(self) -> list[Heatmap]:
        units = "fraction of clean restored" if self.normalized else self.metric.removesuffix(" at the last position")
        signed = self.normalized or self.metric.startswith("logit(")
        title = f"patch_sweep {self.component}: {self.metric}{' (normalized)' if self.normalized else ''}"
        value_range = (0.0, 1.0) if not signed and self.metric.startswith("probability") else None
        common = {"units": units, "signed": signed, "value_range": value_range}
        layers = [str(layer) for layer in self.layers]
        if self.axes == ["layer", "head", "position"]:
            assert self.heads is not None and self.positions is not None
            values = [list(row) for layer_rows in self.grid for row in layer_rows]  # type: ignore[union-attr,arg-type]
            rows = [f"L{layer}H{head}" for layer in self.layers for head in self.heads]
            return [
                Heatmap(
                    name="grid",
                    title=title,
                    values=values,  # type: ignore[arg-type]
                    rows=rows,
                    columns=position_labels(self.positions, self.clean_tokens),
                    row_axis="layer, head",
                    column_axis="position (clean token)",
                    **common,  # type: ignore[arg-type]
                )
            ]
        if self.axes == ["layer", "head"]:
            columns = [str(head) for head in self.heads or []]
            column_axis = "head"
        else:
            columns = position_labels(self.positions or [], self.clean_tokens)
            column_axis = "position (clean token)"
        return [
            Heatmap(
                name="grid",
                title=title,
                values=[list(row) for row in self.grid],  # type: ignore[arg-type]
                rows=layers,
                columns=columns,
                row_axis="layer",
                column_axis=column_axis,
                **common,  # type: ignore[arg-type]
            )
        ]


class HeadEffect(BaseModel):
    layer: int
    head: int
    metric: Rounded = Field(description="Metric with only this head ablated")
    effect: Rounded = Field(description="metric - metric_before (negative: the head supported the answer)")


class AblateHeadsResult(Result):
    tokens: list[str] = Field(description="The prompt's tokens (BOS is position 0)")
    mode: str
    metric: str = Field(description="What the metric measures, at the last position")
    heads: list[tuple[int, int]] = Field(description="Ablated heads as [layer, head]")
    metric_before: Rounded
    metric_after: Rounded = Field(description="Metric with all listed heads ablated together")
    effect: Rounded = Field(description="metric_after - metric_before")
    prob_before: Rounded = Field(description="Probability of the answer before ablation")
    prob_after: Rounded = Field(description="Probability of the answer with all listed heads ablated")
    individual: list[HeadEffect] | None = Field(
        None, description="Each head ablated alone (individually=true), most negative effect first"
    )
    warnings: list[str] = warnings_field()

    def explain(self) -> str:
        return (
            f"effect = metric_after - metric_before, in the units of {self.metric}; negative: the ablated heads "
            "supported the answer, 0: no effect"
        )
