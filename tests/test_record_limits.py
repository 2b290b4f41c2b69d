"""A record never costs a result: a full disk is logged once and every call still answers; oversized arguments
and results are cut in the record, which says so."""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lens_mcp.model_host import ModelHost
from lens_mcp.server import record as recording
from lens_mcp.server.app import build_server
from lens_mcp.server.record import MAX_RECORDED_CHARS, Recorder, read_record
from tests.mcp_client import call_tool, result_data


@pytest.fixture
def recorded_host(toy_host: ModelHost, tmp_path: Path) -> Iterator[tuple[ModelHost, Recorder]]:
    recorder = Recorder(tmp_path, "test")
    recording.attach(toy_host, recorder)
    try:
        yield toy_host, recorder
    finally:
        recording.attach(toy_host, None)
        recorder.close()


class _FullDisk:
    def __init__(self, real: Any) -> None:
        self.real = real
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_full_record_disk_loses_no_result_and_is_logged_once(
    recorded_host: tuple[ModelHost, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    host, recorder = recorded_host
    full = _FullDisk(recorder._file)
    recorder._file = full
    server = build_server(host)
    with caplog.at_level(logging.WARNING, logger="lens_mcp.server.record"):
        first = await call_tool(server, "tokenize", {"text": "w3"})
        second = await call_tool(server, "tokenize", {"text": "w1 w2"})
    assert not first.is_error and not second.is_error
    assert result_data(second)["n_tokens"] == 3
    assert full.writes == 2
    warnings = [r for r in caplog.records if "record" in r.getMessage().lower()]
    assert len(warnings) == 1 and "No space left" in warnings[0].getMessage()


async def test_oversized_arguments_are_cut_in_the_record(recorded_host: tuple[ModelHost, Recorder]) -> None:
    host, recorder = recorded_host
    server = build_server(host)
    huge = "w1 " * 400_000  # 1.2 MB of text: refused by the prompt cap, recorded cut
    result = await call_tool(server, "tokenize", {"text": huge})
    assert result.is_error
    size = recorder.path.stat().st_size
    assert size < 4 * MAX_RECORDED_CHARS
    (entry,) = read_record(recorder.path).entries
    assert entry["arguments"]["truncated"] is True and entry["arguments"]["chars"] > len(huge)
    assert json.dumps(entry["arguments"]["head"]).startswith('"{')


@pytest.mark.parametrize("command", ["serve", "call"])
def test_record_into_a_file_or_an_unwritable_place_is_a_clear_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    from lens_mcp.cli.main import main

    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x", encoding="utf-8")
    arguments = ["tokenize", "text=w1"] if command == "call" else []
    # A folder below a file cannot be made (as a read-only folder cannot, for a user other than root).
    for target, words in ((a_file, "that is a file"), (a_file / "sub", "cannot write a record there")):
        status = main([command, *arguments, "--model", "toy-induction", "--record", str(target)])
        err = capsys.readouterr().err
        assert status == 2 and words in err and "Traceback" not in err
