"""Building the MCP server around a model host."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mcp.server.mcpserver import MCPServer

from lens_mcp import __version__
from lens_mcp.model_host import ModelHost
from lens_mcp.server.instructions import INSTRUCTIONS
from lens_mcp.server.prompts import register_prompts
from lens_mcp.server.record import install_recording
from lens_mcp.server.registry import register_tools
from lens_mcp.server.resources import register_resources


@dataclass(frozen=True)
class StartupModel:
    """The model to load in the background when the server starts (once, not per connection)."""

    spec: str
    device: str | None = None
    dtype: str | None = None


def build_server(host: ModelHost, startup: StartupModel | None = None) -> MCPServer:
    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[ModelHost]:
        # Runs before `initialize` is answered on stdio: start the load, never wait for it here.
        if startup is not None and host.model is None and host.loading is None and host.load_error is None:
            host.load_in_background(startup.spec, startup.device, startup.dtype)
        yield host

    server = MCPServer("lens-mcp", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan)
    register_tools(server, host)
    register_prompts(server)
    register_resources(server, host)
    install_recording(server, host)  # records calls only when a recorder is attached to the host
    return server
