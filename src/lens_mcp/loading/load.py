"""Load a resolved spec into a TransformerBridge in compatibility mode (HookedTransformer numerics)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lens_mcp.errors import LensError
from lens_mcp.loading.devices import dtype_name, resolve_device, resolve_dtype
from lens_mcp.loading.footprint import check_fits
from lens_mcp.loading.gguf_cache import load_gguf
from lens_mcp.loading.hub import hub_host_and_port, hub_reachable, hub_snapshot, in_local_cache
from lens_mcp.loading.specs import ModelSpec
from lens_mcp.progress import ProgressReporter, no_progress

if TYPE_CHECKING:  # imported lazily at run time: transformer_lens takes seconds to import
    from transformer_lens import TransformerBridge

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One loaded model and the facts about how it was loaded."""

    spec: ModelSpec
    bridge: TransformerBridge
    device: str
    dtype: torch.dtype
    load_seconds: float
    from_cache: bool | None = None
    saes: dict[str, Any] = field(default_factory=dict)
    """Sparse autoencoders loaded for this model, keyed by hook name (dropped with the model)."""
    steering_vectors: dict[str, Any] = field(default_factory=dict)
    """Steering vectors stored by name for this model (dropped with the model)."""
    circuits: dict[str, Any] = field(default_factory=dict)
    """Edge rankings and circuits stored by name for this model (dropped with the model)."""
    throughput: float | None = None
    """Measured token-layers per second of a batched forward pass on this model's device (cost estimates)."""
    block_call_seconds: float | None = None
    """Measured seconds one block call costs beyond its arithmetic (Python, hooks, kernel launches)."""
    slowdowns: dict[str, float] = field(default_factory=dict)
    """Measured, per kind of pass (e.g. edge attribution's gradient pass): how many times slower it runs than the
    plain forward passes it is counted as (cost estimates)."""
    engine_checks: dict[str, bool] = field(default_factory=dict)
    """Answers of one-off checks of a faster computation against the reference one on this model (e.g. edge
    attribution's fused gradient pass against TransformerLens's per-head split), so each runs once per model."""

    @property
    def cfg(self) -> Any:
        return self.bridge.cfg

    @property
    def tokenizer(self) -> Any:
        return self.bridge.tokenizer

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


def load_model(
    spec: ModelSpec,
    device: str | None = None,
    dtype: str | None = None,
    *,
    device_map: str | None = None,
    n_devices: int | None = None,
    trust_remote_code: bool = False,
    progress: ProgressReporter = no_progress,
) -> LoadedModel:
    """Load `spec`; raises LensError saying why and what to try when it cannot be loaded."""
    torch_dtype = resolve_dtype(dtype)
    placement: dict[str, Any]
    if device_map is not None or n_devices is not None:
        placement = {"device_map": device_map, "n_devices": n_devices}
        device_name = f"device_map={device_map}" if device_map else f"n_devices={n_devices}"
    else:
        device_name = resolve_device(device)
        placement = {"device": device_name}
        check_fits(spec, torch_dtype, device_name, trust_remote_code)
    started = time.perf_counter()
    progress(0, 3, f"loading {spec.name}")
    # Libraries print progress bars and notices; stdout belongs to the protocol.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            bridge, from_cache = _boot(spec, torch_dtype, placement, trust_remote_code, progress)
            progress(2, 3, "enabling TransformerLens compatibility mode")
            bridge.enable_compatibility_mode()
        except LensError:
            raise
        except Exception as exc:  # every loader failure becomes an actionable message
            raise LensError(_explain_failure(spec, exc)) from exc
    bridge.eval()
    progress(3, 3, f"loaded {spec.name}")
    return LoadedModel(spec, bridge, device_name, torch_dtype, time.perf_counter() - started, from_cache)


def _boot(
    spec: ModelSpec, dtype: torch.dtype, placement: dict[str, Any], trust_remote_code: bool, progress: ProgressReporter
) -> tuple[Any, bool | None]:
    from transformer_lens import TransformerBridge

    if spec.gguf_file is not None:
        progress(1, 3, "reading GGUF (the first load dequantizes and caches it)")
        hf_model, tokenizer, cache_dir, from_cache = load_gguf(
            spec.location, spec.gguf_file, notify=lambda message: progress(1, 3, message)
        )
        hf_model = hf_model.to(dtype)  # the cache holds fp32; boot_transformers leaves a given model's dtype alone
        bridge = TransformerBridge.boot_transformers(
            str(cache_dir), hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, **placement
        )
        return bridge, from_cache
    if spec.source == "hub" and not in_local_cache(spec.location) and not hub_reachable():
        host, _ = hub_host_and_port()
        raise LensError(
            f"could not load {spec.name!r}: it is not in the local Hugging Face cache and the Hub "
            f"({host}) cannot be reached from this machine (offline, or HF_HUB_OFFLINE is set). "
            "Load it where there is a network, or pass a folder saved with save_pretrained, a .gguf "
            "file, or a builtin (smollm2-135m, toy-induction)."
        )
    progress(1, 3, f"reading weights from {spec.source} {spec.location}")
    location = spec.location
    if spec.source == "hub" and os.path.lexists(location):
        # from_pretrained prefers a relative folder of the same name to the Hub id; the load policy may have read
        # the name as a Hub id precisely because that folder lies outside its roots.
        location = hub_snapshot(location)
    bridge = TransformerBridge.boot_transformers(
        location, dtype=dtype, trust_remote_code=trust_remote_code, **placement
    )
    return bridge, None


def _explain_failure(spec: ModelSpec, exc: Exception) -> str:
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]
    if spec.source == "hub":
        return (
            f"could not load {spec.name!r} from the Hugging Face Hub ({reason}). If this machine is "
            "offline, the name must already be in the local HF cache; otherwise pass a folder saved "
            "with save_pretrained, a .gguf file, or a builtin (smollm2-135m, toy-induction). "
            "Check the spelling of the name (e.g. gpt2, EleutherAI/pythia-70m)."
        )
    if "trust_remote_code" in str(exc):
        return (
            f"could not load {spec.name!r}: it needs custom code from the model repository ({reason}). "
            "Restart the server with --trust-remote-code only if you trust that code."
        )
    return (
        f"could not load {spec.name!r} from {spec.location} ({reason}). Check that the folder holds a "
        "complete save_pretrained model and tokenizer of an architecture TransformerLens supports, or "
        "load a builtin (smollm2-135m, toy-induction)."
    )
