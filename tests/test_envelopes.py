"""Malformed stdio envelopes get a JSON-RPC error carrying their id instead of no answer at all."""

from __future__ import annotations

import json
import select
import time
from collections.abc import AsyncIterator

import pytest

from lens_mcp.server.envelopes import ValidatingLines, refusal_for, scan_envelope
from tests.mcp_client import spawn_toy_server

DEEP = "[" * 300 + "]" * 300
MALFORMED = {
    2: ('{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"tokenize","arguments":{"text":"\\ud800"}}}'),
    3: '{"jsonrpc":"2.0","id":3,"method":"tools/list","params":[1,2]}',
    "deep": '{"jsonrpc":"2.0","id":"deep","method":"tools/call","params":{"name":"t","arguments":{"x":' + DEEP + "}}}",
}
EXPECTED = {2: (-32600, "lone UTF-16 surrogate"), 3: (-32602, "params must be an object"), "deep": (-32600, "nested")}


def test_scan_finds_top_level_members_at_any_depth() -> None:
    members, depth = scan_envelope(MALFORMED["deep"]) or ({}, 0)
    assert members["id"] == "deep" and members["method"] == "tools/call" and members["params"] is dict
    assert depth == 303
    members, _ = scan_envelope('{"params": {"id": 9}, "id": 7, "method": "x"}') or ({}, 0)
    assert members["id"] == 7  # the nested "id" is not the request's
    assert scan_envelope("[1, 2]") is None and scan_envelope("not json") is None


def test_refusals_carry_the_id_and_the_code() -> None:
    for key, line in MALFORMED.items():
        refusal = refusal_for(line, ValueError("x" if key != "deep" else "recursion limit exceeded"))
        assert refusal is not None and refusal.id == key
        code, words = EXPECTED[key]
        assert refusal.error.code == code and words in refusal.error.message
    assert refusal_for('{"jsonrpc":"2.0","method":"notifications/x","params":[]}', ValueError()) is None
    parse = refusal_for("{not json", ValueError())
    assert parse is not None and parse.id is None and parse.error.code == -32700
    paired = '{"jsonrpc":"2.0","id":1,"method":"x","params":{"t":"\\ud83d\\ude00"}}'
    assert "surrogate" not in refusal_for(paired, ValueError("other")).error.message


async def test_the_layer_forwards_good_lines_and_answers_bad_ones() -> None:
    good = '{"jsonrpc":"2.0","id":1,"method":"ping"}'
    note = '{"jsonrpc":"2.0","method":"notifications/initialized"}'

    async def source() -> AsyncIterator[str]:
        for line in (good, *MALFORMED.values(), note, "[1,2]"):
            yield line + "\n"

    answered = []

    async def answer(refusal: object) -> None:
        answered.append(refusal)

    forwarded = [line.strip() async for line in ValidatingLines(source(), answer)]
    assert forwarded == [good, note, "[1,2]"]  # what has no id goes on to the SDK as before
    assert [r.id for r in answered] == [2, 3, "deep"]


@pytest.mark.subprocess
def test_a_real_stdio_server_answers_malformed_envelopes() -> None:
    process = spawn_toy_server()
    assert process.stdin and process.stdout
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    lines = [json.dumps(initialize), '{"jsonrpc":"2.0","method":"notifications/initialized"}']
    lines += [*MALFORMED.values(), "not json at all", '{"jsonrpc":"2.0","id":9,"method":"ping"}']
    answers: dict[object, dict] = {}
    try:
        process.stdin.write("\n".join(lines) + "\n")
        process.stdin.flush()
        deadline = time.monotonic() + 90
        while len(answers) < 6 and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1)
            if ready:
                line = process.stdout.readline()
                if not line:
                    break
                message = json.loads(line)
                answers[message.get("id")] = message
    finally:
        process.kill()
        process.wait()
    for key, (code, words) in EXPECTED.items():
        assert key in answers, f"no answer for request {key!r}: {sorted(map(str, answers))}"
        assert answers[key]["error"]["code"] == code and words in answers[key]["error"]["message"]
    assert answers[None]["error"]["code"] == -32700
    assert answers[9]["result"] == {}  # the session goes on
