"""The record: every tool call of a server session or CLI run, one JSON line each, kept on disk.

`--record DIR` (serve, call, batch) or LENS_MCP_RECORD_DIR turns it on (off by default). Each process writes one
file, DIR/lens-mcp-<UTC time>-<command>-<pid>.jsonl, appended to and flushed + fsynced after every call, so a crash
or kill -9 loses at most the call in flight. A line holds: the call number `n`, `time` (UTC, ISO 8601), `tool`,
`arguments`, `ok`, `result` (the structured JSON the client got) or `error` (its message), `seconds`, `model`
(spec, source, device, dtype and a fingerprint of the loaded weights) and `versions` (lens-mcp, TransformerLens,
transformers, torch, mcp).

Recording is server middleware (`RecordCalls`), so every tools/call is kept, including calls the SDK refuses
before any tool runs (bad arguments, unknown tools). Readers (`read_record`) skip a half-written last line.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from lens_mcp.errors import UsageError
from lens_mcp.loading import LoadedModel
from lens_mcp.loading.fingerprint import fingerprint
from lens_mcp.model_host import ModelHost

log = logging.getLogger(__name__)

RECORD_ENV = "LENS_MCP_RECORD_DIR"
VERSIONED_PACKAGES = {
    "lens-mcp": "lens-mcp",
    "transformer_lens": "transformer-lens",
    "transformers": "transformers",
    "torch": "torch",
    "mcp": "mcp",
}
MAX_RECORDED_CHARS = 256_000
"""Arguments or a result longer than this as JSON are cut in the record (the call itself is not)."""
KEPT_CHARS = 2_000
NOTE_META_KEY = "lens-mcp/note"
"""A tools/call's `_meta` key for a note (`lens-mcp call --note`, a batch line's "note"): kept on its record line,
shown by `lens-mcp report` as the heading of that step of the investigation."""
MAX_NOTE_CHARS = 500


# ---- facts kept on every line -------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for key, distribution in VERSIONED_PACKAGES.items():
        try:
            found[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found[key] = None
    if found["lens-mcp"] is None:
        from lens_mcp import __version__

        found["lens-mcp"] = __version__
    return found


def model_facts(model: LoadedModel | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return {
        "spec": model.spec.name,
        "source": model.spec.source,
        "device": model.device,
        "dtype": model.dtype_name,
        "fingerprint": fingerprint(model),
    }


# ---- writing -------------------------------------------------------------------------------------
def _new_file(folder: Path, stem: str) -> tuple[Path, Any]:
    """A record file of its own: two recorders of one process in the same second get stem.jsonl, stem-2.jsonl."""
    for number in range(1, 1000):
        path = folder / (f"{stem}.jsonl" if number == 1 else f"{stem}-{number}.jsonl")
        try:
            return path, open(path, "x", encoding="utf-8")
        except FileExistsError:
            if not folder.is_dir():
                raise
    raise OSError(f"no free record file name for {stem} in {folder}")


class Recorder:
    """One append-only JSONL file; `write` is thread-safe and durable (flush + fsync) per line."""

    def __init__(self, directory: str | os.PathLike[str], command: str = "serve") -> None:
        folder = Path(directory).expanduser()
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        stem = f"lens-mcp-{stamp}-{command}-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.path, self._file = _new_file(folder, stem)
        except FileExistsError:
            raise UsageError(f"--record {directory}: that is a file; --record takes a folder to write into") from None
        except OSError as exc:
            raise UsageError(
                f"--record {directory}: cannot write a record there ({exc.strerror or exc}); pass a writable folder"
            ) from None
        self._lock = threading.Lock()
        self._count = 0
        self._failing = False
        self.versions = versions()

    def record(
        self,
        model: LoadedModel | None,
        tool: str,
        arguments: Any,
        *,
        started: float,
        seconds: float,
        result: Any = None,
        error: str | None = None,
        note: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "n": 0,
            "time": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="milliseconds"),
            "tool": tool,
            "arguments": _bounded(arguments),
            "ok": error is None,
        }
        if note:
            entry["note"] = note
        if error is None:
            entry["result"] = _bounded(result)
        else:
            entry["error"] = error[:MAX_RECORDED_CHARS]
        entry["seconds"] = round(seconds, 4)
        try:
            entry["model"] = model_facts(model)
        except Exception as exc:
            log.warning("weights fingerprint failed: %s", exc)
            entry["model"] = {"spec": model.spec.name if model else None, "fingerprint": None}
        entry["versions"] = self.versions
        with self._lock:
            self._count += 1
            entry["n"] = self._count
            line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=repr)
            try:
                self._file.write(line + "\n")
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:  # a full or failing disk costs the record, never the call's result
                if not self._failing:
                    log.warning("cannot write the record %s (%s): calls go on unrecorded", self.path, exc)
                self._failing = True
                return
            if self._failing:
                log.warning("the record %s is written again", self.path)
                self._failing = False

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _bounded(value: Any) -> Any:
    """`value`, or a note of its size and its first characters when its JSON is over MAX_RECORDED_CHARS."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=repr)
    if len(text) <= MAX_RECORDED_CHARS:
        return value
    return {"truncated": True, "chars": len(text), "head": text[:KEPT_CHARS]}


_RECORDERS: weakref.WeakKeyDictionary[ModelHost, Recorder] = weakref.WeakKeyDictionary()


def attach(host: ModelHost, recorder: Recorder | None) -> None:
    """Record every tool call that runs on `host` (servers built on it pick the recorder up per call)."""
    if recorder is None:
        _RECORDERS.pop(host, None)
    else:
        _RECORDERS[host] = recorder


