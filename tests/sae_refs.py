"""A toy SAE folder in SAELens's disk format and a toy-vocabulary corpus, for the feature tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
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
        {
            "architecture": "standard",
            "d_in": d_in,
            "d_sae": d_sae,
            "metadata": {"hook_name": hook},
            # the toy model uses LayerNorm: its residual stream is centred in compatibility mode, as is the one
            # a random SAE "was trained on" here
            "model_from_pretrained_kwargs": {"center_writing_weights": True},
        },
    )


def write_folder(folder: Path, tensors: dict[str, list[Any]], cfg: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def toy_corpus(folder: Path, paragraphs: int = 60, seed: int = 0) -> Path:
    """Paragraphs of toy-vocabulary words, each a random half repeated (so the induction head has work)."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(paragraphs):
        half = [f"w{int(i)}" for i in rng.integers(2, 200, size=int(rng.integers(4, 12)))]
        texts.append(" ".join(half + half))
    path = folder / "toy_corpus.txt"
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return path
