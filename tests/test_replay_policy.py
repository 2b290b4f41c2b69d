"""Records are meant to be shared, so replay loads only what the operator allows: a record's model path or
load_model/load_sae path is refused outside --load-root (paths and Hub names are off without it, as on a
network server), and what the record will load is shown before anything loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lens_mcp.cli.main import main

TOY = Path(__file__).resolve().parents[1] / "src" / "lens_mcp" / "builtin" / "toy_induction"


def _record(path: Path, spec: str, calls: list[dict]) -> Path:
    model = {"spec": spec, "source": "local", "device": "cpu", "dtype": "float32", "fingerprint": None}
    lines = [
        {"n": i + 1, "time": "2026-12-05T00:00:00+00:00", "ok": False, "error": "x", "seconds": 0.1, "model": model}
        | call
        for i, call in enumerate(calls)
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def test_a_record_naming_a_path_is_refused_without_load_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "elsewhere" / "toy"
    shutil.copytree(TOY, folder)
    record = _record(tmp_path / "r.jsonl", str(folder), [{"tool": "tokenize", "arguments": {"text": "w3"}}])
    status = main(["replay", str(record), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"this record loads: model {folder}" in err  # shown before loading
    assert "is not allowed" in err and "--load-root" in err
    assert "Loading weights" not in err  # refused before anything loads


def test_load_root_lets_the_record_load_inside_it_and_its_load_model_lines_are_confined(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    shutil.copytree(TOY, root / "toy")
    outside = tmp_path / "outside"
    shutil.copytree(TOY, outside)
    record = _record(
        tmp_path / "r.jsonl",
        str(root / "toy"),
        [
            {"tool": "tokenize", "arguments": {"text": "w3"}},
            {"tool": "load_model", "arguments": {"model": str(outside)}},
            {"tool": "load_sae", "arguments": {"spec": str(outside)}},
        ],
    )
    main(["replay", str(record), "--device", "cpu", "--json", "--load-root", str(root)])
    captured = capsys.readouterr()
    assert f"load_model {outside}" in captured.err and f"load_sae {outside}" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    refused = {d["tool"]: json.dumps(d) for d in summary["differing"] if d["tool"] in ("load_model", "load_sae")}
    assert "load_model: model: loading" in refused["load_model"]  # the policy's refusal, not a load
    assert "load_sae: spec: loading an SAE from" in refused["load_sae"]
