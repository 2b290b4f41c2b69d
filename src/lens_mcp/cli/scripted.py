"""`lens-mcp tools | call | batch`: the server's tools from a shell or a pipeline.

Each command builds the same server `serve` runs and talks to it through a real MCP client session (JSON-RPC
over an in-memory transport), so a script sees exactly what an agent sees: the same argument validation, the
same compact JSON, the same error messages. The model loads once per process; `tools` loads none. With
`--connect URL`, `call` and `batch` talk to a running `serve --transport http` instead, whose model is already
loaded: a shell investigation then pays for the load once, not once per command.
stdout carries results only (compact JSON); progress, logs and error messages go to stderr.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from mcp import Client
from mcp.types import CallToolResult, Tool

from lens_mcp.cli.batch_io import ListedLines, StreamedLines
from lens_mcp.errors import UsageError
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from lens_mcp.server.images import count_images, save_images
from lens_mcp.server.record import NOTE_META_KEY
from lens_mcp.server.registry import HOST_TOOLS  # tools that bring their own model: no default load for them


def compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


# ---- arguments -----------------------------------------------------------------------------------
def _schema_types(schema: dict[str, Any]) -> set[str]:
    types: set[str] = set()
    kind = schema.get("type")
    if isinstance(kind, str):
        types.add(kind)
    elif isinstance(kind, list):
        types.update(k for k in kind if isinstance(k, str))
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key, []) or []:
            if isinstance(option, dict):
                types |= _schema_types(option)
    if "enum" in schema and not types:
        types.update("string" if isinstance(v, str) else "other" for v in schema["enum"])
    return types


def parse_value(raw: str, schema: dict[str, Any] | None) -> Any:
    """A command-line value: kept as text for string arguments, else JSON when it parses, else text."""
    types = _schema_types(schema or {})
    if "string" in types and types <= {"string", "null"}:
        return None if raw == "null" and "null" in types else raw
    try:
        return json.loads(raw, parse_constant=_not_json)  # NaN/Infinity stay text: the server names them
    except ValueError:
        return raw


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_key_values(pairs: list[str], tool: Tool) -> dict[str, Any]:
    properties = (tool.input_schema or {}).get("properties", {})
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"argument {pair!r} is not key=value (e.g. text='The Eiffel Tower' layers=[0,1])")
        if key in arguments:
            raise UsageError(f"argument {key!r} is given twice")
        arguments[key] = parse_value(raw, properties.get(key))
    return arguments


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    from lens_mcp.cli.batch_io import loads_finite

    try:
        value = loads_finite(text, what)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object of arguments, got {type(value).__name__}")
    return value


def check_argument_names(tool: Tool, arguments: dict[str, Any]) -> None:
    """Refuse unknown argument names here, naming the accepted ones, before any model loads (the server
    refuses them too)."""
    properties = (tool.input_schema or {}).get("properties", {})
    unknown = sorted(set(arguments) - set(properties))
    if unknown:
        accepted = ", ".join(properties) or "no arguments"
        raise UsageError(f"{tool.name} has no argument {', '.join(map(repr, unknown))}; it takes: {accepted}")


def find_tool(tools: dict[str, Tool], name: str) -> Tool:
    tool = tools.get(name)
    if tool is None:
        raise UsageError(f"unknown tool {name!r}; the tools are: {', '.join(tools)} (`lens-mcp tools` describes them)")
    return tool


def result_text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content).strip()


def result_data(result: CallToolResult) -> Any:
    if result.structured_content is not None:
        return result.structured_content
    text = result_text(result)
    try:
        return json.loads(text)
    except ValueError:
        return text


# ---- progress ------------------------------------------------------------------------------------
class ProgressLine:
    """A one-line text progress display on stderr: redrawn in place on a terminal, one line per update
    otherwise (only for durable updates: `show(..., durable=False)` messages are shown on terminals only)."""

    PIPE_INTERVAL_S = 2.0  # without a terminal, at most one line per this many seconds

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self._shown = 0
        self._last_line = -math.inf

    def show(self, text: str, *, durable: bool = True, force: bool = False) -> None:
        if not self.enabled or (not durable and not self.tty):
            return
        if not self.tty:  # a log file or pipe: throttled (100k calls must not write 100k lines)
            now = time.monotonic()
            if now - self._last_line < self.PIPE_INTERVAL_S and not force:
                return
            self._last_line = now
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
            text = text[:width]
            self.stream.write("\r" + text + " " * max(0, self._shown - len(text)))
            self._shown = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = 0


def bar(done: int, total: int | None, width: int = 24) -> str:
    if total is None:  # streamed input: no total known
        return f"[{done} done]"
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


# ---- sessions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Remote:
    """A running `lens-mcp serve --transport http` (its /mcp endpoint) and the bearer token it wants."""

    url: str
    token: str | None = None


Server = ModelHost | Remote
CALL_TIMEOUT_S = 24 * 3600.0  # a remote call may run as long as the server's caps allow; progress keeps it alive


@asynccontextmanager
async def session(server: Server) -> AsyncIterator[tuple[Client, dict[str, Tool]]]:
    """A real MCP client session: with the server built here around `server` (JSON-RPC over memory streams,
    as over stdio; built without a start-up model, so callers start the load once they know they need it), or
    over HTTP with a running server."""
    if isinstance(server, Remote):
        async with _remote_client(server) as client:
            yield client, {tool.name: tool for tool in (await client.list_tools()).tools}
        return
    async with Client(build_server(server), mode="legacy") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        yield client, tools


@asynccontextmanager
async def _remote_client(remote: Remote) -> AsyncIterator[Client]:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {remote.token}"} if remote.token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=CALL_TIMEOUT_S))
    client = Client(
        streamable_http_client(remote.url, http_client=http), mode="legacy", read_timeout_seconds=CALL_TIMEOUT_S
    )
    async with http:
        try:
            await client.__aenter__()
        except Exception as exc:
            refused = await _refused_token(http, remote.url)
            raise UsageError(f"cannot open a session with {remote.url}: {_connect_failure(exc, refused)}") from None
        try:
            yield client
        finally:
            await client.__aexit__(None, None, None)


async def _refused_token(http: Any, url: str) -> bool:
    """Whether the server answers 401 (no token, or not one it accepts)."""
    try:
        return (await http.post(url, json={}, timeout=10)).status_code == 401
    except Exception:
        return False


def _connect_failure(exc: BaseException, refused_token: bool) -> str:
    """The innermost reason a session did not open (task groups wrap it), with a hint for the usual ones."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {exc}".strip()[:300]
    if refused_token:
        return "the server refused the bearer token (HTTP 401): pass its token with --token-file FILE or LENS_MCP_TOKEN"
    return f"{text}. Is `lens-mcp serve --transport http` running there (the URL ends in /mcp)?"


