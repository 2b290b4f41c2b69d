"""The behaviour metrics tools measure: logit difference, probability or log-probability of an answer.
Answers are resolved (single-token check with a fix hint) once, here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lens_mcp.errors import LensError
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.tokens import single_token_id, token_string

MetricName = Literal["logit_diff", "prob", "logprob"]
METRICS: tuple[str, ...] = ("logit_diff", "prob", "logprob")


@dataclass(frozen=True)
class AnswerMetric:
    """metric(logits[..., d_vocab]) -> tensor[...]. logit_diff without a wrong answer is logit(answer)."""

    name: MetricName
    answer_id: int
    wrong_id: int | None
    answer: str
    wrong_answer: str | None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.name == "logit_diff":
            value = logits[..., self.answer_id]
            return value - logits[..., self.wrong_id] if self.wrong_id is not None else value
        log_probs = logits.log_softmax(dim=-1)[..., self.answer_id]
        return log_probs.exp() if self.name == "prob" else log_probs

    @property
    def description(self) -> str:
        if self.name == "logit_diff":
            return (
                f"logit({self.answer!r}) - logit({self.wrong_answer!r})"
                if self.wrong_id is not None
                else f"logit({self.answer!r})"
            )
        return f"{'probability' if self.name == 'prob' else 'log-probability'} of {self.answer!r}"


def resolve_metric(
    tc: ToolContext,
    answer: str,
    wrong_answer: str | None = None,
    metric: str = "logit_diff",
    require_wrong: bool = False,
) -> AnswerMetric:
    if metric not in METRICS:
        raise LensError(f"metric={metric!r} is not one of {', '.join(METRICS)}.")
    answer_id = single_token_id(tc, answer, "answer")
    wrong_id = None
    if wrong_answer is not None:
        wrong_id = single_token_id(tc, wrong_answer, "wrong_answer")
        if wrong_id == answer_id:
            raise LensError(
                f"wrong_answer is the same token as answer ({token_string(tc, answer_id)!r}); "
                "pass a different competing answer."
            )
    elif require_wrong and metric == "logit_diff":
        raise LensError(
            "metric='logit_diff' needs wrong_answer (the competing token, e.g. ' Rome'); "
            "or use metric='prob' / 'logprob'."
        )
    return AnswerMetric(metric, answer_id, wrong_id, answer, wrong_answer)  # type: ignore[arg-type]
