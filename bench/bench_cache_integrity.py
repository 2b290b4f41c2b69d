"""Benchmark: what the GGUF cache's integrity check adds to a warm start, in one process.

Loads the default model (SmolLM2-135M GGUF) once to fill the cache (a cold start when the cache is empty), then
times warm starts (`ModelHost.load`, which hashes the cache files before using them) and the check alone
(`integrity.verify`: SHA-256 over every cache file), and, for comparison, other hashes over the weights file.

    LENS_MCP_CACHE_DIR=/tmp/bench-cache .venv/bin/python bench/bench_cache_integrity.py [--repeat 3]

Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import time
from pathlib import Path

import torch


def _hash_with(name: str, path: Path) -> float:
    started = time.perf_counter()
    digest = hashlib.new(name)
    with open(path, "rb") as source:
        while chunk := source.read(8 << 20):
            digest.update(chunk)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    from lens_mcp.loading import gguf_cache
    from lens_mcp.loading.integrity import verify
    from lens_mcp.loading.specs import resolve_spec
    from lens_mcp.model_host import ModelHost

    spec = resolve_spec(args.model)
    assert spec.gguf_file is not None, "the benchmark needs a .gguf model"
    cached = gguf_cache.cache_dir_for(Path(spec.location) / spec.gguf_file)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}")
    started = time.perf_counter()
    first = ModelHost().load(args.model, device="cpu")
    print(f"first load: {time.perf_counter() - started:.2f} s (from cache: {first.from_cache})")
    del first
    size = sum(p.stat().st_size for p in cached.iterdir() if p.is_file())
    warm, checks = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        loaded = ModelHost().load(args.model, device="cpu")
        warm.append(time.perf_counter() - started)
        assert loaded.from_cache, "the warm start did not use the cache"
        del loaded
        started = time.perf_counter()
        assert verify(cached, gguf_cache._COMPLETE_MARKER) is None
        checks.append(time.perf_counter() - started)
    weights = cached / "model.safetensors"
    hashes = {name: min(_hash_with(name, weights) for _ in range(args.repeat)) for name in ("sha256", "blake2b", "md5")}
    print(f"cache: {size / 1e6:.0f} MB in {cached}")
    print(f"warm start (check included): best {min(warm):.2f} s, runs {', '.join(f'{w:.2f}' for w in warm)}")
    print(f"integrity check alone: best {min(checks):.3f} s, runs {', '.join(f'{c:.3f}' for c in checks)}")
    print(
        f"check / warm start: {min(checks) / min(warm):.1%}  (warm start without the check ~ {min(warm) - min(checks):.2f} s)"
    )
    mb = weights.stat().st_size / 1e6
    print("weights file only: " + ", ".join(f"{n} {t:.3f} s ({mb / t:.0f} MB/s)" for n, t in hashes.items()))


if __name__ == "__main__":
    main()
