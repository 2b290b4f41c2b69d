"""Every tool the server offers, one line each. The science lives in lens_mcp.tools.<name>."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from lens_mcp.model_host import ModelHost
from lens_mcp.server.adapter import add_host_tool, add_model_tool
from lens_mcp.tools.load_model import load_model
from lens_mcp.tools.model_info import model_info
from lens_mcp.tools.tokenize import tokenize


def register_tools(server: MCPServer, host: ModelHost) -> None:
    add_model_tool(server, host, model_info, title="Model facts")
    add_host_tool(server, host, load_model, title="Load a model")
    add_model_tool(server, host, tokenize, title="Tokenize text")
