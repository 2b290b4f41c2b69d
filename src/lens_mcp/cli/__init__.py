"""The `lens-mcp` command line: serve, call, batch, replay, report (see main.py)."""
