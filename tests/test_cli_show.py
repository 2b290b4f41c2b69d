"""The CLI reaches everything the server offers: prompts, resources, images written to files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lens_mcp.cli.main import main
from lens_mcp.server.prompts import locate_fact

TOY = ["--model", "toy-induction", "--device", "cpu"]


def test_prompts_lists_every_prompt_with_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"locate_fact", "find_induction_circuit", "explain_prediction", "find_circuit"}
    assert "args: prompt answer [corrupted_prompt] [wrong_answer]" in lines["locate_fact"]


def test_prompt_prints_the_rendered_plan(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = {"prompt": "The Eiffel Tower is in the city of", "answer": " Paris"}
    assert main(["prompt", "locate_fact", *(f"{k}={v}" for k, v in arguments.items())]) == 0
    assert capsys.readouterr().out.strip() == locate_fact(**arguments).strip()  # the plan the server renders


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prompt", "nope"], "unknown prompt 'nope'"),
        (["prompt", "locate_fact", "answer= Paris"], "locate_fact needs prompt"),
        (["prompt", "locate_fact", "prompt=x", "answer=y", "colour=red"], "has no argument 'colour'"),
        (["resource", "lens://nope"], "unknown resource 'lens://nope'"),
    ],
)
def test_catalog_bad_input_is_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, *TOY]) == 2
    assert message in capsys.readouterr().err


def test_resources_and_resource(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resources"]) == 0
    uris = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert uris == ["lens://model/info", "lens://model/hooks", "lens://server/limits"]
    assert main(["resource", "lens://server/limits", "--max-top-k", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["max_top_k"] == 7
    assert main(["resource", "lens://model/info", *TOY]) == 0  # starts the model load itself
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "toy-induction" and info["meaning"]


def test_call_with_image_dir_writes_pngs_and_prints_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    argv = ["call", "induction_scores", "seq_len=10", "image=true", "--image-dir", str(folder), *TOY]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout: the JSON result alone
    assert "induction" in result
    paths = sorted(folder.glob("*.png"))
    assert [p.name for p in paths] == ["induction_scores-1.png", "induction_scores-2.png", "induction_scores-3.png"]
    for path in paths:
        assert f"lens-mcp: wrote {path} (image " in captured.err
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 200
    assert main(argv) == 0  # a second run does not overwrite the first one's files
    assert len(list(folder.glob("*.png"))) == 6


def test_call_with_image_but_no_dir_says_how_to_save(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", "logit_lens", "prompt=w1 w2 w1", "image=true", *TOY]) == 0
    assert "1 image(s) not saved: pass --image-dir DIR" in capsys.readouterr().err
