"""GGUF loading with a dequantized cache: the first load dequantizes (tens of seconds), then the
result is saved as an ordinary save_pretrained-style folder (safetensors, never pickle) so the next
start of the same file loads in seconds. The completion marker records a hash of every file, checked on each
load (loading/integrity.py): a cache that changed on disk is rebuilt, never used.

The cache folder is $LENS_MCP_CACHE_DIR, else $XDG_CACHE_HOME/lens-mcp, else ~/.cache/lens-mcp.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lens_mcp.loading.integrity import (
    OWNER_FILE,
    STAGING_PREFIX,
    claim_staging,
    clean_stale_staging,
    verify,
    write_marker,
)

log = logging.getLogger(__name__)
CACHE_ENV = "LENS_MCP_CACHE_DIR"
_COMPLETE_MARKER = "lens-mcp-complete"


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lens-mcp"


def cache_dir_for(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf_path.stem}-{key}"


def load_gguf(folder: str, gguf_file: str, notify: Callable[[str], None] | None = None) -> tuple[Any, Any, Path, bool]:
    """Return (hf_model in float32, tokenizer, the cache folder, whether it came from the cache).

    A cached copy is used only when every file matches the hash its completion marker recorded; otherwise it
    is rebuilt, and `notify` (and the log) say why. Staging folders left by a killed writer are removed first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(folder) / gguf_file
    cached = cache_dir_for(gguf_path)
    clean_stale_staging(cached.parent)
    if (cached / _COMPLETE_MARKER).is_file():
        problem = verify(cached, _COMPLETE_MARKER)
        if problem is None:
            try:
                model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(cached)
                return model, tokenizer, cached, True
            except Exception as exc:  # a damaged cache must not stop the load: rebuild it
                problem = f"it is unreadable ({type(exc).__name__})"
        message = f"the dequantized cache at {cached} failed its check: {problem}; rebuilding it from {gguf_file}"
        log.warning(message)
        if notify is not None:
            notify(message)
        shutil.rmtree(cached, ignore_errors=True)

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    try:
        _write_cache(model, tokenizer, cached)
    except OSError:
        log.warning(
            "could not write the dequantized cache to %s; the next start will dequantize again", cached, exc_info=True
        )
    return model, tokenizer, cached, False


def _write_cache(model: Any, tokenizer: Any, target: Path) -> None:
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}.", dir=target.parent))
    try:
        claim_staging(staging)
        # Tied weights appear twice in a state dict; keep the first name, from_pretrained re-ties.
        unique = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
        state = {k: v for k, v in model.state_dict().items() if k in unique}
        save_file(
            {k: v.detach().contiguous() for k, v in state.items()},
            staging / "model.safetensors",
            metadata={"format": "pt"},
        )
        config = model.config
        quantization = getattr(config, "quantization_config", None)
        if quantization is not None:
            del config.quantization_config
        try:
            config.save_pretrained(staging)
        finally:
            if quantization is not None:
                config.quantization_config = quantization
        tokenizer.save_pretrained(staging)
        (staging / OWNER_FILE).unlink()
        write_marker(staging, _COMPLETE_MARKER)  # last: a folder with a marker is complete, and hashed
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
