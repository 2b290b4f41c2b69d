"""Benchmark: patch_sweep over a 16-pair prompt dataset in one call against 16 single-pair calls, in one process.

Pairs are "<landmark> is in the city of" with the next landmark of the list as the corrupted prompt (all 9
tokens on SmolLM2-135M), answer = the landmark's city, wrong answer = the next one's. Both ways run the same
cells; the dataset call batches the patched rows of all pairs together. Prints the time of each, the ratio,
and the largest difference between the dataset's mean grid and the mean of the single calls' grids.

    .venv/bin/python bench/bench_pairs.py [--device cpu|cuda] [--components resid_pre heads] [--repeat 2]
        [--layers 20 25 29]

Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

LANDMARKS = [
    ("Hagia Sophia", " Istanbul"),
    ("The Acropolis", " Athens"),
    ("The Atomium", " Brussels"),
    ("The Blue Mosque", " Istanbul"),
    ("The CN Tower", " Toronto"),
    ("The Duomo", " Florence"),
    ("The Gateway Arch", " St"),
    ("The Hermitage", " Saint"),
    ("The Hofburg", " Vienna"),
    ("The Hollywood Sign", " Los"),
    ("The Kremlin", " Moscow"),
    ("The Louvre", " Paris"),
    ("The Opera House", " Sydney"),
    ("The Pantheon", " Rome"),
    ("The Prado", " Madrid"),
    ("The Shard", " London"),
]


def pairs() -> list[dict[str, Any]]:
    out = []
    for index, (subject, city) in enumerate(LANDMARKS):
        other, other_city = LANDMARKS[(index + 1) % len(LANDMARKS)]
        out.append(
            {
                "clean_prompt": f"{subject} is in the city of",
                "corrupted_prompt": f"{other} is in the city of",
                "answer": city,
                "wrong_answer": other_city,
            }
        )
    return out


def flat(grid: list) -> list:
    return [v for row in grid for v in (flat(row) if isinstance(row, list) else [row])]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--components", nargs="+", default=["resid_pre", "heads"])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each way (the fastest is reported)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="layers to sweep (default all)")
    args = parser.parse_args()

    import torch

    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost
    from lens_mcp.tools.causal.patch_sweep import patch_sweep
    from lens_mcp.tools.core.context import ToolContext
    from lens_mcp.tools.core.pairs import PromptPair

    host = ModelHost(Limits.from_env())
    host.load(args.model, device=args.device)
    print(f"{args.model} on {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads; ")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus; load {os.getloadavg()}")
    dataset = pairs()
    dataset_pairs = [PromptPair(**pair) for pair in dataset]
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        patch_sweep(tc, **dataset[0], component="resid_pre", layers=[0])  # warm-up (and the throughput probe)
        print("| component | cells per pair | 16 single calls | one call with pairs | ratio | max abs diff of means |")
        print("| --- | --- | --- | --- | --- | --- |")
        for component in args.components:
            single_best, pairs_best = float("inf"), float("inf")
            singles, together = [], None
            for _ in range(args.repeat):
                started = time.perf_counter()
                singles = [patch_sweep(tc, **pair, component=component, layers=args.layers) for pair in dataset]
                single_best = min(single_best, time.perf_counter() - started)
                started = time.perf_counter()
                together = patch_sweep(tc, pairs=dataset_pairs, component=component, layers=args.layers)
                pairs_best = min(pairs_best, time.perf_counter() - started)
            assert together is not None
            columns = list(zip(*(flat(s.grid or []) for s in singles), strict=True))
            means = [None if all(v is None for v in c) else sum(v or 0.0 for v in c) / len(c) for c in columns]
            diff = max(
                abs(a - b)
                for a, b in zip(flat(together.grid or []), means, strict=True)
                if a is not None and b is not None
            )
            print(
                f"| {component} | {together.n_cells} | {single_best:.2f} s | {pairs_best:.2f} s | "
                f"**{single_best / pairs_best:.1f}x** | {diff:.1e} |"
            )


if __name__ == "__main__":
    main()
