"""Device and dtype choice. `auto` picks cuda, then cpu: MPS gives silently wrong results
(TransformerLens issue #1178), so it is used only when asked for by name."""

from __future__ import annotations

import torch

from lens_mcp.errors import LensError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str | None) -> str:
    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    base = name.split(":")[0]
    if base not in DEVICES:
        raise LensError(f"device: {device!r} is not one of {', '.join(DEVICES)} (cuda:N also works).")
    if base == "cuda" and not torch.cuda.is_available():
        raise LensError(f"device: {device!r} asked for, but no CUDA GPU is visible; use device='cpu' or 'auto'.")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LensError(f"device: {device!r} asked for, but MPS is not available; use device='cpu' or 'auto'.")
    return name


def resolve_dtype(dtype: str | None) -> torch.dtype:
    name = (dtype or "float32").strip().lower()
    if name not in DTYPES:
        raise LensError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
