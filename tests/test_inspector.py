"""A real MCP client other than the Python SDK: the MCP Inspector's CLI (npm), installed by `make install`
into .inspector/. It starts `python -m lens_mcp serve --model toy-induction` over stdio itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSPECTOR = ROOT / ".inspector" / "node_modules" / ".bin" / "mcp-inspector"
# The Inspector gives a stdio server only a minimal environment (PATH, HOME, ...): pass on what Python needs.
FORWARDED = ("PYTHONPATH", "HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(not INSPECTOR.exists(), reason="MCP Inspector not installed (`make install` with npm)"),
]


def inspector(*args: str, server: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env_args = [arg for key in FORWARDED if key in os.environ for arg in ("-e", f"{key}={os.environ[key]}")]
    if server is None:
        server = [
            sys.executable,
            "-m",
            "lens_mcp",
            "serve",
            "--model",
            "toy-induction",
            "--device",
            "cpu",
            "--log-level",
            "WARNING",
        ]
    target = ["--", *server] if server else []
    return subprocess.run(
        [str(INSPECTOR), "--cli", *env_args, *args, *target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "MCP_INSPECTOR_SECRET_STORE": "memory"},
    )  # no OS keychain needed


def test_inspector_lists_the_tools() -> None:
    done = inspector("--method", "tools/list")
    assert done.returncode == 0, done.stderr
    tools = {tool["name"]: tool for tool in json.loads(done.stdout)["tools"]}
    assert {"model_info", "tokenize", "load_model"} <= set(tools)
    assert tools["tokenize"]["inputSchema"]["required"] == ["text"]
    assert "outputSchema" in tools["tokenize"]


def test_inspector_calls_tokenize() -> None:
    done = inspector("--method", "tools/call", "--tool-name", "tokenize", "--tool-arg", "text=w3 w4")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert not result.get("isError")
    data = result["structuredContent"]
    assert [pair[1] for pair in data["tokens"][1:]] == ["w3", "w4"]
    assert json.loads(result["content"][0]["text"]) == data


def test_the_committed_mcp_json_starts_the_server() -> None:
    # What Claude Code runs for the project scope, read by the Inspector from the same file.
    config = json.loads((ROOT / ".mcp.json").read_text())["mcpServers"]["lens-mcp"]
    assert config["args"][0] == "serve"
    assert (ROOT / config["command"]).exists(), "run `make install` first"
    done = inspector("--config", ".mcp.json", "--server", "lens-mcp", "--method", "tools/list", server=[])
    assert done.returncode == 0, done.stderr
    assert "tokenize" in {tool["name"] for tool in json.loads(done.stdout)["tools"]}
