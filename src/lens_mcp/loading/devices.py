"""Device and dtype choice. `auto` picks cuda, then cpu: MPS gives silently wrong results
(TransformerLens issue #1178), so it is used only when asked for by name."""

from __future__ import annotations

import logging

import torch

from lens_mcp.errors import LensError

log = logging.getLogger(__name__)

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


def available_memory_bytes(device: torch.device | str) -> int | None:
    """Free memory on `device`: `torch.cuda.mem_get_info` on a GPU, MemAvailable from /proc/meminfo on CPU;
    None where it cannot be told (then only the caps in Limits bound a batch)."""
    device = torch.device(device)
    try:
        if device.type == "cuda" and torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        if device.type == "cpu":
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, ValueError, RuntimeError):
        log.debug("could not read free memory for %s", device, exc_info=True)
    return None
