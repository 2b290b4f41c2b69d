"""A validating layer around the stdio reader: a request whose JSON-RPC envelope the SDK cannot validate still
gets an answer.

The SDK's stdio reader validates each line (`jsonrpc_message_adapter.validate_json`) and, when that fails, passes
the exception on with no id, so the request is dropped and the client waits until its own timeout. That happens
for a lone surrogate escape ("\\ud800"), `params` that is not an object, and nesting deeper than its parser allows
(about 200 levels). Here each line is checked first with the same validator; a failing line is not forwarded, and
is answered with a JSON-RPC error carrying its id, found by a scan of the top-level object that needs no full
parse (so it works however deep the nesting): -32602 when `params` is not an object, -32600 otherwise, and -32700
with id null for a line that is not JSON at all. Lines without an id (notifications, responses) are forwarded
unchanged, as before.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

log = logging.getLogger(__name__)

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602
_DECODER = json.JSONDecoder()
MAX_DEPTH = 200  # the SDK's JSON parser (jiter) refuses deeper nesting
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def scan_envelope(line: str) -> tuple[dict[str, Any], int] | None:
    """The scalar members of a line's top-level object ({"id": 3, "method": "x", "params": <list>...}) and the
    deepest nesting seen, without parsing nested values (O(n), no recursion). For a member whose value is a
    container, its key maps to `dict` or `list` (the type). None when the line is not a JSON object."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    members: dict[str, Any] = {}
    depth = max_depth = 0
    index, length = 0, len(text)
    key: str | None = None
    expect_key = False
    while index < length:
        char = text[index]
        if char == '"':
            try:
                value, end = _DECODER.raw_decode(text, index)
            except ValueError:
                return None
            if depth == 1 and expect_key:
                key, expect_key = value, False
            elif depth == 1 and key is not None:
                members[key], key = value, None
            index = end
            continue
        if char in "{[":
            if depth == 1 and key is not None:
                members[key], key = dict if char == "{" else list, None
            depth += 1
            max_depth = max(max_depth, depth)
            expect_key = depth == 1 and char == "{"
        elif char in "}]":
            depth -= 1
            if depth == 0:
                break
        elif char == "," and depth == 1:
            expect_key = True
        elif depth == 1 and key is not None and char not in " \t\r\n:":
            try:
                value, end = _DECODER.raw_decode(text, index)  # a number, true, false or null
            except ValueError:
                return None
            members[key], key = value, None
            index = end
            continue
        index += 1
    return members, max_depth


def refusal_for(line: str, problem: Exception) -> types.JSONRPCError | None:
    """The error answer for a line the SDK's validator refused, or None when it has no id to answer to."""
    scanned = scan_envelope(line)
    members, depth = scanned or ({}, 0)
    request_id = members.get("id")
    if "method" not in members or not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
        if not _is_json(line):
            return _error(None, PARSE_ERROR, "Parse error: the line is not valid JSON")
        return None  # a notification, a response, or JSON that is not a request: nothing to answer to
    if "recursion limit" in str(problem):
        return _error(
            request_id,
            INVALID_REQUEST,
            f"Invalid request: nested {depth} levels deep; the server reads at most {MAX_DEPTH} levels",
        )
    params = members.get("params", dict)
    if params is not dict and "params" in members:
        kind = "an array" if params is list else "null" if params is None else type(params).__name__
        return _error(request_id, INVALID_PARAMS, f"Invalid params: params must be an object, got {kind}")
    if _LONE_SURROGATE.search(line):
        reason = "a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), which is not text"
    else:
        reason = _first_error(problem)
    return _error(request_id, INVALID_REQUEST, f"Invalid request: {reason}")


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except RecursionError:
        return True  # deeper than Python's parser goes; well-formed or not, not a parse error to report
    except ValueError:
        return False
    return True


def _first_error(problem: Exception) -> str:
    if isinstance(problem, ValidationError):
        try:
            first = problem.errors(include_url=False)[0]
            return f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', '')}"[:300]
        except Exception:
            pass
    return f"{type(problem).__name__}: {str(problem).splitlines()[0] if str(problem) else ''}"[:300]


def _error(request_id: str | int | None, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))


class ValidatingLines:
    """The stdin lines for the SDK's reader, minus the lines it would drop; those are answered via `answer`."""

    def __init__(self, lines: AsyncIterator[str], answer: Callable[[types.JSONRPCError], Any]) -> None:
        self._lines = lines
        self._answer = answer

    def __aiter__(self) -> ValidatingLines:
        return self

    async def __anext__(self) -> str:
        while True:
            line = await self._lines.__anext__()
            try:
                types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except Exception as exc:
                refusal = refusal_for(line, exc)
                if refusal is not None:
                    log.warning("answered a malformed request (id %r): %s", refusal.id, refusal.error.message)
                    await self._answer(refusal)
                    continue
            return line


def _claimed_stdin() -> tuple[Any, Callable[[], None] | None]:
    """fd 0 claimed the way the SDK claims it (diverted to the null device while serving), else stdin's buffer."""
    try:
        from mcp.server.stdio import _claim_fd, _open_stdin_diversion  # private; present in mcp 2.x

        return _claim_fd(0, sys.stdin, "rb", _open_stdin_diversion)
    except (ImportError, AttributeError, RuntimeError):
        return sys.stdin.buffer, None


async def run_stdio(server: MCPServer) -> None:
    """MCPServer.run_stdio_async with the validating layer in front of the reader."""
    lowlevel = server._lowlevel_server
    buffer, release = _claimed_stdin()
    answers_send, answers_receive = anyio.create_memory_object_stream[types.JSONRPCError](64)
    wrapper = io.TextIOWrapper(buffer, encoding="utf-8", errors="replace")
    text = anyio.wrap_file(wrapper)
    try:
        lines = ValidatingLines(text.__aiter__(), answers_send.send)
        async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]
            async with anyio.create_task_group() as group:

                async def forward() -> None:
                    async with answers_receive:
                        async for refusal in answers_receive:
                            await write_stream.send(SessionMessage(refusal))

                group.start_soon(forward)
                await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
                group.cancel_scope.cancel()
    finally:
        wrapper.detach()  # the buffer is not ours to close
        if release is not None:
            release()


def serve_stdio(server: MCPServer) -> None:
    anyio.run(run_stdio, server)
