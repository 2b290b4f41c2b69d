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


# ---- answers that probably wanted a leading space ------------------------------------------------
SPACE_VARIANT_RATIO = 10.0
"""Warn when the leading-space variant is at least this many times more likely than the answer given..."""
SPACE_VARIANT_MIN_PROB = 1e-3
"""...and itself at least this likely (two unlikely tokens are not worth a warning)."""


def _space_variant_id(tc: ToolContext, text: str, token_id: int) -> tuple[str, int] | None:
    """(' ' + text, its id) when `text` has no leading whitespace and ' ' + text is one other known token."""
    if not text or text[0].isspace():
        return None
    variant = " " + text
    ids = tc.view.to_tokens(variant, prepend_bos=False, truncate=False)[0]
    unk_id = getattr(tc.view.tokenizer, "unk_token_id", None)
    if len(ids) != 1 or int(ids[0]) == token_id or (unk_id is not None and int(ids[0]) == unk_id):
        return None
    return variant, int(ids[0])


def answer_warnings(tc: ToolContext, answers: list[tuple[str, str, int]], logits: list[torch.Tensor]) -> list[str]:
    """Warnings for answers given without a leading space whose leading-space variant is a single token and far
    more likely where the answer is read. answers: (argument name, text, token id); logits: the [d_vocab] logits
    each answer is read from (same order)."""
    warnings = []
    for (arg, text, token_id), row in zip(answers, logits, strict=True):
        found = _space_variant_id(tc, text, token_id)
        if found is None:
            continue
        variant, variant_id = found
        probs = row.detach().float().softmax(dim=-1)
        p_given, p_variant = float(probs[token_id]), float(probs[variant_id])
        if p_variant >= SPACE_VARIANT_MIN_PROB and p_variant >= SPACE_VARIANT_RATIO * p_given:
            warnings.append(
                f"{arg}: {text!r} has p={p_given:.2g} here, {variant!r} p={p_variant:.2g}: did you mean {variant!r}?"
            )
    return warnings


def metric_warnings(
    tc: ToolContext, metric: AnswerMetric, answer_logits: torch.Tensor, wrong_logits: torch.Tensor | None = None
) -> list[str]:
    """answer_warnings for a metric's answer (read from answer_logits) and wrong answer (from wrong_logits, by
    default the same logits)."""
    answers = [("answer", metric.answer, metric.answer_id)]
    rows = [answer_logits]
    if metric.wrong_id is not None and metric.wrong_answer is not None:
        answers.append(("wrong_answer", metric.wrong_answer, metric.wrong_id))
        rows.append(answer_logits if wrong_logits is None else wrong_logits)
    return answer_warnings(tc, answers, rows)
