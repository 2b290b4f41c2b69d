"""Shared batching mechanics for tools that run many sequences: how many rows fit in one forward batch
(the caps in Limits, then free memory), running a list of items batch by batch with progress after each
batch, and halving a batch that runs out of memory instead of failing the call.

Nothing here holds hooks: callers attach them inside `run_batch` (through `bridge.hooks(...)`), so by the
time progress is reported (which raises when the call was cancelled) every hook has been removed.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch

from lens_mcp.loading.devices import available_memory_bytes
from lens_mcp.progress import ProgressReporter, no_progress
from lens_mcp.tools.core.model_view import ModelView

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MEMORY_FRACTION = 0.5
"""Share of the currently free memory one batch may plan to use (the rest is headroom for the allocator,
the model's own buffers and whatever else runs on the machine)."""


def sequence_bytes(
    view: ModelView, query_tokens: int, key_tokens: int | None = None, *, logits_tokens: int = 0, dtype_bytes: int = 4
) -> int:
    """A generous estimate of the activation memory one sequence needs while a block runs: the residual
    stream and its copies, the MLP's hidden layer, the attention scores and pattern, plus `logits_tokens`
    rows of logits if the caller keeps full-vocabulary logits."""
    key_tokens = query_tokens if key_tokens is None else key_tokens
    d_model = view.d_model
    d_mlp = view.d_mlp or 4 * d_model
    n_heads = view.n_heads
    per_token = 12 * d_model + 4 * d_mlp
    attention = 4 * n_heads * query_tokens * key_tokens
    logits = logits_tokens * view.d_vocab
    return dtype_bytes * (query_tokens * per_token + attention + logits)


@dataclass(frozen=True)
class BatchPlan:
    rows: int
    """Sequences per forward batch."""
    reason: str
    """Which bound decided it (for logs and results): max_batch_sequences, max_batch_tokens, max_batch_seconds,
    memory or wanted."""
    ceiling: int | None = None
    """When the time bound decided `rows`: the rows every other bound allows. The time bound rests on an
    estimated throughput, so `iter_batched` grows a batch towards this ceiling while batches finish well inside
    `target_seconds`, and shrinks it when one runs long."""
    target_seconds: float | None = None
    """The seconds one batch should take (Limits.max_batch_seconds), when the time bound is in force."""


def plan_rows(
    limits: Any,
    device: torch.device | str,
    tokens_per_row: int,
    bytes_per_row: int,
    wanted: int | None = None,
    seconds_per_row: float | None = None,
) -> BatchPlan:
    """Rows per batch: the smallest of `max_batch_sequences`, `max_batch_tokens // tokens_per_row`, what fits
    in MEMORY_FRACTION of free memory, what runs in `max_batch_seconds` when `seconds_per_row` is known
    (cost.seconds_per_row), and `wanted` (the rows there are); at least 1."""
    bounds = {
        "max_batch_sequences": int(limits.max_batch_sequences),
        "max_batch_tokens": max(1, int(limits.max_batch_tokens) // max(1, tokens_per_row)),
    }
    if seconds_per_row is not None and seconds_per_row > 0:
        bounds["max_batch_seconds"] = max(1, int(limits.max_batch_seconds / seconds_per_row))
    free = available_memory_bytes(device)
    if free is not None and bytes_per_row > 0:
        bounds["memory"] = max(1, int(free * MEMORY_FRACTION) // bytes_per_row)
    if wanted is not None:
        bounds["wanted"] = max(1, wanted)
    reason = min(bounds, key=lambda name: bounds[name])
    if reason != "max_batch_seconds":
        return BatchPlan(rows=max(1, bounds[reason]), reason=reason)
    others = {name: value for name, value in bounds.items() if name != "max_batch_seconds"}
    return BatchPlan(
        rows=max(1, bounds[reason]),
        reason=reason,
        ceiling=max(1, min(others.values())),
        target_seconds=float(limits.max_batch_seconds),
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CPU MemoryError, torch.OutOfMemoryError (CUDA/MPS) and allocator RuntimeErrors."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return "out of memory" in text or "failed to allocate" in text or "can't allocate memory" in text
    return False


def _release_memory(device: torch.device | str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


class ProgressCounter:
    """Counts finished work across several batched loops and reports it (the reporter raises on cancel)."""

    def __init__(self, progress: ProgressReporter = no_progress, total: int | None = None, unit: str = "items"):
        self.progress = progress
        self.total = total
        self.unit = unit
        self.done = 0
        self.batches = 0

    def advance(self, n: int, message: str | None = None) -> None:
        self.done += n
        self.batches += 1
        total = f"/{self.total}" if self.total is not None else ""
        self.progress(self.done, self.total, message or f"{self.done}{total} {self.unit}")


def iter_batched(
    items: Sequence[T],
    run_batch: Callable[[Sequence[T]], R],
    rows: int | BatchPlan,
    *,
    device: torch.device | str = "cpu",
    counter: ProgressCounter | None = None,
    message: Callable[[int, int], str] | None = None,
) -> Iterator[tuple[Sequence[T], R]]:
    """Run `run_batch` on consecutive slices of `items`, at most `rows` at a time, yielding (batch, result)
    as each batch finishes.

    After each batch, `counter.advance(len(batch))` reports progress (and raises if the call was cancelled;
    `run_batch` must have removed its hooks by then, which `bridge.hooks(...)` context managers do). A batch
    that runs out of memory is halved and retried, and the smaller size is kept for the rest; a single item
    that still does not fit re-raises the error. Given a BatchPlan sized by time, the batch doubles (up to the
    plan's ceiling) after a batch that took under half its target seconds and halves after one that took over
    twice that, so progress keeps arriving every few seconds even where the throughput estimate was off.
    """
    plan = rows if isinstance(rows, BatchPlan) else None
    size = max(1, int(plan.rows if plan is not None else rows))  # type: ignore[arg-type]
    start = 0
    while start < len(items):
        batch = items[start : start + size]
        out_of_memory = False
        result: R | None = None
        started = time.perf_counter()
        try:
            result = run_batch(batch)
        except Exception as exc:
            if not is_out_of_memory(exc) or len(batch) == 1:
                raise
            out_of_memory = True
        if out_of_memory:  # outside the handler, so the failed batch's tensors can be freed
            _release_memory(device)
            size = max(1, len(batch) // 2)
            log.warning("a batch of %d ran out of memory; retrying with %d", len(batch), size)
            continue
        start += len(batch)
        if plan is not None and plan.ceiling is not None and plan.target_seconds:
            size = _resized(size, len(batch), time.perf_counter() - started, plan.target_seconds, plan.ceiling)
        if counter is not None:
            counter.advance(len(batch), message(counter.done + len(batch), len(batch)) if message else None)
        yield batch, cast(R, result)  # set: the batch did not run out of memory


def _resized(size: int, ran: int, seconds: float, target: float, ceiling: int) -> int:
    """The next batch size after a batch of `ran` rows took `seconds` against a `target`."""
    if ran < size:  # the last, partial batch: nothing learnt
        return size
    if seconds < target / 2:
        return min(ceiling, size * 2)
    if seconds > 2 * target:
        return max(1, size // 2)
    return size


def run_batched(
    items: Sequence[T],
    run_batch: Callable[[Sequence[T]], R],
    rows: int | BatchPlan,
    *,
    device: torch.device | str = "cpu",
    counter: ProgressCounter | None = None,
    message: Callable[[int, int], str] | None = None,
) -> list[tuple[Sequence[T], R]]:
    """`iter_batched` collected into a list of (batch, result) pairs, in order."""
    return list(iter_batched(items, run_batch, rows, device=device, counter=counter, message=message))
