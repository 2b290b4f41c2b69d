"""The science: plain functions over a loaded model. No MCP imports here.

Each tool is `def name(tc: ToolContext, <arguments>) -> <Result model>`; the server adapter exposes
the arguments as the MCP tool's input schema and the result model as its output schema.
"""
