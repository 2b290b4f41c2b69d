"""Progress reporting and cancellation, without MCP: tools call a reporter between batches.

The server's reporter forwards to the client and raises when the request was cancelled, so a tool
stops at the next report. Tools must therefore report only at points where stopping is safe
(outside forward passes, with hooks already removed by their context managers).
"""

from __future__ import annotations

from typing import Protocol


class ProgressReporter(Protocol):
    def __call__(self, done: float, total: float | None = None, message: str | None = None) -> None: ...


def no_progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """A reporter for direct (non-MCP) calls: reports nothing, never cancels."""
