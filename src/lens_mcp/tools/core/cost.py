"""Cost before compute: what a call will cost, known before its first forward pass.

Every tool whose work grows with its arguments does, before any forward pass:

    work = Work(cells=..., rows=..., tokens_per_row=..., layer_fraction=..., result_chars=...)
    cost = estimate(tc, work)
    enforce(tc, cost, narrow="fewer layers=[...] or positions=[...]")   # LensError over a cap, at once
    if dry_run:
        return Result(..., cost=cost, dry_run=True)                     # data fields empty

and sizes its batches with `rows_for_time(tc, tokens_per_row, layers_per_row)` (passed to
`batching.plan_rows(..., seconds_per_row=...)`), so each batch takes about `Limits.max_batch_seconds` and
progress (which is also where a cancellation lands) arrives every few seconds.

Work is counted in token-layers: one token through one transformer block (a backward pass counts as two
forwards). The seconds come from a throughput measured once on the loaded model and device
(`measured_throughput`), so the same call is estimated at seconds on a GPU and minutes on a laptop CPU.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lens_mcp.errors import LensError
from lens_mcp.schemas.common import Cost
from lens_mcp.tools.core import batching
from lens_mcp.tools.core.batching import sequence_bytes
from lens_mcp.tools.core.context import ToolContext

log = logging.getLogger(__name__)

CHARS_PER_CELL = 9
"""JSON characters one rounded float takes in a grid, with its comma (e.g. '-0.1234,')."""
_PROBE_BATCH = 8
_PROBE_TOKENS = 64


@dataclass(frozen=True)
class Work:
    """What a call will run, counted before it runs."""

    rows: int
    """Sequences pushed through the model, the call's reference runs (clean, corrupted) included."""
    tokens_per_row: int
    """Tokens in each sequence."""
    layer_fraction: float = 1.0
    """Mean share of the model's blocks each row runs (patching from layer L runs n_layers - L of them)."""
    backward_rows: int = 0
    """Rows that also run a backward pass (about twice a forward pass each)."""
    cells: int = 0
    """Cells of the result (what the caps on cells count)."""
    result_chars: int = 0
    """Estimated characters of the JSON result."""
    rows_per_pass: int | None = None
    """Rows per batched forward pass, when the tool already knows it (else derived from the time bound)."""
    stored_bytes: int = 0
    """Bytes the call keeps across its batches (reference caches, gradient sums), beyond one batch's activations."""
    row_bytes: int | None = None
    """Activation bytes of one row while it runs, when the tool knows better than `row_memory`."""
    slowdown: float = 1.0
    """How many times slower than a plain pass each pass runs (`measured_slowdown`, for passes with hooks that cost
    more than the blocks' arithmetic)."""
    spent_seconds: float = 0.0
    """What the call already spent before its estimate (measuring its passes' slowdown the first time), counted
    in the estimate since it is part of the call's time."""


def grid_chars(cells: int, overhead: int = 600) -> int:
    """Estimated JSON characters of a result holding `cells` rounded floats plus `overhead` characters."""
    return int(cells) * CHARS_PER_CELL + overhead


def measured_throughput(tc: ToolContext) -> float:
    """Token-layers per second of a batched forward pass on the loaded model, measured once per model and kept
    on `tc.model.throughput`, with what each block call costs beyond its arithmetic (`block_call_seconds`): a
    warm-up pass, then the faster of two timed passes of a large batch and of a two-token sequence."""
    if tc.model.throughput is not None:
        return tc.model.throughput
    view = tc.view
    n_tokens = max(2, min(_PROBE_TOKENS, view.n_ctx))
    device = next(iter(view.parameters())).device
    big = _fastest_pass(tc, torch.randint(0, view.d_vocab, (_PROBE_BATCH, n_tokens), device=device))
    tiny = _fastest_pass(tc, torch.randint(0, view.d_vocab, (1, 2), device=device))
    call_seconds = tiny / view.n_layers
    arithmetic = max(big - tiny, big * 0.1)
    throughput = _PROBE_BATCH * n_tokens * view.n_layers / max(arithmetic, 1e-6)
    tc.model.throughput = throughput
    tc.model.block_call_seconds = call_seconds
    log.info("measured throughput: %.0f token-layers/s, %.2f ms per block call", throughput, 1000 * call_seconds)
    return throughput


