"""Schema of induction_scores."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lens_mcp.schemas.common import Grid, HeadScore, Result, Rounded
from lens_mcp.schemas.figures import Heatmap


class ScoredPositions(BaseModel):
    """How many (sequence, query position) pairs each score averages over."""

    induction: int = Field(description="Queries whose token occurred earlier with a later token after it")
    duplicate_token: int = Field(description="Queries whose token occurred earlier")
    previous_token: int = Field(description="Queries at positions 1.. (BOS is never a query)")
    first_seen: int = Field(description="Tokens in loss_first_repeat")
    copyable: int = Field(description="Tokens in loss_second_repeat")


class AblatedLosses(BaseModel):
    """The two losses with some heads zero-ablated (their output z set to 0 at every position)."""

    heads: list[tuple[int, int]] = Field(description="The ablated heads as [layer, head]")
    loss_first_repeat: Rounded = Field(description="loss_first_repeat (nats) with those heads ablated")
    loss_second_repeat: Rounded | None = Field(
        None,
        description="loss_second_repeat (nats) with those heads ablated: far above the unablated value = "
        "the heads do the copying",
    )


class InductionScores(Result):
    mode: Literal["random", "prompt"] = Field(
        description="random: n_seqs sequences of BOS + seq_len random tokens repeated twice; prompt: your text"
    )
    n_seqs: int = Field(description="Sequences in the batch (1 with a prompt)")
    n_tokens: int = Field(description="Tokens per sequence, BOS included (2*seq_len+1 in random mode)")
    seq_len: int | None = Field(None, description="Random tokens per repeat (random mode)")
    seed: int | None = Field(None, description="Seed of the random tokens (random mode)")
    token_pool: str | None = Field(
        None, description="Which token ids the random tokens were drawn from (special/added tokens never)"
    )
    induction: Grid = Field(
        description="[layer][head] mean attention from a repeated token to the token right after its earlier "
        "occurrence(s)"
    )
    previous_token: Grid = Field(description="[layer][head] mean attention to the position just before")
    duplicate_token: Grid = Field(
        description="[layer][head] mean attention from a repeated token to its earlier occurrence(s)"
    )
    top_induction: list[HeadScore] = Field(description="Heads with the highest induction score, best first")
    top_previous_token: list[HeadScore] = Field(description="Heads with the highest previous-token score")
    top_duplicate_token: list[HeadScore] = Field(description="Heads with the highest duplicate-token score")
    loss_first_repeat: Rounded = Field(
        description="Mean next-token loss (nats) on tokens seen for the first time in their sequence (the "
        "first repeat, in random mode)"
    )
    loss_second_repeat: Rounded | None = Field(
        None,
        description="Mean loss (nats) on tokens an induction copy predicts: the previous token occurred "
        "earlier, followed there by this token (the second repeat minus its first token, in "
        "random mode). Far below loss_first_repeat = in-context learning. Null if none.",
    )
    positions: ScoredPositions
    example_prompt: str | None = Field(
        None,
        description="Random mode: sequence 0 as text (without BOS), which tokenizes back to the same tokens; "
        "pass it to other tools. Null if it would not round-trip or is too long.",
    )
    ablated: AblatedLosses | None = Field(None, description="With ablate=[...]: the losses with those heads ablated")

    def explain(self) -> str:
        return (
            "induction/previous_token/duplicate_token[layer][head]: mean attention fraction 0..1 on the expected "
            "source (1 = all attention there, ~1/n = none special); losses in nats per token"
        )

    def heatmaps(self) -> list[Heatmap]:
        grids = {
            "induction": ("Induction score", self.induction),
            "previous_token": ("Previous-token score", self.previous_token),
            "duplicate_token": ("Duplicate-token score", self.duplicate_token),
        }
        maps = []
        for name, (title, grid) in grids.items():
            n_heads = len(grid[0]) if grid else 0
            maps.append(
                Heatmap(
                    name=name,
                    title=f"{title} per head ({self.mode} mode)",
                    values=[list(row) for row in grid],
                    rows=[str(layer) for layer in range(len(grid))],
                    columns=[str(head) for head in range(n_heads)],
                    row_axis="layer",
                    column_axis="head",
                    units="attention fraction",
                    signed=False,
                    value_range=(0.0, 1.0),
                )
            )
        return maps
