"""Input and output of `lens-mcp batch` that lose nothing: the input is never overwritten, a line that is not
UTF-8 is that line's error (not the batch's), a failing output ends the run with a clear message (exit 2), and
NaN/Infinity in a line is named as such instead of reaching the server as null."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from lens_mcp.errors import UsageError

# Lines are decoded with surrogateescape: each byte that is not UTF-8 becomes one of these code points.
_ESCAPED = range(0xDC80, 0xDD00)


class OutputError(UsageError):
    """Writing the results failed (disk full, not writable): exit status 2, no traceback."""


def same_file(input_path: str, output_path: str) -> bool:
    if input_path == "-" or output_path == "-":
        return False
    try:
        return os.path.samefile(input_path, output_path)
    except OSError:
        return os.path.realpath(input_path) == os.path.realpath(output_path)


def refuse_overwriting_input(input_path: str, output_path: str) -> None:
    if same_file(input_path, output_path):
        raise UsageError(f"-o {output_path} is the input file: the results would overwrite the calls; write elsewhere")


def read_lines(path: str) -> list[str]:
    """The lines of `path` ('-': stdin). Bytes that are not UTF-8 are kept (surrogate-escaped) so that only their
    line fails (`check_utf8`); lines split at \\n, \\r\\n and \\r only (JSON strings may hold U+2028)."""
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(path, "rb") as source:
                data = source.read()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return [line.decode("utf-8", "surrogateescape") for line in data.splitlines()]


def check_utf8(text: str) -> None:
    for column, char in enumerate(text, start=1):
        if ord(char) in _ESCAPED:
            raise UsageError(
                f"the line is not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02x} at character {column}); "
                "save the file as UTF-8"
            )


class _NonFinite:
    def __init__(self, name: str) -> None:
        self.name = name


def _where_non_finite(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, _NonFinite):
        return path, value.name
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _where_non_finite(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


def loads_finite(text: str, what: str = "the line") -> Any:
    """json.loads that refuses NaN/Infinity (not JSON), naming where they are. ValueError on other bad JSON."""
    value = json_loads(text)
    found = _where_non_finite(value, "")
    if found is not None:
        path, name = found
        raise UsageError(
            f"{what} holds {name} at {path.lstrip('.') or 'its top level'}: JSON has no {name}; give a number"
        )
    return value


def json_loads(text: str) -> Any:
    import json

    return json.loads(text, parse_constant=_NonFinite)


class GuardedOutput:
    """A text stream whose write errors become OutputError naming the target (exit 2, no traceback)."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream = stream
        self._name = "standard output" if name == "-" else name

    def _fail(self, exc: OSError) -> OutputError:
        return OutputError(f"cannot write the results to {self._name}: {exc.strerror or exc}")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise self._fail(exc) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._fail(exc) from exc

    def isatty(self) -> bool:
        return self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def close_output(stream: TextIO, name: str) -> None:
    """Close an output file; what could not be written becomes OutputError (the file is closed either way)."""
    try:
        stream.close()
    except OSError as exc:
        raise GuardedOutput(stream, name)._fail(exc) from exc
