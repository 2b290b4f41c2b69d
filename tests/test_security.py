"""Security: no eval/exec/pickle of client input, remote code off by default, stdout is protocol only."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from lens_mcp.cli.main import build_parser
from lens_mcp.model_host import ModelHost
from tests.mcp_client import spawn_toy_server

SOURCE = Path(__file__).resolve().parent.parent / "src" / "lens_mcp"
# Builtin eval/exec (not methods such as model.eval()), pickle/marshal/torch.load, dynamic imports.
FORBIDDEN = re.compile(
    r"(?<![.\w])(eval|exec)\s*\(|\bimport pickle\b|\bpickle\.|\btorch\.load\s*\(|"
    r"\bimport marshal\b|__import__\s*\("
)


def test_no_eval_exec_or_pickle_in_the_package() -> None:
    offenders = [
        f"{path.relative_to(SOURCE)}:{n}: {line.strip()}"
        for path in SOURCE.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert offenders == []


def test_trust_remote_code_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ModelHost().trust_remote_code is False
    assert build_parser().parse_args(["serve"]).trust_remote_code is False
    assert build_parser().parse_args(["serve", "--trust-remote-code"]).trust_remote_code is True
    seen: dict[str, object] = {}
    from transformer_lens import TransformerBridge

    original = TransformerBridge.boot_transformers

    def spy(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(TransformerBridge, "boot_transformers", spy)
    ModelHost().load("toy-induction")
    assert seen["trust_remote_code"] is False


def _request(request_id: int, method: str, params: dict) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}) + "\n"


@pytest.mark.subprocess
def test_stdout_carries_only_json_rpc() -> None:
    """A real server session with progress, errors and a model load: every stdout line is JSON-RPC."""
    process = spawn_toy_server()
    assert process.stdin and process.stdout
    calls = {
        2: ("tokenize", {"text": "w1 w2"}),
        3: ("tokenize", {"text": ""}),
        4: ("load_model", {"model": "/no/such/folder"}),
        5: ("load_model", {"model": "toy-induction"}),
        6: ("no_such_tool", {}),
        7: ("tokenize", {"text": 12}),
    }
    try:
        process.stdin.write(
            _request(
                1,
                "initialize",
                {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "stdout-purity-test", "version": "0"},
                },
            )
        )
        process.stdin.flush()
        lines = [process.stdout.readline()]
        process.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        for request_id, (name, arguments) in calls.items():
            process.stdin.write(
                _request(
                    request_id,
                    "tools/call",
                    {"name": name, "arguments": arguments, "_meta": {"progressToken": f"p{request_id}"}},
                )
            )
        process.stdin.flush()
        answered: set[int] = set()
        deadline = time.monotonic() + 120
        while answered != set(calls) and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            message = json.loads(line)
            if "id" in message and "method" not in message:
                answered.add(message["id"])
        process.stdin.close()
        lines.extend(process.stdout.readlines())
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    messages = [json.loads(line) for line in lines if line.strip()]
    assert all(message.get("jsonrpc") == "2.0" for message in messages)
    assert answered == set(calls)
    results = {m["id"]: m for m in messages if "id" in m and "method" not in m}
    assert results[2]["result"]["structuredContent"]["n_tokens"] == 3
    assert results[3]["result"]["isError"] and "empty" in results[3]["result"]["content"][0]["text"]
    assert results[4]["result"]["isError"]
    assert results[5]["result"]["structuredContent"]["n_layers"] == 2
    assert "error" in results[6] or results[6]["result"]["isError"]
    assert "error" in results[7] or results[7]["result"]["isError"]
    assert any(m.get("method") == "notifications/progress" for m in messages)
