"""Schemas of the tools that read the weights alone: composition_scores."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lens_mcp.schemas.common import Result, Rounded


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
