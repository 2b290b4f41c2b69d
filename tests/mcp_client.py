"""Helpers for calling the server through a real MCP client (in-process or subprocess)."""

from __future__ import annotations

import json
from typing import Any

from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult

MODES = ["auto", "legacy"]


async def call_tool(server: MCPServer, name: str, arguments: dict[str, Any] | None = None, mode: str = "auto",
                    **kwargs: Any) -> CallToolResult:
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
