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
    assert forwarded == [good, note]  # a notification goes on to the SDK as before
    assert [r.id for r in answered] == [2, 3, "deep", None]  # a batch array is answered, id null


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


@pytest.mark.parametrize(
    ("line", "expected_id"),
    [
        ("[]", None),
        ('[{"jsonrpc":"2.0","id":1,"method":"ping"}]', None),  # a batch: not supported, answered
        ("null", None),
        ('"str"', None),
        ("3", None),
        ('{"jsonrpc":"2.0","id":5}', 5),  # no method, not a response
        ('{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', None),
        ('{"jsonrpc":"2.0","id":true,"method":"ping"}', None),
        ('{"jsonrpc":"2.0","id":1.5,"method":"ping"}', None),
        ('{"jsonrpc":"2.0","id":null,"method":"ping"}', None),
    ],
)
def test_every_invalid_request_gets_an_invalid_request_answer(line: str, expected_id: object) -> None:
    """JSON-RPC 2.0: an invalid request object is answered with -32600, id null where no valid id is found."""
    refusal = refusal_for(line, ValueError("invalid"))
    assert refusal is not None, line
    assert refusal.error.code == -32600 and refusal.id == expected_id


def test_notifications_and_responses_are_still_not_answered() -> None:
    assert refusal_for('{"jsonrpc":"2.0","method":"notifications/x","params":[]}', ValueError()) is None
    assert refusal_for('{"jsonrpc":"2.0","id":3,"result":{}}', ValueError()) is None
    assert refusal_for('{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}', ValueError()) is None