def recorder_of(host: ModelHost) -> Recorder | None:
    return _RECORDERS.get(host)


def start_recording(
    host: ModelHost, directory: str | None, command: str, say: Callable[[str], None]
) -> Recorder | None:
    """The recorder for `--record DIR`, else LENS_MCP_RECORD_DIR, else none; attached to `host`."""
    directory = directory or os.environ.get(RECORD_ENV) or None
    if not directory:
        return None
    recorder = Recorder(directory, command)
    attach(host, recorder)
    say(f"lens-mcp: recording every call to {recorder.path}")
    return recorder


# ---- the middleware ------------------------------------------------------------------------------
def _outcome(result: Any) -> tuple[bool, Any, str | None]:
    """(ok, structured result, error text) of a tools/call answer (a CallToolResult or its wire mapping)."""
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    if not isinstance(result, Mapping):
        return True, None, None
    content = result.get("content") or []
    texts = [block.get("text", "") for block in content if isinstance(block, Mapping) and block.get("type") == "text"]
    if result.get("isError"):
        return False, None, texts[0] if texts else "error"
    data = result.get("structuredContent")
    if data is None and texts:
        try:
            data = json.loads(texts[0])
        except ValueError:
            data = texts[0]
    return True, data, None


class RecordCalls:
    """Server middleware: writes one record line per tools/call when a recorder is attached to the host."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        recorder = recorder_of(self.host)
        if recorder is None or getattr(ctx, "method", None) != "tools/call":
            return await call_next(ctx)
        params = ctx.params if isinstance(ctx.params, Mapping) else {}
        tool = str(params.get("name"))
        arguments = params.get("arguments") or {}
        note = _note_of(params)
        started, clock = time.time(), time.perf_counter()

        async def write(**outcome: Any) -> None:
            with anyio.CancelScope(shield=True):  # a cancelled call is recorded too
                await anyio.to_thread.run_sync(
                    lambda: recorder.record(
                        self.host.model,
                        tool,
                        arguments,
                        started=started,
                        seconds=time.perf_counter() - clock,
                        note=note,
                        **outcome,
                    )
                )

        try:
            result = await call_next(ctx)
        except BaseException as exc:
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            await write(error="cancelled" if cancelled else f"{type(exc).__name__}: {exc}")
            raise
        ok, data, error = _outcome(result)
        await write(result=data) if ok else await write(error=error)
        return result


def _note_of(params: Mapping[str, Any]) -> str | None:
    meta = params.get("_meta")
    note = meta.get(NOTE_META_KEY) if isinstance(meta, Mapping) else None
    if not isinstance(note, str) or not note.strip():
        return None
    return " ".join(note.split())[:MAX_NOTE_CHARS]


def install_recording(server: Any, host: ModelHost) -> None:
    """Put RecordCalls outside the adapter's ReadableErrors, so the record keeps the messages clients read."""
    from lens_mcp.server.readable_errors import ReadableErrors

    chain = server.middleware
    index = next((i for i, m in enumerate(chain) if isinstance(m, ReadableErrors)), len(chain))
    chain.insert(index, RecordCalls(host))


# ---- reading -------------------------------------------------------------------------------------
@dataclass
class RecordFile:
    path: Path
    entries: list[dict[str, Any]] = field(default_factory=list)
    """The calls, in file order, each with `line` (its line number in the file) added."""
    skipped: list[str] = field(default_factory=list)
    """Lines that could not be read (a half-written last line after a crash), described."""
    sources: list[Path] = field(default_factory=list)
    """The record files read (one, or several merged by `read_records`)."""


def read_record(path: str | os.PathLike[str]) -> RecordFile:
    """Every complete line of a record; unreadable lines (a half-written last one) are skipped and listed."""
    record = RecordFile(Path(path), sources=[Path(path)])
    with open(path, encoding="utf-8", errors="replace") as source:
        lines = source.read().split("\n")
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            last = number >= len(lines) - 1
            record.skipped.append(
                f"line {number}: {'half-written last line (the call in flight when the run stopped)' if last else 'not JSON'}"
            )
            continue
        if not isinstance(entry, dict) or "tool" not in entry:
            record.skipped.append(f"line {number}: not a call record")
            continue
        entry["line"] = number
        record.entries.append(entry)
    return record


def record_files(paths: list[str]) -> list[Path]:
    """The record files named: files as given, folders as every *.jsonl directly inside them (sorted)."""
    found: list[Path] = []
    for name in paths:
        path = Path(name).expanduser()
        found.extend(sorted(path.glob("*.jsonl")) if path.is_dir() else [path])
    return list(dict.fromkeys(found))


def read_records(paths: list[str]) -> RecordFile:
    """Several records (files or folders of them) as one, calls merged in time order. Each entry gains `file` (the
    record it came from) when there is more than one; its `n` and `line` stay those of its own file."""
    files = record_files(paths)
    if len(files) == 1:
        return read_record(files[0])
    merged = RecordFile(Path(paths[0]) if len(paths) == 1 else files[0].parent, sources=files)
    for path in files:
        one = read_record(path)
        for entry in one.entries:
            entry["file"] = path.name
        merged.entries.extend(one.entries)
        merged.skipped.extend(f"{path.name} {text}" for text in one.skipped)
    merged.entries.sort(key=lambda entry: str(entry.get("time", "")))  # stable: file order within one time
    return merged