def one_line(description: str | None, limit: int = 100) -> str:
    """A tool description's first sentence on one line; when that is long, its head up to the first colon."""
    text = " ".join((description or "").split())
    cut = text.find(". ")
    text = text[: cut + 1] if cut != -1 else text
    if len(text) > limit and ": " in text:
        text = text[: text.index(": ")]
    if len(text) > limit:
        text = text[: limit - 3].rsplit(" ", 1)[0] + "..."
    return text


async def list_tools(host: Server, as_json: bool, out: TextIO) -> int:
    async with session(host) as (_, tools):
        if as_json:
            out.write(
                compact(
                    [
                        {"name": t.name, "title": t.title, "description": t.description, "input_schema": t.input_schema}
                        for t in tools.values()
                    ]
                )
                + "\n"
            )
        else:
            width = max(map(len, tools)) if tools else 0
            for tool in tools.values():
                out.write(f"{tool.name.ljust(width)}  {one_line(tool.description)}\n")
    out.flush()
    return 0


async def call_one(
    host: Server,
    start_load: Callable[[], None],
    name: str,
    pairs: list[str],
    json_arguments: str | None,
    out: TextIO,
    err: TextIO,
    image_dir: str | None = None,
    note: str | None = None,
) -> int:
    arguments = parse_json_object(json_arguments, "--json") if json_arguments is not None else {}
    progress = ProgressLine(err)

    show = progress.show

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # the SDK's names
        show(f"{name}: {message or ''} {f'{progress:g}/{total:g}' if total else ''}".strip(), durable=False)

    async with session(host) as (client, tools):
        tool = find_tool(tools, name)
        arguments.update(parse_key_values(pairs, tool))  # key=value wins over --json
        check_argument_names(tool, arguments)
        if name not in HOST_TOOLS:
            start_load()
        result = await client.call_tool(name, arguments, progress_callback=on_progress, meta=note_meta(note))
    progress.close()
    if result.is_error:
        err.write(f"lens-mcp: {name} failed: {result_text(result)}\n")
        err.flush()
        return 1
    out.write(compact(result_data(result)) + "\n")
    out.flush()
    _report_images(result, image_dir, name, err)
    return 0


