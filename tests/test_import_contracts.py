"""The import contracts in pyproject.toml (checked by `lint-imports` in `make check`) name every tool module the
registry publishes, so that a new tool is covered by "a tool never imports another tool" the day it lands."""

from __future__ import annotations

import tomllib
from pathlib import Path

from lens_mcp.server.registry import TOOLS

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _contracts(kind: str) -> list[dict]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    return [c for c in config["contracts"] if c["type"] == kind]


def test_the_independence_contract_lists_exactly_the_registered_tool_modules() -> None:
    (contract,) = _contracts("independence")
    listed = set(contract["modules"])
    registered = {tool.fn.__module__ for tool in TOOLS}
    assert listed == registered, f"missing: {sorted(registered - listed)}; stale: {sorted(listed - registered)}"


def test_every_tool_family_sits_above_the_core() -> None:
    families = {tool.fn.__module__.rsplit(".", 1)[0] for tool in TOOLS}
    (contract,) = [c for c in _contracts("layers") if "lens_mcp.tools.core" in c["layers"]]
    upper, lower = contract["layers"]
    assert lower == "lens_mcp.tools.core"
    assert {name.strip() for name in upper.split("|")} == families
