"""A model's memory before it is loaded: its parameter count read from its config (or a GGUF file's tensor table)
without building it, and a refusal, naming what would fit, when loading it would exhaust the device's free memory
(on CPU that would bring in the kernel's out-of-memory killer, which takes the whole server with it)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lens_mcp.errors import LensError
from lens_mcp.loading.devices import DTYPES, available_memory_bytes, dtype_name
from lens_mcp.loading.gguf_cache import cache_dir_for
from lens_mcp.loading.specs import ModelSpec

log = logging.getLogger(__name__)

LOAD_PEAK_FACTOR = 4.5
"""Peak resident memory while loading, as a multiple of the weights' bytes: Hugging Face's model, then the
TransformerBridge and its compatibility-mode weights. Measured here: 4.4x for a 64 M-parameter Llama folder
(1,077 MB over 245 MB of weights) and 3.7x for SmolLM2-135M from its GGUF; 2.6x stays resident after loading."""


def parameter_count(spec: ModelSpec, trust_remote_code: bool = False) -> int | None:
    """Parameters of the model `spec` names, counted without loading weights, or None when that cannot be told
    here (a Hub name that is not cached, a config transformers cannot build)."""
    try:
        location = spec.location
        if spec.gguf_file is not None:
            gguf_path = Path(spec.location) / spec.gguf_file
            cached = cache_dir_for(gguf_path)
            if not (cached / "config.json").is_file():  # reading the tensor table takes seconds: only before the
                from gguf import GGUFReader  # first load, which dequantizes for minutes anyway

                return sum(int(tensor.n_elements) for tensor in GGUFReader(str(gguf_path)).tensors)
            location = str(cached)
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        return sum(parameter.numel() for parameter in model.parameters())
    except Exception:  # the loader itself then says what is wrong with the spec
        log.debug("could not count the parameters of %s before loading", spec.name, exc_info=True)
        return None


def check_fits(spec: ModelSpec, dtype: torch.dtype, device: str, trust_remote_code: bool = False) -> None:
    """Refuse, before reading any weights, a model whose loading would not fit in the free memory of `device`,
    naming the dtypes and the model size that would."""
    free = available_memory_bytes(device)
    if free is None:
        return
    count = parameter_count(spec, trust_remote_code)
    if count is None:
        return
    needed = count * dtype.itemsize * LOAD_PEAK_FACTOR
    if needed <= free:
        return
    smaller = [name for name, other in DTYPES.items() if count * other.itemsize * LOAD_PEAK_FACTOR <= free]
    largest = free / (LOAD_PEAK_FACTOR * dtype.itemsize)
    would_fit = (
        f"It fits with dtype={smaller[0]!r}. " if smaller else "No dtype makes it fit. "
    ) + f"Models of up to about {largest / 1e6:,.0f} M parameters fit in {dtype_name(dtype)} here."
    raise LensError(
        f"refused before loading: {spec.name} has {count / 1e6:,.0f} M parameters; loading it in {dtype_name(dtype)} "
        f"takes about {needed / 2**30:,.1f} GiB at its peak ({LOAD_PEAK_FACTOR}x its weights while the bridge is "
        f"built), and {free / 2**30:,.1f} GiB is free on {device}. {would_fit} Free memory, or load it on a "
        "device with more."
    )
