"""32 mixed tool calls (tests/shared.py MIXED, four of them malformed) on the toy model through one in-memory
MCP client session: one by one, then all at once. The model is serialized and nothing else is, so the
concurrent run should cost about what the sequential one does; prints the ratio concurrent / sequential.

    PYTHONPATH=src:. python bench/bench_concurrency.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import anyio
from mcp import Client

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from tests.shared import MIXED


async def measure(host: ModelHost, repeat: int) -> list[tuple[float, float]]:
    runs = []
    async with Client(build_server(host)) as client:
        for name, arguments in MIXED[:19]:  # warm up every code path once
            await client.call_tool(name, arguments)
        for _ in range(repeat):
            started = time.perf_counter()
            for name, arguments in MIXED:
                await client.call_tool(name, arguments)
            sequential = time.perf_counter() - started

            async def one(index: int) -> None:
                await client.call_tool(*MIXED[index])

            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                for index in range(len(MIXED)):
                    group.start_soon(one, index)
            runs.append((sequential, time.perf_counter() - started))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    host = ModelHost(Limits())
    host.load("toy-induction", device="cpu")
    for sequential, concurrent in anyio.run(measure, host, args.repeat):
        print(f"sequential {sequential:.2f} s  concurrent {concurrent:.2f} s  ratio {concurrent / sequential:.2f}")


if __name__ == "__main__":
    main()
