"""The GGUF cache proves its integrity (hash in the marker, rebuilt on mismatch), stale staging folders are
cleaned, and NaN/Inf in a result becomes an error naming where it first appears."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from mcp import Client

from lens_mcp.loading import gguf_cache
from lens_mcp.loading.integrity import OWNER_FILE, clean_stale_staging, verify, write_marker
from lens_mcp.loading.specs import BUILTIN_DIR
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from lens_mcp.server.finite import find_non_finite
from tests.mcp_client import MODES, error_text, result_data

TOY_DIR = BUILTIN_DIR / "toy_induction"
MARKER = "lens-mcp-complete"


def flip_a_sign_bit(path: Path) -> None:
    """Flip the sign bit of one float32 in the data region of a safetensors file (after its JSON header)."""
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    offset = 8 + header + 4 * 100 + 3  # the high byte of the 101st float
    data[offset] ^= 0x80
    path.write_bytes(bytes(data))


def test_the_marker_hash_catches_one_flipped_bit(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    shutil.copytree(TOY_DIR, folder)
    write_marker(folder, MARKER)
    assert verify(folder, MARKER) is None
    flip_a_sign_bit(folder / "model.safetensors")
    assert "model.safetensors does not match" in (verify(folder, MARKER) or "")
    (folder / MARKER).write_text("ok\n")  # a marker from before hashes: not trusted
    assert "no file hashes" in (verify(folder, MARKER) or "")


def test_a_corrupted_cache_is_rebuilt_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache whose weights changed on disk is not used: load_gguf rebuilds it (here the 'dequantization'
    is the toy model loaded from its folder) and reports why."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("LENS_MCP_CACHE_DIR", str(tmp_path / "cache-root"))
    gguf = tmp_path / "toy.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    cached = gguf_cache.cache_dir_for(gguf)
    originals = (AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained)
    dequantized: list[str] = []

    def model_from(source: Any, *args: Any, gguf_file: str | None = None, **kwargs: Any) -> Any:
        if gguf_file is not None:
            dequantized.append(gguf_file)
            return originals[0](TOY_DIR, *args, **kwargs)
        return originals[0](source, *args, **kwargs)

    def tokenizer_from(source: Any, *args: Any, gguf_file: str | None = None, **kwargs: Any) -> Any:
        return originals[1](TOY_DIR if gguf_file is not None else source, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_from)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer_from)

    model, _, folder, from_cache = gguf_cache.load_gguf(str(tmp_path), gguf.name)
    assert (folder, from_cache, len(dequantized)) == (cached, False, 1)
    assert json.loads((cached / MARKER).read_text())["files"]["model.safetensors"].startswith("sha256:")
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    _, _, _, from_cache = gguf_cache.load_gguf(str(tmp_path), gguf.name)
    assert from_cache is True and len(dequantized) == 1  # a sound cache is used

    flip_a_sign_bit(cached / "model.safetensors")
    said: list[str] = []
    model, _, _, from_cache = gguf_cache.load_gguf(str(tmp_path), gguf.name, notify=said.append)
    assert from_cache is False and len(dequantized) == 2, "a corrupted cache was used"
    assert said and "failed its check" in said[0] and "model.safetensors does not match" in said[0]
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())
    assert verify(cached, MARKER) is None  # rebuilt sound


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_staging_folders_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import socket

    host = socket.gethostname()
    dead = tmp_path / ".staging-model-0123456789abcdef.killed01"
    live = tmp_path / ".staging-model-0123456789abcdef.running1"
    legacy_old = tmp_path / "model-0123456789abcdef.abcdefgh"  # an older lens-mcp's name, days old
    legacy_new = tmp_path / "model-0123456789abcdef.ijklmnop"
    cache = tmp_path / "model-0123456789abcdef"  # a finished cache: never touched
    for folder in (dead, live, legacy_old, legacy_new, cache):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
    (dead / OWNER_FILE).write_text(f"{host} {_dead_pid()}\n")
    (live / OWNER_FILE).write_text(f"{host} {os.getpid()}\n")
    two_days_ago = time.time() - 2 * 86400
    os.utime(legacy_old, (two_days_ago, two_days_ago))
    os.utime(cache, (two_days_ago, two_days_ago))
    removed = clean_stale_staging(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead.name, legacy_old.name])
    assert live.exists() and legacy_new.exists() and cache.exists()


def test_load_gguf_cleans_staging_left_by_a_killed_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENS_MCP_CACHE_DIR", str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really gguf")
    parent = gguf_cache.cache_dir_for(gguf).parent
    parent.mkdir(parents=True)
    killed = parent / f".staging-{gguf_cache.cache_dir_for(gguf).name}.deadbeef"
    killed.mkdir()
    (killed / OWNER_FILE).write_text(f"{__import__('socket').gethostname()} {_dead_pid()}\n")
    with pytest.raises(Exception):  # noqa: B017 - the stand-in file does not parse; the clean-up ran first
        gguf_cache.load_gguf(str(tmp_path), gguf.name)
    assert not killed.exists()


# ---- non-finite numbers ------------------------------------------------------------------------------------
def test_find_non_finite_names_the_path_and_its_labels() -> None:
    data = {"rows": ["0_pre", "1_pre", "final"], "top": [[{"p": 1.0}], [{"p": 0.5}], [{"p": math.inf}]]}
    path, value, labels = find_non_finite(data) or ("", 0.0, [])
    assert path == "top[2][0].p" and value == math.inf and "rows[2]='final'" in labels
    assert find_non_finite({"a": [1.0, 2.0], "b": "nan"}) is None
    assert find_non_finite([{"layer": 4, "score": math.nan}])[2] == ["layer=4"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_nan_weight_gives_an_error_naming_the_layer(mode: str) -> None:
    host = ModelHost()
    host.load("toy-induction", device="cpu")
    params = dict(host.model.bridge.named_parameters())
    with torch.no_grad():  # corrupt layer 1's attention output bias: layer 0's readout stays finite
        params["transformer.h.1._original_component.attn.o._original_component.bias"].fill_(math.nan)
    async with Client(build_server(host), mode=mode) as client:
        message = error_text(await client.call_tool("logit_lens", {"prompt": "w1 w2 w3", "top_k": 2}))
        assert "NaN at top[2].probs[0]" in message and "rows[2]='final'" in message
        assert "not JSON compliant" not in message
        fine = result_data(await client.call_tool("tokenize", {"text": "w1"}))  # other results still serialize
        assert fine["n_tokens"] == 2
