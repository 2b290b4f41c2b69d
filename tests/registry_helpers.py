"""The registered tools, as the server lists them (the one source every list of tools is checked against)."""

from __future__ import annotations

import anyio

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server


def registered_tools() -> list[dict]:
    """tools/list of a server with no model loaded: name, title, description, schemas, annotations."""
    server = build_server(ModelHost(Limits()))

    async def listing() -> list[dict]:
        tools = await server.list_tools()
        return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]

    return anyio.run(listing)


def registered_tool_names() -> list[str]:
    return [tool["name"] for tool in registered_tools()]
