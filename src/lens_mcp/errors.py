"""The one exception tools raise for input an agent can fix.

Tools stay free of MCP imports; the server adapter turns a `LensError` into the SDK's `ToolError`,
whose text is what the agent reads. Every message says what was wrong and how to fix it.
"""


class LensError(Exception):
    """A request that cannot be served as asked; the message names the argument and the fix."""


class UsageError(Exception):
    """Bad command-line input (exit status 2); the message says what to type instead."""
