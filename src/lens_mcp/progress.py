"""Progress reporting and cancellation, without MCP: tools call a reporter between batches.

The server's reporter forwards to the client and raises when the request was cancelled, so a tool
stops at the next report. Tools report between batches; `Heartbeat` also reports from inside forward passes
(at each block), so a single long pass still shows progress and a cancel lands within a few seconds. Stopping
there is safe because hooks are attached only through context managers, which remove them when it raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class ProgressReporter(Protocol):
    def __call__(self, done: float, total: float | None = None, message: str | None = None) -> None: ...


def no_progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """A reporter for direct (non-MCP) calls: reports nothing, never cancels."""


HEARTBEAT_INTERVAL_S = 2.0


class Heartbeat:
    """A tool's reporter that also beats inside forward passes.

    `beat()` is called at every transformer block; at most every `interval_s` seconds it sends a report, which
    is where the server's reporter raises for a cancelled call. Reported values never decrease: each beat adds
    one to an offset that every later report (the tool's own and the beats') carries, so a tool's (done, total)
    keep their meaning up to that offset."""

    def __init__(
        self,
        report: ProgressReporter,
        interval_s: float = HEARTBEAT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._report = report
        self._interval_s = interval_s
        self._clock = clock
        self._sent_at = clock()
        self._offset = 0.0
        self._done = 0.0
        self._total: float | None = None

    def __call__(self, done: float, total: float | None = None, message: str | None = None) -> None:
        self._done, self._total = done, total
        self._send(message)

    def beat(self, where: str) -> None:
        if self._clock() - self._sent_at < self._interval_s:
            return
        self._offset += 1
        self._send(f"computing: {where}")

    def _send(self, message: str | None) -> None:
        self._sent_at = self._clock()
        total = None if self._total is None else self._total + self._offset
        self._report(self._done + self._offset, total, message)
