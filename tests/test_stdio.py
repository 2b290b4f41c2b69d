"""The real `lens-mcp serve` subprocess over stdio."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.mcp_client import result_data


def serve_params(model: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    # StdioServerParameters does not inherit the environment: pass it on explicitly.
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "lens_mcp", "serve", "--model", model, "--device", "cpu"],
        env={**os.environ, **(env or {})},
    )


async def _initialize_then_tokenize(params: StdioServerParameters, text: str) -> tuple[float, float, dict, list[str]]:
    messages: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    started = time.perf_counter()
    async with Client(params, mode="legacy", read_timeout_seconds=600) as client:
        initialized = time.perf_counter() - started
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"model_info", "tokenize", "load_model"} <= names
        data = result_data(await client.call_tool("tokenize", {"text": text}, progress_callback=on_progress))
        answered = time.perf_counter() - started
    return initialized, answered, data, messages


@pytest.mark.subprocess
async def test_stdio_server_answers_tokenize() -> None:
    _, _, data, _ = await _initialize_then_tokenize(serve_params("toy-induction"), "w3 w4")
    assert [pair[1] for pair in data["tokens"][1:]] == ["w3", "w4"]


@pytest.mark.slow
@pytest.mark.subprocess
async def test_stdio_initialize_is_answered_before_the_model_loads(tmp_path: Path) -> None:
    # An empty GGUF cache forces the ~30 s dequantizing load.
    params = serve_params("smollm2-135m", {"LENS_MCP_CACHE_DIR": str(tmp_path)})
    initialized, answered, data, messages = await _initialize_then_tokenize(params, " Paris")
    assert initialized < 15, f"initialize took {initialized:.1f}s"
    assert answered > initialized + 5
    assert any("waiting for model" in m for m in messages), "the call should have waited for the load"
    assert data["is_single_token"] and data["single_token"][1] == " Paris"