def note_meta(note: object) -> Any:
    """The tools/call `_meta` that carries a note into the record (None without one)."""
    if note is None:
        return None
    if not isinstance(note, str):
        raise UsageError(f'"note" must be text, got {type(note).__name__}')
    return {NOTE_META_KEY: note}


async def build_index(
    host: ModelHost,
    start_load: Callable[[], None],
    sae: str | None,
    sae_id: str | None,
    arguments: dict[str, Any],
    out: TextIO,
    err: TextIO,
) -> int:
    """`lens-mcp index`: load the SAE when one is named, then call build_exemplar_index until the index is complete
    (each call runs within the time cap and checkpoints; the next resumes). The last result goes to stdout."""
    line = ProgressLine(err)

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # the SDK's names
        line.show(f"index: {message or ''}".strip(), durable=False)

    async with session(host) as (client, _):
        start_load()
        if sae is not None:
            loaded = await client.call_tool("load_sae", {"spec": sae, **({"sae_id": sae_id} if sae_id else {})})
            if loaded.is_error:
                line.close()
                err.write(f"lens-mcp: load_sae failed: {result_text(loaded)}\n")
                err.flush()
                return 1
        calls = 0
        while True:
            result = await client.call_tool("build_exemplar_index", arguments, progress_callback=on_progress)
            calls += 1
            if result.is_error:
                line.close()
                err.write(f"lens-mcp: build_exemplar_index failed: {result_text(result)}\n")
                err.flush()
                return 1
            data = result_data(result)
            if data.get("complete") or data.get("dry_run"):
                break
            arguments = {key: value for key, value in arguments.items() if key != "rebuild"}  # resume, never restart
            line.show(f"index: {data.get('contexts_done')}/{data.get('contexts_total')} contexts", durable=True)
    line.close()
    out.write(compact({**data, "calls": calls}) + "\n")
    out.flush()
    return 0


def _report_images(result: CallToolResult, image_dir: str | None, stem: str, err: TextIO) -> list[str]:
    """Save a result's PNG blocks under image_dir and say where (stderr); returns the paths."""
    saved = save_images(result, image_dir, stem)
    for path, about in saved:
        err.write(f"lens-mcp: wrote {path}{f' ({about})' if about else ''}\n")
    if image_dir is None and count_images(result):
        err.write(f"lens-mcp: {count_images(result)} image(s) not saved: pass --image-dir DIR to write them\n")
    err.flush()
    return [path for path, _ in saved]


def _decode(text: str) -> dict[str, Any]:
    from lens_mcp.cli.batch_io import check_utf8, loads_finite

    check_utf8(text)  # a line that is not UTF-8 fails alone
    try:
        entry = loads_finite(text)  # NaN/Infinity named as such, not sent on as null
    except ValueError as exc:
        raise UsageError(f"not valid JSON ({exc})") from exc
    if not isinstance(entry, dict):
        raise UsageError('each line must be a JSON object like {"tool": "tokenize", "arguments": {"text": "..."}}')
    return entry


