"""What --record costs: the weights fingerprint (once per loaded model) and one record line (per call).

In one process, on the default model (or --model): the fingerprint (xxh3-128 over the state dict, what the record
uses) against two baselines run on the same tensors, SHA-256 of the same bytes and one forward pass of a 10-token
prompt; then the time to append one fsynced line holding a typical patch_sweep result.

  python bench/bench_record.py [--model smollm2-135m] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time

import torch

from lens_mcp.loading.fingerprint import compute_fingerprint
from lens_mcp.model_host import ModelHost
from lens_mcp.server.record import Recorder


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def sha256_of(bridge) -> str:
    digest = hashlib.sha256()
    seen = set()
    for name, tensor in sorted(bridge.state_dict().items()):
        key = (tensor.data_ptr(), tensor.numel(), str(tensor.dtype))
        if key in seen:
            continue
        seen.add(key)
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    host = ModelHost()
    loaded = host.load(args.model, device=args.device)
    bridge = loaded.bridge
    n_params = sum(t.numel() for t in {t.data_ptr(): t for t in bridge.state_dict().values()}.values())
    tokens = bridge.to_tokens("The Eiffel Tower is in the city of")

    def forward() -> None:
        with torch.no_grad():
            bridge(tokens)

    forward()
    fingerprint_s = best(lambda: compute_fingerprint(bridge), args.repeat)
    sha_s = best(lambda: sha256_of(bridge), args.repeat)
    forward_s = best(forward, args.repeat)
    print(f"model {args.model}: {n_params / 1e6:.1f}M unique tensor elements, load {loaded.load_seconds:.1f} s")
    print(f"fingerprint (xxh3-128)  {fingerprint_s * 1000:8.1f} ms")
    print(f"sha256 of the same bytes {sha_s * 1000:8.1f} ms   ratio sha256 / xxh3 = {sha_s / fingerprint_s:.1f}x")
    print(f"forward pass, {tokens.shape[-1]} tokens {forward_s * 1000:8.1f} ms   fingerprint / forward = "
          f"{fingerprint_s / forward_s:.2f}")  # fmt: skip

    result = {"grid": [[round(0.123456 * i * j, 4) for j in range(10)] for i in range(30)], "meaning": "x" * 200}
    with tempfile.TemporaryDirectory() as folder:
        recorder = Recorder(folder, "bench")
        recorder.record(loaded, "patch_sweep", {"clean_prompt": "..."}, started=time.time(), seconds=1.0, result=result)
        n = 50
        started = time.perf_counter()
        for _ in range(n):
            recorder.record(loaded, "patch_sweep", {}, started=time.time(), seconds=1.0, result=result)
        line_s = (time.perf_counter() - started) / n
        size = len(json.dumps(result))
        recorder.close()
    print(f"one fsynced record line (~{size / 1000:.1f} KB result) {line_s * 1000:8.2f} ms")


if __name__ == "__main__":
    main()
