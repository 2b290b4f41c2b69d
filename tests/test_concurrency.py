"""Concurrency and cancellation: 32 concurrent mixed calls on one client session return exactly what
they return one by one (their timing is measured by bench/bench_concurrency.py); a long
patch_sweep cancelled midway stops within one batch, leaves no hook, and the server keeps serving."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from mcp import Client

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from lens_mcp.tools.core.batching import ProgressCounter
from tests.mcp_client import MODES, result_data
from tests.shared import MIXED, SWEEP, leak_reports, untimed


def outcome(result: Any) -> tuple[bool, Any]:
    """What a call returned, without its timings: the numbers of a result, or the text of an error."""
    if result.is_error:
        return True, result.content[0].text
    return False, untimed(result_data(result))


@pytest.mark.parametrize("mode", MODES)
async def test_32_concurrent_calls_equal_the_sequential_ones(toy_host: ModelHost, mode: str) -> None:
    assert len(MIXED) == 32
    async with Client(build_server(toy_host), mode=mode) as client:
        for name, arguments in MIXED[:19]:  # warm up every code path once
            await client.call_tool(name, arguments)

        started = time.perf_counter()
        sequential = [outcome(await client.call_tool(name, arguments)) for name, arguments in MIXED]
        sequential_s = time.perf_counter() - started

        concurrent: list[Any] = [None] * len(MIXED)

        async def one(index: int) -> None:
            name, arguments = MIXED[index]
            concurrent[index] = outcome(await client.call_tool(name, arguments))

        started = time.perf_counter()
        with anyio.fail_after(120):  # a deadlock fails here instead of hanging the suite
            async with anyio.create_task_group() as group:
                for index in range(len(MIXED)):
                    group.start_soon(one, index)
        concurrent_s = time.perf_counter() - started

    for index, (expected, got) in enumerate(zip(sequential, concurrent, strict=True)):
        assert got == expected, f"call {index} {MIXED[index][0]} differs when run concurrently"
    assert sum(is_error for is_error, _ in sequential) == 4  # the four malformed calls
    assert leak_reports() == []
    print(f"[{mode}] sequential {sequential_s:.2f} s, concurrent {concurrent_s:.2f} s")
    # How long they take against the sequential run is measured by bench/bench_concurrency.py, not here.


# ---- cancellation ------------------------------------------------------------------------------------------
BATCH_S = 0.02  # each batch of the long sweep is slowed to at least this, so the timing below is meaningful


@pytest.fixture(scope="module")
def one_row_host() -> ModelHost:
    """Batches of one sequence: a sweep runs one batch per cell."""
    host = ModelHost(Limits(max_batch_sequences=1))
    host.load("toy-induction", device="cpu")
    return host


@pytest.mark.parametrize("mode", MODES)
async def test_a_cancelled_sweep_stops_within_one_batch(
    one_row_host: ModelHost, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = one_row_host
    words = [f"w{i}" for i in range(10, 56)]
    big = {
        "clean_prompt": " ".join(["w1", *words]),
        "corrupted_prompt": " ".join(["w2", *words]),
        "answer": " w64",
        "wrong_answer": " w77",
        "component": "heads_by_pos",
    }
    n_tokens = len(words) + 2
    assert n_tokens == host.model.cfg.n_ctx
    big_cells = host.model.cfg.n_layers * host.model.cfg.n_heads * n_tokens

    finished: list[tuple[float, int]] = []  # (time, cells done) after each batch of the long sweep
    stopped: list[float] = []  # when the sweep's worker thread saw the cancellation
    advance = ProgressCounter.advance

    def timed_advance(self: ProgressCounter, n: int, message: str | None = None) -> None:
        if self.total != big_cells:
            return advance(self, n, message)
        time.sleep(BATCH_S)
        finished.append((time.perf_counter(), self.done + n))
        try:
            advance(self, n, message)
        except BaseException:
            stopped.append(time.perf_counter())
            raise

    monkeypatch.setattr(ProgressCounter, "advance", timed_advance)
    reference = {**SWEEP, "component": "heads"}
    progressed = anyio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        if total == big_cells and done >= 20:  # midway: some batches done, most to go
            progressed.set()

    async with Client(build_server(host), mode=mode) as client:
        before = outcome(await client.call_tool("patch_sweep", reference))
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:

                async def sweep() -> None:
                    await client.call_tool("patch_sweep", big, progress_callback=on_progress)

                group.start_soon(sweep)
                await progressed.wait()
                # While the sweep holds the model, requests that do not need it are answered at once.
                asked = time.perf_counter()
                tools = await client.list_tools()
                assert len(tools.tools) >= 10 and time.perf_counter() - asked < 1.0
                cancelled_at = time.perf_counter()
                group.cancel_scope.cancel()
            # The next call waits for the cancelled one to let go of the model, then runs as usual.
            after = outcome(await client.call_tool("patch_sweep", reference))
            alive = outcome(await client.call_tool("tokenize", {"text": "w1 w2"}))

    assert stopped, "the sweep never saw the cancellation"
    late = [done for at, done in finished if at > cancelled_at]
    print(
        f"[{mode}] cancelled after {finished[0][1]}..{max(d for _, d in finished)} of {big_cells} cells; "
        f"{len(late)} batch(es) finished after the cancel; stopped {1000 * (stopped[0] - cancelled_at):.0f} ms later"
    )
    assert len(late) <= 2, f"{len(late)} batches finished after the cancel"
    assert stopped[0] - cancelled_at < 2 * BATCH_S + 0.5
    assert max(done for _, done in finished) < big_cells, "the sweep ran to the end"
    assert leak_reports() == []
    assert after == before and not after[0]
    assert alive[1]["n_tokens"] == 3
