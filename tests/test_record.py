"""The record (--record DIR): one fsynced JSON line per tool call with result or error, seconds, the weights
fingerprint and versions; readers skip a half-written last line; kill -9 loses at most the call in flight;
replay finds a changed result and a different fingerprint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import xxhash

from lens_mcp.cli.main import main
from lens_mcp.cli.replay import differences, numbers_match
from lens_mcp.loading.fingerprint import compute_fingerprint
from lens_mcp.model_host import ModelHost
from lens_mcp.server import record as recording
from lens_mcp.server.app import build_server
from lens_mcp.server.record import Recorder, read_record
from tests.mcp_client import call_tool

PROMPT = "w1 w2 w3 w1 w2"


@pytest.fixture
def recorded_host(toy_host: ModelHost, tmp_path: Path) -> Iterator[tuple[ModelHost, Recorder]]:
    recorder = Recorder(tmp_path, "test")
    recording.attach(toy_host, recorder)
    try:
        yield toy_host, recorder
    finally:
        recording.attach(toy_host, None)
        recorder.close()


async def test_every_call_is_recorded_errors_included(recorded_host: tuple[ModelHost, Recorder]) -> None:
    host, recorder = recorded_host
    server = build_server(host)
    await call_tool(server, "tokenize", {"text": "w3"})
    await call_tool(server, "logit_lens", {"prompt": PROMPT, "answer": " w3", "image": True})
    await call_tool(server, "attention_pattern", {"prompt": PROMPT, "layer": 7, "head": 0})  # tool error
    await call_tool(server, "attention_pattern", {"prompt": PROMPT, "layer": "x", "head": 0})  # schema error
    await call_tool(server, "no_such_tool", {})
    entries = read_record(recorder.path).entries
    assert [e["tool"] for e in entries] == [
        "tokenize",
        "logit_lens",
        "attention_pattern",
        "attention_pattern",
        "no_such_tool",
    ]
    assert [e["n"] for e in entries] == [1, 2, 3, 4, 5]
    assert [e["ok"] for e in entries] == [True, True, False, False, False]
    first = entries[0]
    assert first["arguments"] == {"text": "w3"}
    assert first["result"]["single_token"] == [5, "w3"]
    assert entries[1]["arguments"]["image"] is True
    assert "image" not in json.dumps(entries[1]["result"])  # the record keeps results, not pictures
    assert "layer=7 is out of range" in entries[2]["error"]
    assert "layer" in entries[3]["error"] and "integer" in entries[3]["error"]  # the readable message, as sent
    assert "no_such_tool" in entries[4]["error"]
    for entry in entries:
        assert entry["seconds"] >= 0 and entry["time"].endswith("+00:00")
        assert entry["versions"]["transformer_lens"] and entry["versions"]["torch"] and entry["versions"]["lens-mcp"]
        assert entry["model"]["spec"] == "toy-induction" and entry["model"]["dtype"] == "float32"
        assert entry["model"]["fingerprint"] == recording.fingerprint(host.model)


def test_fingerprint_hashes_every_weight(toy_host: ModelHost) -> None:
    """Independent hash of the same tensors; the same weights loaded again agree; one changed weight differs."""
    bridge = toy_host.model.bridge
    digest = xxhash.xxh3_128()
    seen = set()
    for name, tensor in sorted(bridge.state_dict().items()):
        key = (tensor.data_ptr(), tensor.numel(), str(tensor.dtype))
        if key in seen:
            continue
        seen.add(key)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    assert compute_fingerprint(bridge) == f"xxh3-128:{digest.hexdigest()}"

    other = ModelHost()
    loaded = other.load("toy-induction", device="cpu")
    assert compute_fingerprint(loaded.bridge) == compute_fingerprint(bridge)
    with torch.no_grad():
        parameter = next(iter(loaded.bridge.parameters()))
        parameter.view(-1)[0] += 1e-3
    assert compute_fingerprint(loaded.bridge) != compute_fingerprint(bridge)


def test_reader_skips_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [json.dumps({"n": i, "tool": "tokenize", "arguments": {}, "ok": True, "result": {}}) for i in (1, 2)]
    path.write_text("\n".join(lines) + "\n" + lines[0][:17], encoding="utf-8")
    record = read_record(path)
    assert [e["n"] for e in record.entries] == [1, 2]
    assert len(record.skipped) == 1 and "half-written last line" in record.skipped[0]


@pytest.mark.subprocess
def test_kill_9_loses_at_most_the_call_in_flight(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    line = {"tool": "induction_scores", "arguments": {"seq_len": 20, "n_seqs": 64}}
    calls.write_text("\n".join(json.dumps(line) for _ in range(200)) + "\n", encoding="utf-8")
    record_dir = tmp_path / "record"
    process = subprocess.Popen(
        [sys.executable, "-m", "lens_mcp", "batch", str(calls), "--model", "toy-induction", "--device", "cpu",
         "--no-progress", "--record", str(record_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    answered = 0
    deadline = time.monotonic() + 90
    while answered < 5 and time.monotonic() < deadline:
        if process.stdout.readline():
            answered += 1
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert answered == 5
    files = list(record_dir.glob("*.jsonl"))
    assert len(files) == 1
    record = read_record(files[0])
    # every answered call was on disk before its answer was printed; only the last line may be cut
    assert len(record.entries) >= answered
    assert [e["n"] for e in record.entries] == list(range(1, len(record.entries) + 1))
    assert all(e["ok"] and e["result"]["induction"] for e in record.entries)
    assert len(record.skipped) <= 1
    text = files[0].read_text(encoding="utf-8")
    assert text.count("\n") >= len(record.entries)


def test_numbers_match_within_one_unit_in_the_fourth_digit() -> None:
    assert numbers_match(0.8123, 0.8124) and numbers_match(1234.0, 1235.0) and numbers_match(-2.5e-5, -2.501e-5)
    assert not numbers_match(0.8123, 0.8125) and not numbers_match(1.0, -1.0) and not numbers_match(0.001, 0.0)
    assert differences({"grid": [[1.0, 0.5]], "seconds": 3}, {"grid": [[1.0, 0.5002]], "seconds": 9}) == [
        "grid[0][1]: recorded 0.5, now 0.5002"
    ]


def _record_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    calls = tmp_path / "calls.jsonl"
    calls.write_text(
        "\n".join(
            json.dumps(c)
            for c in [
                {"tool": "tokenize", "arguments": {"text": "w3"}},
                {"tool": "head_attribution", "arguments": {"prompt": PROMPT, "answer": " w3", "image": True}},
                {"tool": "attention_pattern", "arguments": {"prompt": PROMPT, "layer": 9, "head": 0}},
            ]
        ),
        encoding="utf-8",
    )
    status = main(["batch", str(calls), "--model", "toy-induction", "--device", "cpu", "--no-progress",
                   "--record", str(tmp_path / "rec")])  # fmt: skip
    assert status == 1  # the attention_pattern call fails on purpose
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(line["seconds"] >= 0 for line in lines)  # batch lines carry seconds
    (path,) = (tmp_path / "rec").glob("*.jsonl")
    return path


def _replay(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    status = main(["replay", str(path), "--device", "cpu", "--json"])
    return status, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_replay_matches_then_finds_a_changed_result_and_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _record_calls(tmp_path, capsys)
    status, summary = _replay(path, capsys)
    assert status == 0, summary
    assert summary["calls"] == 3 and summary["same"] == 3 and summary["weights_fingerprint"]["match"]

    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    heads = entries[1]["result"]["heads"]
    heads[1][2] = round(heads[1][2] * 1.01 + 0.01, 4)  # a result that is no longer what the model computes
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join(json.dumps(e) for e in entries) + "\n", encoding="utf-8")
    status, summary = _replay(changed, capsys)
    assert status == 1
    assert summary["differ"] == 1 and summary["differing"][0]["tool"] == "head_attribution"
    assert any(d.startswith("result.heads[1][2]: recorded") for d in summary["differing"][0]["differences"])
    assert summary["weights_fingerprint"]["match"]

    for entry in entries:
        entry["model"]["fingerprint"] = "xxh3-128:" + "0" * 32
    entries[1]["result"]["heads"][1][2] = json.loads(path.read_text().splitlines()[1])["result"]["heads"][1][2]
    other = tmp_path / "other-weights.jsonl"
    other.write_text("\n".join(json.dumps(e) for e in entries) + "\n" + '{"n": 4, "too', encoding="utf-8")
    status, summary = _replay(other, capsys)
    assert status == 1
    assert summary["differ"] == 0 and not summary["weights_fingerprint"]["match"]
    assert summary["weights_fingerprint"]["recorded"] == ["xxh3-128:" + "0" * 32]
    assert len(summary["skipped_lines"]) == 1  # the half-written last line


def test_replay_text_output_names_the_differing_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _record_calls(tmp_path, capsys)
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    entries[0]["result"]["n_tokens"] = 3
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n", encoding="utf-8")
    assert main(["replay", str(path), "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "line 1 tokenize: DIFFERS: result.n_tokens: recorded 3, now 2" in out
    assert "3 calls" in out and "2 same, 1 differ" in out and "fingerprint matches" in out


@pytest.mark.subprocess
async def test_serve_over_stdio_records_with_the_flag(tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "lens_mcp", "serve", "--model", "toy-induction", "--device", "cpu", "--record", str(tmp_path)],
        env={**os.environ},
    )
    async with Client(params, mode="legacy", read_timeout_seconds=600) as client:
        drawn = await client.call_tool("logit_lens", {"prompt": PROMPT, "answer": " w3", "image": True})
        refused = await client.call_tool("logit_lens", {"prompt": PROMPT, "top_k": 0})
    assert [block.type for block in drawn.content] == ["text", "image", "text"]  # stdout stayed protocol-only
    (path,) = tmp_path.glob("lens-mcp-*-serve-*.jsonl")
    entries = read_record(path).entries
    assert [(e["tool"], e["ok"]) for e in entries] == [("logit_lens", True), ("logit_lens", False)]
    assert entries[0]["result"] == drawn.structured_content
    assert entries[1]["error"] == refused.content[0].text
