"""Prompt datasets: `pairs=[{clean_prompt, corrupted_prompt, answer, wrong_answer}, ...]` in place of a tool's
single-prompt arguments. Resolved and checked once here (the cap, the required fields, the length rule), and
the per-cell mean and spread over pairs computed once here.

A tool that takes `pairs` calls `resolve_pairs` with its single-prompt arguments and gets a list of
`PromptPair` either way (one pair for a single-prompt call), so the rest of the tool handles one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lens_mcp.errors import LensError
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.tokens import encode, token_strings


class PromptPair(BaseModel):
    """One item of a prompt dataset."""

    model_config = ConfigDict(extra="forbid")

    clean_prompt: str = Field(description="The clean prompt (for single-prompt tools: the prompt itself)")
    corrupted_prompt: str | None = Field(
        default=None, description="The corrupted prompt; must tokenize to the clean prompt's length"
    )
    answer: str | None = Field(default=None, description="The clean prompt's answer, one token (e.g. ' Paris')")
    wrong_answer: str | None = Field(default=None, description="The competing answer, one token (e.g. ' Rome')")


PairsArgument = Annotated[
    list[PromptPair] | None,
    Field(
        description="A prompt dataset in place of the single-prompt arguments: [{clean_prompt, corrupted_prompt, "
        "answer, wrong_answer}, ...]. Each cell is reported as the mean over pairs with its spread, plus "
        "per-pair metrics. Pairs may differ in length only where positions are counted from the end (negative) "
        "or not used. null: use the single-prompt arguments"
    ),
]
"""The `pairs` argument, with one description for every tool that takes it."""


def _resolve_pairs(
    tc: ToolContext,
    pairs: Sequence[PromptPair | dict[str, object]] | None,
    *,
    clean_prompt: str | None,
    corrupted_prompt: str | None = None,
    answer: str | None = None,
    wrong_answer: str | None = None,
    need_corrupted: bool = True,
    need_answer: bool = True,
    prompt_arg: str = "clean_prompt",
) -> list[PromptPair]:
    """The dataset to run: `pairs`, or the single-prompt arguments as one pair. Refuses both or neither, an
    empty or over-cap dataset, and a pair missing what the tool needs (naming the pair's index).
    `prompt_arg` is the tool's name for the clean prompt ('prompt' for single-prompt tools)."""
    singles = {
        prompt_arg: clean_prompt,
        "corrupted_prompt": corrupted_prompt,
        "answer": answer,
        "wrong_answer": wrong_answer,
    }
    if pairs is None:
        if clean_prompt is None:
            raise LensError(
                f"{prompt_arg} is required: pass {prompt_arg} (and its answer), or a dataset as pairs=[...]."
            )
        items = [
            PromptPair(
                clean_prompt=clean_prompt, corrupted_prompt=corrupted_prompt, answer=answer, wrong_answer=wrong_answer
            )
        ]
        labels = [None]
    else:
        given = [name for name, value in singles.items() if value is not None]
        if given:
            raise LensError(
                f"pass either pairs=[...] or the single-prompt arguments, not both (got pairs and {', '.join(given)}); "
                "put every prompt into pairs."
            )
        if len(pairs) == 0:
            raise LensError("pairs is empty: pass at least one {clean_prompt, corrupted_prompt, answer, ...} item.")
        cap = tc.limits.max_pairs
        if len(pairs) > cap:
            raise LensError(
                f"pairs has {len(pairs)} items, over the cap max_pairs={cap} (LENS_MCP_MAX_PAIRS); "
                "pass fewer pairs, or split the dataset over several calls."
            )
        items = [_validated(index, pair) for index, pair in enumerate(pairs)]
        labels = list(range(len(items)))

    for label, pair in zip(labels, items, strict=True):
        where = "" if label is None else f"pairs[{label}]."
        if need_corrupted and pair.corrupted_prompt is None:
            raise LensError(f"{where}corrupted_prompt is required by this tool; add it.")
        if need_answer and pair.answer is None:
            raise LensError(f"{where}answer is required by this tool (one token, e.g. ' Paris'); add it.")
    return items


def _validated(index: int, pair: PromptPair | dict[str, object]) -> PromptPair:
    """One dataset item as a PromptPair; a wrong item is a LensError naming it and the field."""
    if isinstance(pair, PromptPair):
        return pair
    try:
        return PromptPair.model_validate(pair)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'item'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise LensError(
            f"pairs[{index}] is not a valid item ({problems}); each item is an object with clean_prompt and, as the "
            "tool needs, corrupted_prompt, answer, wrong_answer (strings)."
        ) from None


def pair_label(index: int, n_pairs: int) -> str:
    """'pairs[3].' in a dataset call, '' in a single-prompt call: the prefix errors put before an argument."""
    return f"pairs[{index}]." if n_pairs > 1 else ""


def encode_pairs(
    tc: ToolContext,
    pairs: Sequence[PromptPair],
    *,
    with_corrupted: bool = True,
    fixed_positions: bool = True,
    prompt_arg: str = "clean_prompt",
) -> list[torch.Tensor]:
    """Token ids per pair: a (2, n) batch (clean, corrupted) when `with_corrupted`, else (1, n).

    Within a pair the two prompts must have the same length. Across pairs, lengths must match when
    `fixed_positions` (the tool indexes positions from the start); the error names the first pair whose length
    differs from pair 0's."""
    encoded: list[torch.Tensor] = []
    single = len(pairs) == 1
    for index, pair in enumerate(pairs):
        where = "" if single else f"pairs[{index}]."
        clean = encode(tc, pair.clean_prompt, f"{where}{prompt_arg}")
        if with_corrupted:
            assert pair.corrupted_prompt is not None  # resolve_pairs checked it
            corrupted = encode(tc, pair.corrupted_prompt, f"{where}corrupted_prompt")
            if corrupted.shape[-1] != clean.shape[-1]:
                raise LensError(
                    f"{where}{prompt_arg} and {where}corrupted_prompt must tokenize to the same length, but they "
                    f"are {clean.shape[-1]} and {corrupted.shape[-1]} tokens:\n  {prompt_arg}: "
                    f"{token_strings(tc, clean[0])}\n  corrupted_prompt: {token_strings(tc, corrupted[0])}\n"
                    "Reword one so that the tokens line up position by position."
                )
            clean = torch.cat([clean, corrupted], dim=0)
        encoded.append(clean)
    if fixed_positions:
        first = int(encoded[0].shape[-1])
        for index, tokens in enumerate(encoded[1:], start=1):
            if int(tokens.shape[-1]) != first:
                raise LensError(
                    f"pairs[{index}] is {tokens.shape[-1]} tokens long but pairs[0] is {first}: with positions "
                    "counted from the start every pair must have the same length. Count positions from the end "
                    "(negative, e.g. positions=[-1, -2]), or reword pairs[" + str(index) + "] to match."
                )
    return encoded


def positions_from_end(positions: Sequence[int] | None) -> bool:
    """True when every position is negative (counted from the end), so pairs of different lengths line up."""
    return positions is not None and len(positions) > 0 and all(int(p) < 0 for p in positions)


@dataclass(frozen=True)
class Spread:
    """Per-cell statistics over pairs (each tensor has the cells' shape)."""

    mean: torch.Tensor
    std: torch.Tensor
    """Population standard deviation over pairs (0 for one pair)."""
    min: torch.Tensor
    max: torch.Tensor
    n: int
    """How many pairs."""


def spread(per_pair: torch.Tensor | Sequence[torch.Tensor]) -> Spread:
    """Mean, standard deviation, min and max over the first axis (pairs) of `per_pair`. NaN cells (skipped in a
    pair) are left out of that cell's statistics; a cell skipped in every pair stays NaN."""
    values = per_pair if isinstance(per_pair, torch.Tensor) else torch.stack(list(per_pair))
    values = values.double()
    present = ~torch.isnan(values)
    count = present.sum(dim=0)
    filled = torch.where(present, values, torch.zeros_like(values))
    safe_count = count.clamp(min=1)
    mean = filled.sum(dim=0) / safe_count
    deviation = torch.where(present, values - mean, torch.zeros_like(values))
    std = (deviation.square().sum(dim=0) / safe_count).sqrt()
    low = torch.where(present, values, torch.full_like(values, float("inf"))).amin(dim=0)
    high = torch.where(present, values, torch.full_like(values, float("-inf"))).amax(dim=0)
    missing = count == 0
    nan = torch.full_like(mean, float("nan"))
    return Spread(
        mean=torch.where(missing, nan, mean),
        std=torch.where(missing, nan, std),
        min=torch.where(missing, nan, low),
        max=torch.where(missing, nan, high),
        n=int(values.shape[0]),
    )


def resolve_pairs(tc: ToolContext, pairs: object, **arguments: Any) -> list[PromptPair]:
    """The dataset to run: `pairs`, or the single-prompt arguments as one pair (see _resolve_pairs). Arguments
    of the wrong type (a direct call, not through the MCP schema) are reported as a LensError naming the
    argument instead of a raw validation error."""
    for name in ("clean_prompt", "corrupted_prompt", "answer", "wrong_answer"):
        value = arguments.get(name)
        if value is not None and not isinstance(value, str):
            shown = arguments.get("prompt_arg", name) if name == "clean_prompt" else name
            raise LensError(f"{shown}: expected a string, got {value!r:.80}.")
    if pairs is not None and not isinstance(pairs, (list, tuple)):
        raise LensError(
            f"pairs: expected a list of {{clean_prompt, corrupted_prompt, answer, ...}} items, got {pairs!r:.80}."
        )
    try:
        return _resolve_pairs(tc, pairs, **arguments)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ()))
        raise LensError(
            f"pairs: an item is invalid ({where}: {error.get('msg')}); each item is {{clean_prompt, "
            "corrupted_prompt, answer, wrong_answer}} with string values."
        ) from None
