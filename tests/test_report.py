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
