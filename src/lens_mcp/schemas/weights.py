"""Schemas of the tools that read the weights alone: composition_scores."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lens_mcp.schemas.common import Result, Rounded
from lens_mcp.schemas.figures import Heatmap


class CompositionPair(BaseModel):
    sender_layer: int
    sender_head: int
    receiver_layer: int
    receiver_head: int
    score: Rounded = Field(description="||W_OV(sender) W(receiver)||_F / (||W_OV|| ||W||): 0..1")
    ratio: Rounded = Field(description="score / baseline_mean: how many times a random pair's score")


class CompositionScores(Result):
    kind: Literal["q", "k", "v"]
    receiver_layers: list[int] = Field(description="The receiver layers scored (senders: every earlier layer)")
    n_pairs: int = Field(description="Head pairs scored")
    top_pairs: list[CompositionPair] = Field(description="The top_k pairs by score")
    baseline_mean: Rounded = Field(description="Mean score of random Gaussian matrices of the same shapes")
    baseline_std: Rounded = Field(description="Standard deviation of that random baseline")
    meaning: str = Field()  # required here (the base defaults it to "")

    def heatmaps(self) -> list[Heatmap]:
        """The top pairs as sender x receiver: only the listed pairs have a cell; the full grid is not returned."""
        if not self.top_pairs:
            return []
        senders = sorted({(p.sender_layer, p.sender_head) for p in self.top_pairs})
        receivers = sorted({(p.receiver_layer, p.receiver_head) for p in self.top_pairs})
        row_of = {head: i for i, head in enumerate(senders)}
        column_of = {head: i for i, head in enumerate(receivers)}
        values: list[list[float | None]] = [[None] * len(receivers) for _ in senders]
        for pair in self.top_pairs:
            values[row_of[(pair.sender_layer, pair.sender_head)]][
                column_of[(pair.receiver_layer, pair.receiver_head)]
            ] = pair.score
        lowest = min(pair.score for pair in self.top_pairs)
        highest = max(pair.score for pair in self.top_pairs)
        return [
            Heatmap(
                name="composition",
                title=f"{self.kind.upper()}-composition: the top {len(self.top_pairs)} of {self.n_pairs} head pairs",
                values=values,
                rows=[f"L{layer}H{head}" for layer, head in senders],
                columns=[f"L{layer}H{head}" for layer, head in receivers],
                row_axis="sender head (writes)",
                column_axis=f"receiver head (reads via {self.kind.upper()})",
                units="composition score (0..1)",
                signed=False,
                value_range=(0.0, max(highest, 1e-9)),
                notes=[
                    f"hatched: not a top pair (score <= {lowest:.3g}) or sender not earlier",
                    "drawn: only heads in a listed pair",
                    f"random matrices of these shapes: {self.baseline_mean:.3g} +- {self.baseline_std:.2g}",
                ],
            )
        ]
