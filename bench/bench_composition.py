"""Benchmark: lens-mcp's composition_scores against TransformerLens's `bridge.all_composition_scores`, in one
process, on the same weights.

For each kind (q, k, v): lens-mcp's `all_scores` (what the composition_scores tool computes, every receiver
layer), `--repeat` times (the fastest is reported), then TransformerLens's all_composition_scores with one torch
thread (as lens-mcp runs its SVDs) and as a user calls it (default threads); prints the times, the ratios and
the largest absolute difference over the pairs both keep (sender layer < receiver layer).

    .venv/bin/python bench/bench_composition.py [--model smollm2-135m|toy-induction|PATH] [--kinds k] [--repeat 2]

Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--kinds", nargs="+", default=["k"], choices=["q", "k", "v"])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--tl-threads",
        choices=["default", "one", "both"],
        default="both",
        help="TransformerLens with torch's default threads, with one thread (as lens-mcp runs its SVDs), or both",
    )
    args = parser.parse_args()

    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost
    from lens_mcp.tools.core.context import ToolContext
    from lens_mcp.tools.weights.composition_scores import all_scores, one_thread

    host = ModelHost(Limits())
    host.load(args.model, device="cpu")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average before: {os.getloadavg()}")
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        cfg = tc.model.cfg
        print(f"model {args.model}: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}")
        for kind in args.kinds:
            ours_seconds = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                scores = all_scores(tc, kind)
                ours_seconds = min(ours_seconds, time.perf_counter() - start)
            print(f"{kind}: lens-mcp {ours_seconds:.2f} s (best of {args.repeat})", flush=True)
            modes = ["one", "default"] if args.tl_threads == "both" else [args.tl_threads]
            for mode in modes:
                start = time.perf_counter()
                with torch.no_grad(), one_thread() if mode == "one" else contextlib.nullcontext():
                    reference = model.bridge.all_composition_scores(kind.upper()).scores
                tl_seconds = time.perf_counter() - start
                diff = max(float((grid - reference[:layer, :, layer]).abs().max()) for layer, grid in scores.items())
                print(
                    f"{kind}: TransformerLens ({mode} thread{'s' if mode == 'default' else ''}) {tl_seconds:.2f} s, "
                    f"ratio {tl_seconds / ours_seconds:.1f}x, max |diff| {diff:.1e}",
                    flush=True,
                )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