def block_call_seconds(tc: ToolContext) -> float:
    """Seconds one block call costs beyond its arithmetic on this model and device (measured with the throughput)."""
    measured_throughput(tc)
    return tc.model.block_call_seconds or 0.0


OBSERVED_WEIGHT = 0.3
"""How much one batch's measured speed moves the model's throughput (an exponential moving average), so the
estimates follow the machine's load (another process starting, thermal throttling) instead of the speed at load."""


def observe(tc: ToolContext, token_layers: float, block_calls: int, seconds: float) -> None:
    """Fold one finished batch's measured speed into `tc.model.throughput` (arithmetic only: the block calls'
    fixed cost is taken out first). A batch whose block calls were expected to cost more than its arithmetic (a
    few late positions through many blocks) is left out: its time says more about the per-call overhead than about
    the arithmetic speed, and folding it in would make every later estimate too high."""
    if tc.model.throughput is None or token_layers <= 0 or seconds <= 0:
        return
    if token_layers / tc.model.throughput < block_calls * (tc.model.block_call_seconds or 0.0):
        return
    arithmetic = max(seconds - block_calls * (tc.model.block_call_seconds or 0.0), 0.1 * seconds)
    seen = token_layers / arithmetic
    tc.model.throughput = (1 - OBSERVED_WEIGHT) * tc.model.throughput + OBSERVED_WEIGHT * seen


_SLOWDOWN_BATCH = 2
_SLOWDOWN_TOKENS = 32
MAX_SLOWDOWN = 20.0
"""A bound on the measured slowdown (a probe disturbed by another process must not make every estimate absurd)."""


def observe_pass(tc: ToolContext, rows: int, tokens: int, seconds: float, backward: bool, slowdown: float) -> None:
    """Fold one finished pass of every block (`backward`: and its backward pass, twice a forward) into the
    throughput (`observe`), its work counted in plain-pass units."""
    n_layers = tc.view.n_layers
    passes = 3 if backward else 1
    observe(tc, rows * tokens * n_layers * passes * max(1.0, slowdown), passes * n_layers, seconds)


def measured_slowdown(tc: ToolContext, kind: str, run: Callable[[torch.Tensor], object], passes: float) -> float:
    """How many times slower `run(tokens)` (a pass with its hooks, e.g. a gradient pass with per-head hook points)
    is than `passes` plain forward passes of the same tokens: measured once per model and `kind` on a small probe
    batch and kept on `tc.model.slowdowns`, so estimates count such passes at their real speed on this model."""
    if kind in tc.model.slowdowns:
        return tc.model.slowdowns[kind]
    view = tc.view
    device = next(iter(view.parameters())).device
    tokens = torch.randint(0, view.d_vocab, (_SLOWDOWN_BATCH, max(2, min(_SLOWDOWN_TOKENS, view.n_ctx))), device=device)
    hooked = _fastest_pass(tc, tokens, run)
    plain = _fastest_pass(tc, tokens)
    factor = min(MAX_SLOWDOWN, max(1.0, hooked / max(passes * plain, 1e-9)))
    tc.model.slowdowns[kind] = factor
    log.info("%s runs %.2fx slower than %g plain passes", kind, factor, passes)
    return factor


