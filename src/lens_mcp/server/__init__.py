"""The MCP adapter: server construction, tool registration, transports and the command line."""
