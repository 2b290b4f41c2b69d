"""A hostile cfg.json or weights file is refused with a message naming the field, never "failed unexpectedly",
never echoed back as a 301-digit number, and never loaded with NaN in it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lens_mcp.errors import LensError
from lens_mcp.tools.features._sae_format import read_sae
from tests.sae_refs import HOOK, write_folder

D_IN, D_SAE = 3, 2
TENSORS = {
    "W_enc": [[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]],
    "b_enc": [0.1, -0.2],
    "W_dec": [[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]],
    "b_dec": [0.5, 0.0, -0.5],
}


def _cfg(**extra: Any) -> dict[str, Any]:
    return {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "metadata": {"hook_name": HOOK}, **extra}


def _folder(tmp_path: Path, cfg: dict[str, Any], tensors: dict[str, Any] = TENSORS, raw: str | None = None) -> Path:
    folder = write_folder(tmp_path / "sae", tensors, cfg)
    if raw is not None:
        (folder / "cfg.json").write_text(raw, encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("cfg", "raw", "field"),
    [
        (_cfg(d_in="abc"), None, "d_in"),
        (_cfg(d_in=[1]), None, "d_in"),
        (None, json.dumps(_cfg()).replace('"d_in": 3', '"d_in": 1e400'), "d_in"),
        (_cfg(d_sae=True), None, "d_sae"),
        (_cfg(architecture="topk", k=1e300), None, "k"),
        (_cfg(architecture="topk", k=3), None, "k"),  # more than d_sae
        (_cfg(normalize_activations="expected_average_only_in", norm_scaling_factor=0), None, "norm_scaling_factor"),
        (
            _cfg(normalize_activations="expected_average_only_in", norm_scaling_factor="NaN"),
            None,
            "norm_scaling_factor",
        ),
        (None, json.dumps(_cfg()).replace("}}", '}, "norm_scaling_factor": NaN}'), "norm_scaling_factor"),
    ],
)
def test_hostile_config_values_are_refused_naming_the_field(
    tmp_path: Path, cfg: dict[str, Any] | None, raw: str | None, field: str
) -> None:
    folder = _folder(tmp_path, cfg or _cfg(), raw=raw)
    with pytest.raises(LensError, match=field) as refused:
        read_sae(folder)
    assert len(str(refused.value)) < 600  # nothing huge echoed back


def test_weights_that_are_not_finite_are_refused(tmp_path: Path) -> None:
    tensors = {**TENSORS, "W_dec": [[1.0, math.nan, 2.0], [0.0, -1.0, 1.0]]}
    with pytest.raises(LensError, match="W_dec.*not finite|not finite.*W_dec"):
        read_sae(_folder(tmp_path, _cfg(), tensors))


def test_a_sane_config_still_loads(tmp_path: Path) -> None:
    sae = read_sae(_folder(tmp_path, _cfg(architecture="topk", k=1)))
    assert sae.k == 1 and sae.d_in == D_IN
