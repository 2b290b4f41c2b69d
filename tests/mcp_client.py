"""Helpers for calling the server through a real MCP client (in-process or subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult

MODES = ["auto", "legacy"]


def spawn_toy_server(stderr: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
    """`lens-mcp serve` on the toy model as a real stdio subprocess, for tests that speak raw JSON-RPC."""
    return subprocess.Popen(
        [sys.executable, "-m", "lens_mcp", "serve", "--model", "toy-induction", "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def call_tool(
    server: MCPServer, name: str, arguments: dict[str, Any] | None = None, mode: str = "auto", **kwargs: Any
) -> CallToolResult:
    async with Client(server, mode=mode) as client:
        return await client.call_tool(name, arguments or {}, **kwargs)


def result_data(result: CallToolResult) -> dict[str, Any]:
    """The structured content, checked to equal the compact JSON text an agent also receives."""
    assert not result.is_error, result.content[0].text
    text = result.content[0].text
    assert text == json.dumps(result.structured_content, separators=(",", ":"), ensure_ascii=False)
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error, f"expected an error, got {result.structured_content}"
    return result.content[0].text