def _fastest_pass(tc: ToolContext, tokens: torch.Tensor, run: Callable[[torch.Tensor], object] | None = None) -> float:
    best = math.inf
    with torch.no_grad():
        for attempt in range(3):
            _synchronize(tokens.device)
            start = time.perf_counter()
            if run is None:
                tc.view(tokens)
            else:
                with torch.enable_grad():
                    run(tokens)
            _synchronize(tokens.device)
            if attempt > 0:
                best = min(best, time.perf_counter() - start)
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def work_units(tc: ToolContext, work: Work) -> int:
    """Token-layers the call will run: rows x tokens x blocks, backward passes counted twice, times the passes'
    slowdown."""
    per_row = work.tokens_per_row * tc.view.n_layers * max(0.0, work.layer_fraction) * max(1.0, work.slowdown)
    return int(math.ceil((work.rows + 2 * work.backward_rows) * per_row))


def _dtype_bytes(tc: ToolContext) -> int:
    parameter = next(iter(tc.view.parameters()), None)
    return 4 if parameter is None else max(2, parameter.element_size())


def row_memory(tc: ToolContext, tokens_per_row: int, backward: bool = False) -> int:
    """Activation bytes one row of `tokens_per_row` tokens needs while it runs: one block's working set and its
    logits for a forward pass; for a backward pass every block's saved activations and the logits' gradients
    (measured on SmolLM2-135M: 636 MB at 256 tokens and 4.1 GB at 1,024 against 680 MB and 6.0 GB here)."""
    view = tc.view
    dtype_bytes = _dtype_bytes(tc)
    if backward:
        return view.n_layers * sequence_bytes(view, tokens_per_row, dtype_bytes=dtype_bytes) + 3 * 4 * (
            tokens_per_row * view.d_vocab
        )
    return sequence_bytes(view, tokens_per_row, logits_tokens=tokens_per_row, dtype_bytes=dtype_bytes)


def memory_mb(tc: ToolContext, work: Work) -> float:
    """The least memory the call needs beyond the model's weights, in MB: what it keeps across batches plus one
    row's activations (batches grow from there up to a share of the free memory, `batching.MEMORY_FRACTION`)."""
    row = work.row_bytes if work.row_bytes is not None else row_memory(tc, work.tokens_per_row, work.backward_rows > 0)
    return (max(0, work.stored_bytes) + max(0, row)) / 2**20


def estimate(tc: ToolContext, work: Work) -> Cost:
    """The call's cost: cells, batched passes, work units, seconds on this model and device, result size."""
    throughput = measured_throughput(tc)
    units = work_units(tc, work)
    layers_per_row = max(1.0, tc.view.n_layers * work.layer_fraction)
    rows_per_pass = work.rows_per_pass or rows_for_time(tc, work.tokens_per_row, layers_per_row)
    forward = math.ceil(work.rows / max(1, rows_per_pass))
    backward = math.ceil(work.backward_rows / max(1, rows_per_pass))
    block_calls = (forward + 2 * backward) * layers_per_row  # each pass calls every block it runs (backward: twice)
    return Cost(
        cells=work.cells,
        forward_passes=forward + backward,
        work_units=units,
        seconds=max(0.0, work.spent_seconds) + units / throughput + block_calls * block_call_seconds(tc),
        result_chars=work.result_chars,
        throughput=throughput,
        memory_mb=memory_mb(tc, work),
    )


def planned_cost(
    tc: ToolContext,
    *,
    cells: int,
    passes: int,
    token_layers: float,
    block_calls: int,
    result_chars: int,
    memory_bytes: int,
    spent_seconds: float = 0.0,
    extra_token_layers: float = 0.0,
) -> Cost:
    """The cost of work already planned in detail (the engine knows which rows and positions it will run, and
    how many block calls, each of which costs `block_call_seconds` beyond its arithmetic). `memory_bytes`: what it
    holds (its reference runs' caches) plus one row. `spent_seconds`: what the call already spent finding that out
    (its reference runs). `extra_token_layers`: time beyond the work, in token-layers of the same speed (rows
    attending over a recorded prefix), counted in the seconds and not in the work units."""
    throughput = measured_throughput(tc)
    return Cost(
        cells=cells,
        forward_passes=passes,
        work_units=int(math.ceil(token_layers)),
        seconds=spent_seconds + (token_layers + extra_token_layers) / throughput + block_calls * block_call_seconds(tc),
        result_chars=result_chars,
        throughput=throughput,
        memory_mb=memory_bytes / 2**20,
    )


