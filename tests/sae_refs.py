"""A toy SAE folder in SAELens's disk format, for the feature tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

HOOK = "blocks.1.hook_resid_pre"


def toy_sae_folder(folder: Path, d_in: int = 144, d_sae: int = 48, hook: str = HOOK, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": (torch.randn(d_in, d_sae, generator=gen) / d_in**0.5).tolist(),
        "b_enc": [0.05] * d_sae,
        "W_dec": (torch.randn(d_sae, d_in, generator=gen) / d_in**0.5).tolist(),
        "b_dec": (torch.randn(d_in, generator=gen) * 0.01).tolist(),
    }
    return write_folder(
        folder,
        tensors,
        {"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "metadata": {"hook_name": hook}},
    )


def write_folder(folder: Path, tensors: dict[str, list[Any]], cfg: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder
