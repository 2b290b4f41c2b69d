"""`lens-mcp tools | call | batch` as real subprocesses: outputs, exit statuses, stderr messages, clean stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mcp.types import Tool

from lens_mcp.cli.main import main
from lens_mcp.cli.scripted import parse_key_values

TOY = ["--model", "toy-induction", "--device", "cpu"]

pytestmark = pytest.mark.subprocess


def lens(*args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lens_mcp", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def lens_together(*commands: list[str], timeout: float = 180) -> list[subprocess.CompletedProcess[str]]:
    """Run several `lens-mcp` processes at once (each spends seconds importing torch) and wait for all."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "lens_mcp", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in commands
    ]
    results = []
    for args, process in zip(commands, processes, strict=True):
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return results


def only_json_line(stdout: str) -> dict:
    """stdout must be exactly one line of compact JSON: nothing else (no loading noise) may reach it."""
    assert stdout.endswith("\n") and stdout.count("\n") == 1, repr(stdout)
    data = json.loads(stdout)
    assert stdout == json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"
    return data


def test_tools_lists_every_tool_without_loading_a_model() -> None:
    # A model that cannot load: `tools` must not even try (no load error on stderr).
    done, as_json = lens_together(
        ["tools", "--model", "/no/such/model.gguf"], ["tools", "--json", "--model", "/no/such/model.gguf"]
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert {"model_info", "tokenize", "load_model"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 and len(line) < 160 for line in lines), lines
    assert "/no/such/model.gguf" not in done.stderr and "failed" not in done.stderr

    assert as_json.returncode == 0, as_json.stderr
    tools = {tool["name"]: tool for tool in json.loads(as_json.stdout)}
    assert list(tools) == names
    assert "text" in tools["tokenize"]["input_schema"]["properties"]


def test_call_prints_compact_json_and_exits_1_on_a_tool_error() -> None:
    plain, typed, failing = lens_together(
        ["call", "tokenize", "text=w3 w4", *TOY],
        # text is a string argument, so '123' stays text; prepend_bos=false is JSON; key=value overrides --json
        ["call", "tokenize", "--json", '{"text": "w9", "prepend_bos": true}', *TOY, "text=123", "prepend_bos=false"],
        ["call", "tokenize", "text=", *TOY],
    )
    assert plain.returncode == 0, plain.stderr
    data = only_json_line(plain.stdout)
    assert [pair[1] for pair in data["tokens"][1:]] == ["w3", "w4"]

    assert typed.returncode == 0, typed.stderr
    data = only_json_line(typed.stdout)
    assert data["n_tokens"] == 1 and data["is_single_token"]  # no BOS, and '123' (not w9) was tokenized
    assert data["tokens"][0][1] != "w9"

    assert failing.returncode == 1
    assert failing.stdout == ""
    assert "tokenize failed" in failing.stderr and "text is empty" in failing.stderr


def test_usage_errors_exit_2_before_loading() -> None:
    cases = [
        (["call", "no_such_tool", *TOY], "unknown tool 'no_such_tool'; the tools are: model_info"),
        (["batch", "/no/such/calls.jsonl", *TOY], "cannot read /no/such/calls.jsonl"),
    ]
    for (args, message), done in zip(cases, lens_together(*[args for args, _ in cases], timeout=90), strict=True):
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert done.stdout == "", args
        assert "Loading weights" not in done.stderr, args  # the model load never started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "tokenize", "txt=w1"], "tokenize has no argument 'txt'; it takes: text, prepend_bos"),
        (["call", "tokenize", "w1"], "is not key=value"),
        (["call", "tokenize", "text=a", "text=b"], "given twice"),
        (["call", "tokenize", "--json", "{not json"], "--json is not valid JSON"),
        (["call", "tokenize", "--json", "[1]"], "--json must be a JSON object"),
    ],
)
def test_argument_errors_in_process(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The same checks, in this process (no torch import per case); they all fail before any model load.
    assert main([*args, "--model", "/no/such/model.gguf"]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_values_follow_the_tool_schema() -> None:
    schema = {
        "properties": {
            "text": {"type": "string"},
            "layers": {"anyOf": [{"type": "array"}, {"type": "null"}]},
            "wrong": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "k": {"type": "integer"},
        }
    }
    tool = Tool(name="t", input_schema={"type": "object", **schema})
    parsed = parse_key_values(["text=123", "layers=[0, 1]", "wrong=null", "k=5", "free=true", "other=a b"], tool)
    assert parsed == {"text": "123", "layers": [0, 1], "wrong": None, "k": 5, "free": True, "other": "a b"}
    assert parse_key_values(["text=x=y", "layers=null"], tool) == {"text": "x=y", "layers": None}


def test_batch_writes_one_line_per_call_in_order_with_errors(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    calls.write_text(
        "\n".join(
            [
                json.dumps({"tool": "tokenize", "arguments": {"text": "w1 w2"}, "id": "first"}),
                "this is not json",
                "",
                json.dumps({"name": "model_info", "args": {}}),
                json.dumps({"tool": "no_such_tool"}),
                json.dumps({"tool": "tokenize", "arguments": {"text": ""}}),
                json.dumps([1, 2]),
                json.dumps({"tool": "tokenize", "arguments": {"text": "w5", "bogus": 1}}),
                json.dumps({"tool": "tokenize", "arguments": {"text": "w5"}}),
            ]
        )
        + "\n"
    )
    done = lens("batch", str(calls), *TOY)
    assert done.returncode == 1  # some calls failed
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 4, 5, 6, 7, 8, 9]
    assert [r["ok"] for r in records] == [True, False, True, False, False, False, False, True]
    first, bad_json, info, unknown, empty, not_object, bogus, last = records
    assert first["id"] == "first" and first["tool"] == "tokenize"
    assert [pair[1] for pair in first["result"]["tokens"][1:]] == ["w1", "w2"]
    assert "not valid JSON" in bad_json["error"] and bad_json["tool"] is None
    assert info["result"]["name"] == "toy-induction" and info["result"]["n_layers"] == 2
    assert "unknown tool 'no_such_tool'" in unknown["error"]
    assert "text is empty" in empty["error"]
    assert "JSON object" in not_object["error"]
    assert "no argument 'bogus'" in bogus["error"]
    assert last["result"]["is_single_token"]
    # progress bar and summary on stderr
    assert "[########################] 8/8" in done.stderr
    assert "8 calls, 3 ok, 5 failed" in done.stderr


def test_batch_from_stdin_to_a_file_starting_with_load_model(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    lines = [json.dumps({"tool": "load_model", "arguments": {"model": "toy-induction", "device": "cpu"}})]
    lines += [json.dumps({"tool": "tokenize", "arguments": {"text": f"w{i}"}}) for i in range(4)]
    # --model names a model that cannot load: a batch that starts with load_model must not try it
    done = lens(
        "batch", "-", "-o", str(out), "--no-progress", "--model", "/no/such/model.gguf", stdin="\n".join(lines) + "\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "batch [" not in done.stderr  # --no-progress
    assert "/no/such/model.gguf" not in done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["result"]["name"] == "toy-induction"
    assert [r["result"]["tokens"][1][1] for r in records[1:]] == [f"w{i}" for i in range(4)]


def test_batch_output_that_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = tmp_path / "calls.jsonl"
    calls.write_text('{"tool": "tokenize", "arguments": {"text": "w1"}}\n')
    assert main(["batch", str(calls), "-o", str(tmp_path / "no" / "dir" / "out.jsonl"), *TOY]) == 2
    assert "cannot write" in capsys.readouterr().err
