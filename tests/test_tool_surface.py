"""The public tool surface, pinned: tools/list as a committed snapshot, and every other list of tools (the
README table, the server instructions, the CLI's host tools) checked against the registry.

A change to a tool's name, arguments, schemas, description or annotations fails test_tools_list_snapshot
until the snapshot is regenerated, so the change shows as a diff in review. Regenerate with

    UPDATE_SNAPSHOT=1 PYTHONPATH=src python -m pytest -q tests/test_tool_surface.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from lens_mcp.cli import scripted
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from lens_mcp.server.instructions import INSTRUCTIONS
from lens_mcp.server.registry import HOST_TOOLS, TOOL_NAMES, TOOLS
from tests.mcp_client import call_tool, error_text
from tests.registry_helpers import registered_tools

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "tools_list.json"


def test_tools_list_snapshot() -> None:
    listing = registered_tools()
    text = json.dumps(listing, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.is_file(), "no snapshot yet: run with UPDATE_SNAPSHOT=1"
    saved = json.loads(SNAPSHOT.read_text())
    assert [tool["name"] for tool in listing] == [tool["name"] for tool in saved], "tools added/removed/reordered"
    for now, then in zip(listing, saved, strict=True):
        assert now == then, (
            f"{now['name']}: its tools/list entry changed; if intended, regenerate the snapshot "
            "(UPDATE_SNAPSHOT=1 PYTHONPATH=src python -m pytest -q tests/test_tool_surface.py)"
        )


def test_the_server_lists_exactly_the_registry() -> None:
    assert [tool["name"] for tool in registered_tools()] == list(TOOL_NAMES)
    assert len(set(TOOL_NAMES)) == len(TOOL_NAMES)


def readme_tool_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Tools\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)


def test_readme_tool_table_equals_the_registry() -> None:
    assert readme_tool_table() == list(TOOL_NAMES), "README.md's ## Tools table must list the registry in order"


def test_instructions_name_every_tool_family_within_the_budget() -> None:
    """Every registered tool's family (its package under tools/) is named as a family line of the
    instructions, which stay under Claude Code's 2 KB cut with room for more tools in those families."""
    families = {tool.fn.__module__.split(".")[-2] for tool in TOOLS}
    missing = [family for family in sorted(families) if not re.search(rf"^- {family}\b", INSTRUCTIONS, re.MULTILINE)]
    assert not missing, f"server/instructions.py names no family line for {missing}"
    assert len(INSTRUCTIONS.encode()) < 1800


def test_cli_host_tools_come_from_the_registry() -> None:
    assert scripted.HOST_TOOLS is HOST_TOOLS
    assert HOST_TOOLS == {tool.name for tool in TOOLS if tool.host} and "load_model" in HOST_TOOLS


@pytest.mark.parametrize("name", TOOL_NAMES)
async def test_unknown_argument_names_are_refused_with_the_argument_list(name: str) -> None:
    """The SDK ignores unknown argument names (a misspelt `toplk` would run with the default top_k): the server
    refuses them before the tool runs, naming each and listing the tool's arguments."""
    server = build_server(ModelHost(Limits()))  # no model: the refusal comes before any model is needed
    tools = await server.list_tools()
    known = list(next(tool for tool in tools if tool.name == name).input_schema.get("properties", {}))
    text = error_text(await call_tool(server, name, {"toplk": 3, "zz": 1}))
    assert "unknown arguments 'toplk', 'zz'" in text
    assert f"{name} takes: " + (", ".join(known) if known else "none") in text