def _image_stem(call_id: object, number: int, tool: str) -> str:
    """Image file names that do not collide across batches in one --image-dir: the line's id when it has one
    (made safe for a file name), else the line number, then a per-process call count."""
    global _IMAGE_CALLS
    _IMAGE_CALLS += 1
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(call_id))[:40] if call_id is not None else f"line{number}"
    return f"{label}-{tool}-{os.getpid()}-{_IMAGE_CALLS}"


_IMAGE_CALLS = 0


def _tool_name(entry: dict[str, Any]) -> str | None:
    name = entry.get("tool", entry.get("name"))
    return name if isinstance(name, str) else None


def _first_tool(text: str) -> str | None:
    try:
        return _tool_name(_decode(text))
    except UsageError:
        return None


def _call_of(entry: dict[str, Any], tools: dict[str, Tool]) -> tuple[str, dict[str, Any]]:
    """One decoded JSONL line -> (tool name, arguments); raises UsageError for anything malformed."""
    name = _tool_name(entry)
    if name is None:
        raise UsageError('missing "tool" (the tool name), e.g. {"tool": "tokenize", "arguments": {"text": "..."}}')
    arguments = entry.get("arguments", entry.get("args"))
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise UsageError(f'"arguments" must be a JSON object, got {type(arguments).__name__}')
    tool = find_tool(tools, name)
    check_argument_names(tool, arguments)
    return name, arguments


async def run_batch(
    host: Server,
    start_load: Callable[[], None],
    lines: StreamedLines | ListedLines | list[str],
    out: TextIO,
    err: TextIO,
    show_progress: bool = True,
    image_dir: str | None = None,
) -> int:
    source = ListedLines(lines) if isinstance(lines, list) else lines
    total = source.total
    progress = ProgressLine(err, enabled=show_progress)
    show = progress.show
    failures = index = 0
    async with session(host) as (client, tools):
        progress.show(f"batch {bar(0, total)}")
        number = 0
        async for text in source:
            number += 1
            if not text.strip():
                continue
            index += 1
            if index == 1 and _first_tool(text) not in HOST_TOOLS:
                start_load()  # a batch that starts with load_model brings its own model
            record: dict[str, Any] = {"line": number, "tool": None}
            label = f"batch {bar(index - 1, total)} line {number}"

            async def on_progress(
                progress: float, total: float | None, message: str | None, label: str = label
            ) -> None:
                show(f"{label}: {message or ''}", durable=False)

            started = time.perf_counter()
            try:
                entry = _decode(text)
                record["tool"] = _tool_name(entry)
                if "id" in entry:
                    record["id"] = entry["id"]
                name, arguments = _call_of(entry, tools)
                meta = note_meta(entry.get("note"))
                result = await client.call_tool(name, arguments, progress_callback=on_progress, meta=meta)
                if result.is_error:
                    record.update(ok=False, error=result_text(result))
                else:
                    record.update(ok=True, result=result_data(result))
                    paths = save_images(result, image_dir, _image_stem(record.get("id"), number, name))
                    if paths:
                        record["images"] = [path for path, _ in paths]
            except UsageError as exc:
                record.update(ok=False, error=str(exc))
            except Exception as exc:  # a protocol failure on one call must not lose the rest of the batch
                record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            record["seconds"] = round(time.perf_counter() - started, 4)
            failures += not record["ok"]
            out.write(compact(record) + "\n")
            out.flush()
            status = "ok" if record["ok"] else "error"
            progress.show(
                f"batch {bar(index, total)} line {number} {record['tool'] or '?'}: {status}", force=index == total
            )
    progress.close()
    err.write(f"lens-mcp batch: {index} calls, {index - failures} ok, {failures} failed\n")
    err.flush()
    return 0 if failures == 0 else 1
