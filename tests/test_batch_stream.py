"""`lens-mcp batch -` runs each line as it arrives and flushes its answer, so a pipeline (or an agent) can write
one call, read its answer, then write the next; image files of separate batches in one folder never collide."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lens_mcp.cli.main import main


@pytest.mark.subprocess
def test_batch_from_stdin_answers_each_line_before_the_next_is_written() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lens_mcp",
            "batch",
            "-",
            "--model",
            "toy-induction",
            "--device",
            "cpu",
            "--no-progress",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    answers: list[dict] = []
    try:
        for text in ("w1", "w1 w2"):
            process.stdin.write(json.dumps({"tool": "tokenize", "arguments": {"text": text}, "id": text}) + "\n")
            process.stdin.flush()
            got: list[str] = []
            stdout = process.stdout
            reader = threading.Thread(target=lambda got=got, stdout=stdout: got.append(stdout.readline()))
            reader.start()
            reader.join(timeout=120)  # stdin is still open: the answer must come anyway
            assert got and got[0], f"no answer to {text!r} while stdin stayed open"
            answers.append(json.loads(got[0]))
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    assert [a["id"] for a in answers] == ["w1", "w1 w2"]
    assert [a["result"]["n_tokens"] for a in answers] == [2, 3]
    assert process.returncode == 0


def test_image_files_of_two_batches_in_one_folder_do_not_collide(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    line = {"tool": "logit_lens", "arguments": {"prompt": "w1 w2 w3", "image": True}, "id": "lens"}
    calls.write_text(json.dumps(line) + "\n", encoding="utf-8")
    images = tmp_path / "figs"
    for _ in range(2):
        output = tmp_path / "out.jsonl"
        status = main(["batch", str(calls), "-o", str(output), "--model", "toy-induction", "--device", "cpu",
                       "--no-progress", "--image-dir", str(images)])  # fmt: skip
        assert status == 0
    names = sorted(p.name for p in images.iterdir())
    assert len(names) == len(set(names)) >= 2
    assert all(name.startswith("lens-logit_lens-") for name in names)