def enforce(tc: ToolContext, cost: Cost, narrow: str) -> None:
    """Refuse a call over any cap, at once, saying which cap and how to narrow the call (`narrow`, e.g.
    "pass fewer layers=[...] or positions=[...]")."""
    limits = tc.limits
    problems = []
    if cost.work_units > limits.max_work_units:
        problems.append(
            f"{cost.work_units:,} token-layers of work, over max_work_units={limits.max_work_units:,} "
            "(LENS_MCP_MAX_WORK_UNITS)"
        )
    if cost.seconds > limits.max_call_seconds:
        problems.append(
            f"an estimated {cost.seconds:,.0f} s on this device, over max_call_seconds={limits.max_call_seconds} "
            "(LENS_MCP_MAX_CALL_SECONDS, --max-call-seconds)"
        )
    if cost.result_chars > limits.max_response_chars:
        problems.append(
            f"about {cost.result_chars:,} characters of JSON, over max_response_chars={limits.max_response_chars} "
            "(LENS_MCP_MAX_RESPONSE_CHARS)"
        )
    memory = _memory_problem(tc, cost)
    if memory:
        problems.append(memory)
    if problems:
        raise LensError(
            f"refused before computing: this call is {cost.cells:,} cells in {cost.forward_passes:,} batched passes, "
            + "; ".join(problems)
            + f". Narrow it: {narrow}. (dry_run=true returns this estimate without computing.)"
        )


def _memory_problem(tc: ToolContext, cost: Cost) -> str | None:
    """Why the call cannot fit in the memory free on the model's device now, or None (also when that cannot be
    told)."""
    parameter = next(iter(tc.view.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    free = batching.available_memory_bytes(device)
    if free is None or cost.memory_mb * 2**20 <= free:
        return None
    return (
        f"about {cost.memory_mb:,.0f} MB of activations beyond the weights at the least (one row and what the call "
        f"keeps across rows), over the {free / 2**20:,.0f} MB free on {device} now (shorter prompts, fewer pairs or "
        "a smaller model fit)"
    )


def rows_for_time(tc: ToolContext, tokens_per_row: int, layers_per_row: float | None = None) -> int:
    """Rows per batch so that one batch takes about Limits.max_batch_seconds on this model and device."""
    return max(1, int(tc.limits.max_batch_seconds / seconds_per_row(tc, tokens_per_row, layers_per_row)))


def seconds_per_row(tc: ToolContext, tokens_per_row: int, layers_per_row: float | None = None) -> float:
    """Estimated seconds one row of `tokens_per_row` tokens takes through `layers_per_row` blocks."""
    layers = float(layers_per_row if layers_per_row is not None else tc.view.n_layers)
    return max(1.0, tokens_per_row * layers) / measured_throughput(tc)


def single_pass_cost(tc: ToolContext, work: Work) -> Cost:
    """The cost of a call that runs one forward pass, without measuring the device's throughput for it (a probe
    of several passes): seconds from the throughput when it is already known, else 0 (one pass is never the
    problem; the result size and the work units are what the caps bound here)."""
    units = work_units(tc, work)
    throughput = tc.model.throughput
    calls = tc.view.n_layers * (tc.model.block_call_seconds or 0.0)
    return Cost(
        cells=work.cells,
        forward_passes=1,
        work_units=units,
        seconds=units / throughput + calls if throughput else 0.0,
        result_chars=work.result_chars,
        throughput=throughput or 0.0,
        memory_mb=memory_mb(tc, work),
    )
