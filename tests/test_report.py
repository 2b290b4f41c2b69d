"""lens-mcp report: one self-contained HTML page per record, checked as text and in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lens_mcp.cli.main import main

PROMPT = "w1 w2 w3 w1 w2"
CALLS = [
    {"tool": "tokenize", "arguments": {"text": "w3"}},
    {"tool": "patch_sweep", "arguments": {"clean_prompt": PROMPT, "corrupted_prompt": "w1 w2 w3 w4 w2", "answer": " w3", "wrong_answer": " w4"}},
    {"tool": "induction_scores", "arguments": {"seq_len": 10}},
    {"tool": "attention_pattern", "arguments": {"prompt": PROMPT, "layer": 9, "head": 0}},
]  # fmt: skip
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("report")
    calls = folder / "calls.jsonl"
    calls.write_text("\n".join(json.dumps(c) for c in CALLS) + "\n", encoding="utf-8")
    main(["batch", str(calls), "-o", str(folder / "out.jsonl"), "--model", "toy-induction", "--device", "cpu",
          "--no-progress", "--record", str(folder / "rec")])  # fmt: skip
    (record,) = (folder / "rec").glob("*.jsonl")
    with record.open("a", encoding="utf-8") as file:
        file.write('{"n": 5, "tool": "tokeni')  # a half-written last line, as after kill -9
    page = folder / "report.html"
    assert main(["report", str(record), "-o", str(page)]) == 0
    return record, page


def test_report_is_self_contained_with_every_call(report: tuple[Path, Path]) -> None:
    _, page = report
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    # no network: no external URL in any src/href, no external script or stylesheet
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html
    for n, call in enumerate(CALLS, start=1):
        assert f'id="call-{n}"' in html and call["tool"] in html
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', html)
    assert len(images) == 1 + 3  # patch_sweep's grid, induction's three grids
    assert "layer=9 is out of range" in html and 'class="error"' in html
    assert "xxh3-128:" in html and "transformer_lens" in html and "toy-induction" in html
    assert "half-written last line" in html
    assert "1 = this clean activation alone restores the clean behaviour" in html  # the meaning line


def test_report_of_a_missing_record_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "r.html")]) == 2


@pytest.mark.subprocess
def test_report_renders_in_headless_chromium(report: tuple[Path, Path], tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("no chromium here: install Debian's `chromium` package (apt-get install chromium) to run this")
    _, page = report
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    loaded = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert loaded is not None, "the page's script did not run"
    assert loaded.group(1) == loaded.group(2) == "4"  # every embedded heatmap decoded
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console  # no console errors or warnings from the page
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, "--hide-scrollbars", "--window-size=1200,1400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 1400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # a rendered page, not a blank one


def test_a_crafted_record_and_a_huge_grid_make_a_bounded_page(tmp_path: Path) -> None:
    """A non-numeric `seconds` does not stop the report; a result of 600 x 600 cells is neither drawn nor
    inlined whole, and the page says so."""
    import time

    from lens_mcp.cli.report import MAX_SHOWN_RESULT_CHARS, render_report
    from lens_mcp.server.record import read_record

    grid = [[0.1234] * 600 for _ in range(600)]
    lines = [
        {"n": 1, "time": "t", "tool": "tokenize", "arguments": {}, "ok": True, "result": {"n_tokens": 1}, "seconds": "abc"},
        {"n": 2, "time": "t", "tool": "patch_sweep", "arguments": {}, "ok": True, "seconds": 1.5,
         "result": {"meaning": "m", "grid": grid}},
    ]  # fmt: skip
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    started = time.perf_counter()
    page = render_report(read_record(path))
    assert time.perf_counter() - started < 20
    assert "heatmap not drawn: the result holds more than" in page and "cut here" in page
    assert len(page) < 3 * MAX_SHOWN_RESULT_CHARS


def test_a_folder_of_records_reads_as_a_story(tmp_path: Path) -> None:
    """Several records (one per `call`) merged in time order, each step's note a heading, a pairs= dataset shown in
    full once and named afterwards, and the main result lists (top cells) as tables."""
    records = tmp_path / "rec"
    dataset = [
        {"clean_prompt": PROMPT, "corrupted_prompt": "w1 w2 w3 w4 w2", "answer": " w3", "wrong_answer": " w4"},
        {
            "clean_prompt": "w5 w6 w7 w5 w6",
            "corrupted_prompt": "w5 w6 w7 w8 w6",
            "answer": " w7",
            "wrong_answer": " w8",
        },
    ]
    toy = ["--model", "toy-induction", "--device", "cpu", "--record", str(records)]
    first = ["call", "patch_sweep", "--json", json.dumps({"pairs": dataset, "component": "heads"}), *toy]
    assert main([*first, "--note", "Which heads matter?"]) == 0
    assert main(["call", "tokenize", "text=w3", *toy]) == 0
    calls = tmp_path / "calls.jsonl"
    line = {"tool": "patch_sweep", "arguments": {"pairs": dataset, "component": "resid_pre"}, "note": "And where?"}
    calls.write_text(json.dumps(line) + "\n", encoding="utf-8")
    assert main(["batch", str(calls), "-o", str(tmp_path / "out.jsonl"), "--no-progress", *toy]) == 0
    files = sorted(records.glob("*.jsonl"))
    assert len(files) == 3
    page = tmp_path / "story.html"
    assert main(["report", str(records), "-o", str(page)]) == 0
    html = page.read_text(encoding="utf-8")
    assert all(path.name in html for path in files) and "3 files, calls merged in time order" in html
    # time order: the note of the first call, then the tokenize call, then the batch's step
    first_step, tokenize, second_step = (
        html.index(t) for t in ("Which heads matter?</h2>", "tokenize</span>", "And where?</h2>")
    )
    assert first_step < tokenize < second_step
    assert 'href="#step-1"' in html and 'href="#step-3"' in html
    assert html.count("<b>dataset D1</b>") == 1 and "dataset D1 (2 items, shown at call #1)" in html
    assert html.count(dataset[1]["corrupted_prompt"]) == 1  # in the dataset table only, not in every call
    assert "<p><b>top_cells</b></p><table>" in html


def test_report_reads_several_files_and_refuses_what_is_missing(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"n": 1, "time": "2026-01-01T00:00:02", "tool": "tokenize", "ok": true, "result": {}}\n')
    b.write_text('{"n": 1, "time": "2026-01-01T00:00:01", "tool": "model_info", "ok": true, "result": {}}\n')
    page = tmp_path / "r.html"
    assert main(["report", str(a), str(b), "-o", str(page)]) == 0
    html = page.read_text(encoding="utf-8")
    assert html.index("model_info</span>") < html.index("tokenize</span>")
    assert main(["report", str(a), str(tmp_path / "nope.jsonl"), "-o", str(page)]) == 2
