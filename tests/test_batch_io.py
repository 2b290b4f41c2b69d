"""`lens-mcp batch` loses nothing: it never overwrites its input, a non-UTF-8 line fails alone, output errors
exit 2 with a message, progress without a terminal is throttled, and NaN in a line is named as NaN."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lens_mcp.cli.main import main
from lens_mcp.cli.scripted import ProgressLine

TOY = ["--model", "toy-induction", "--device", "cpu", "--no-progress"]


def tokenize_line(text: str) -> str:
    return json.dumps({"tool": "tokenize", "arguments": {"text": text}}, ensure_ascii=False)


def test_the_output_may_not_be_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = tmp_path / "calls.jsonl"
    original = tokenize_line("w1") + "\n"
    calls.write_text(original)
    (tmp_path / "link.jsonl").symlink_to(calls)
    for target in (str(calls), str(tmp_path / "." / "calls.jsonl"), str(tmp_path / "link.jsonl")):
        assert main(["batch", str(calls), "-o", target, *TOY]) == 2
        assert "is the input file" in capsys.readouterr().err
        assert calls.read_text() == original


def test_a_line_that_is_not_utf8_fails_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = tmp_path / "calls.jsonl"
    bad = b'{"tool": "tokenize", "arguments": {"text": "w\xff2"}}'
    calls.write_bytes(
        tokenize_line("w1").encode()
        + b"\n"
        + bad
        + b"\n"
        + tokenize_line("w3 \u2028 w4").encode()  # U+2028 inside a JSON string is not a line break
        + b"\n"
    )
    assert main(["batch", str(calls), *TOY]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["line"], r["ok"]) for r in records] == [(1, True), (2, False), (3, True)]
    column = bad.index(b"\xff") + 1
    assert f"not valid UTF-8 (byte 0xff at character {column})" in records[1]["error"]
    assert [pair[1] for pair in records[2]["result"]["tokens"][1:]] == ["w3", "w4"]  # one line, not two


@pytest.mark.parametrize("target", ["/dev/full", "/proc/version"])
def test_output_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    if not Path(target).exists():
        pytest.skip(f"{target} does not exist on this system")
    calls = tmp_path / "calls.jsonl"
    calls.write_text(tokenize_line("w1") + "\n" + tokenize_line("w2") + "\n")
    assert main(["batch", str(calls), "-o", target, *TOY]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the results to {target}:" in err and "Traceback" not in err


def test_progress_without_a_terminal_is_throttled() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream)
    for index in range(1, 10_001):
        progress.show(f"batch {index}/10000", force=index == 10_000)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "batch 1/10000" and lines[-1] == "batch 10000/10000"
    assert len(lines) <= 4, len(lines)


def test_nan_in_a_line_is_named_as_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = tmp_path / "calls.jsonl"
    calls.write_text(  # the first call needs the model: no load is left running when the batch ends
        tokenize_line("w1")
        + "\n"
        + '{"tool": "logit_lens", "arguments": {"prompt": "w1 w2", "top_k": NaN}}\n'
        + '{"tool": "logit_lens", "arguments": {"prompt": "w1 w2", "positions": [0, -Infinity]}}\n'
    )
    assert main(["batch", str(calls), *TOY]) == 1
    _, first, second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "NaN at arguments.top_k" in first["error"] and "null" not in first["error"]
    assert "-Infinity at arguments.positions[1]" in second["error"]
