"""The dataset both circuit tools take: pairs (or one clean/corrupted pair), each with its metric."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lens_mcp.errors import LensError
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.metrics import AnswerMetric, resolve_metric
from lens_mcp.tools.core.pairs import PromptPair, encode_pairs, pair_label, resolve_pairs


@dataclass
class Dataset:
    tokens: list[torch.Tensor]
    """(2, n) per pair: clean, corrupted."""
    metrics: list[AnswerMetric]
    description: str

    @property
    def n_tokens(self) -> int:
        return int(self.tokens[0].shape[-1])

    @property
    def mean_tokens(self) -> int:
        return max(1, sum(int(t.shape[-1]) for t in self.tokens) // len(self.tokens))


def load_dataset(
    tc: ToolContext,
    pairs: Sequence[PromptPair | dict[str, object]] | None,
    clean_prompt: str | None,
    corrupted_prompt: str | None,
    answer: str | None,
    wrong_answer: str | None,
    metric: str,
    same_length: bool,
) -> Dataset:
    items = resolve_pairs(
        tc,
        pairs,
        clean_prompt=clean_prompt,
        corrupted_prompt=corrupted_prompt,
        answer=answer,
        wrong_answer=wrong_answer,
    )
    tokens = encode_pairs(tc, items, fixed_positions=same_length)
    metrics = []
    for index, item in enumerate(items):
        assert item.answer is not None
        try:
            metrics.append(resolve_metric(tc, item.answer, item.wrong_answer, metric))
        except LensError as exc:
            raise LensError(f"{pair_label(index, len(items))}{exc}") from None
    return Dataset(tokens, metrics, metrics[0].description if len(items) == 1 else f"{metric} (per pair's answers)")
