"""lens-mcp: an MCP server for mechanistic interpretability on a transformer held in memory."""

__version__ = "0.1.0"
