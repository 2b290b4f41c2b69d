"""Benchmark: attribution_patch (gradient estimate, verify_top=0) against patch_sweep (exact) on the same
heads_by_pos grid, in one process, on SmolLM2-135M; plus the cost of attribution_patch with verify_top=10.

Two 20-token pairs (IOI-style, metric logit(" Mary") - logit(" John") at the last position):
- late: the prompts differ at one late position only (the subject's second mention). patch_sweep skips every
  cell before it (identical activations), so this is the most favourable case for the exact engine;
- early: the prompts differ at the two names of the first clause (other names, "ABC" corruption), so
  patch_sweep skips far fewer cells.

A third part times one attribution_patch call over a dataset of 16 such pairs (other names; pairs=[...], one
batched gradient pass) against 16 single-pair calls with verify_top=0, and the dataset call with verify_top=10.

    .venv/bin/python bench/bench_attribution.py [--pairs late early] [--repeat 3] [--sweep-repeat 1] [--skip-dataset]

Each tool runs `repeat` times (patch_sweep `sweep-repeat` times) and the fastest run is compared: on a shared
machine bursts of load from other processes slow single runs. The load average is printed before and after.
Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

PAIRS = {
    "late": (
        "After the long meeting, when Mary and John went to the store, John gave a drink to",
        "After the long meeting, when Mary and John went to the store, Mary gave a drink to",
    ),
    "early": (
        "After the long meeting, when Mary and John went to the store, John gave a drink to",
        "After the long meeting, when Alice and Bob went to the store, John gave a drink to",
    ),
}
ANSWER, WRONG = " Mary", " John"
TEMPLATE = "After the long meeting, when {a} and {b} went to the store, {s} gave a drink to"
NAMES = [" Mary", " John", " Alice", " Bob", " Tom", " James", " Sarah", " Anna", " David", " Paul", " Kate", " Mark"]


def best_of(n: int, run: Callable[[], Any]) -> tuple[float, list[float], Any]:
    times, result = [], None
    for _ in range(max(1, n)):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", nargs="*", default=["late", "early"], choices=sorted(PAIRS))
    parser.add_argument("--repeat", type=int, default=3, help="runs of attribution_patch (the best is reported)")
    parser.add_argument("--sweep-repeat", type=int, default=1, help="runs of patch_sweep (the best is reported)")
    parser.add_argument("--skip-dataset", action="store_true", help="skip the 16-pair dataset timing")
    parser.add_argument("--dataset-repeat", type=int, default=1, help="runs of the dataset timing")
    args = parser.parse_args()

    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost
    from lens_mcp.tools.causal.attribution_patch import attribution_patch
    from lens_mcp.tools.causal.patch_sweep import patch_sweep
    from lens_mcp.tools.core.context import ToolContext

    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs")
    started = time.perf_counter()
    # The full heads_by_pos grid of a 20-token prompt is 5400 cells: over the default response cap, so raised here.
    host = ModelHost(Limits.from_env(max_response_chars=400_000))
    host.load(args.model, device="cpu")
    print(
        f"loaded {args.model} in {time.perf_counter() - started:.1f}s; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        attribution_patch(tc, "The cat", "The dog", " is", " was", "heads", layers=[0], verify_top=1)  # warm-up
        for name in args.pairs:
            clean, corrupted = PAIRS[name]
            n_tokens = int(model.bridge.to_tokens(clean).shape[-1])
            common: dict[str, Any] = dict(
                clean_prompt=clean, corrupted_prompt=corrupted, answer=ANSWER, wrong_answer=WRONG
            )
            print(f"\npair {name!r}: {n_tokens} tokens")
            attr_s, attr_times, attr = best_of(
                args.repeat,
                lambda common=common: attribution_patch(tc, **common, component="heads_by_pos", verify_top=0),
            )
            sweep_s, sweep_times, sweep = best_of(
                args.sweep_repeat, lambda common=common: patch_sweep(tc, **common, component="heads_by_pos")
            )
            verify_s, verify_times, verified = best_of(
                args.repeat,
                lambda common=common: attribution_patch(tc, **common, component="heads_by_pos", verify_top=10),
            )
            print(f"  heads_by_pos: {attr.n_cells} cells; clean {attr.clean_metric}, corrupted {attr.corrupted_metric}")
            print(
                f"  attribution_patch verify_top=0: {attr_s:.2f}s (runs {[round(t, 2) for t in attr_times]}), "
                f"{attr.forward_passes} batched passes; estimated before computing {attr.cost.seconds:.1f}s"
            )
            print(
                f"  patch_sweep: {sweep_s:.2f}s (runs {[round(t, 2) for t in sweep_times]}), {sweep.forward_passes} "
                f"batched passes, {sweep.skipped_cells} cells skipped (identical activations)"
            )
            print(f"  ratio patch_sweep / attribution_patch: {sweep_s / attr_s:.1f}x")
            agreement = verified.agreement
            print(
                f"  attribution_patch verify_top=10: {verify_s:.2f}s (runs {[round(t, 2) for t in verify_times]}), "
                f"{verified.forward_passes} batched passes (estimated {verified.cost.seconds:.1f}s); ratio patch_sweep / it: {sweep_s / verify_s:.1f}x; "
                f"agreement {agreement.model_dump() if agreement else None}"
            )
            exact = {(c.layer, c.head, c.position): c.value for c in sweep.top_cells}
            print("  verified cells (estimate / exact / patch_sweep's top cells where listed):")
            for cell in verified.verified:
                key = (cell.layer, cell.head, cell.position)
                print(
                    f"    L{cell.layer}H{cell.head} pos {cell.position} ({cell.clean_token!r}): {cell.estimate} / "
                    f"{cell.exact} / {exact.get(key, '-')} {cell.problem or ''}"
                )
        if not args.skip_dataset:
            bench_dataset(tc, args.dataset_repeat)
    print(f"\nload average after: {os.getloadavg()}")


def bench_dataset(tc: Any, repeat: int) -> None:
    """One call over 16 pairs against 16 single calls (heads, every layer)."""
    from lens_mcp.tools.causal.attribution_patch import attribution_patch

    bridge = tc.model.bridge
    names = [n for n in NAMES if len(bridge.to_tokens(n, prepend_bos=False)[0]) == 1]
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pairs.append(
                {
                    "clean_prompt": TEMPLATE.format(a=a.strip(), b=b.strip(), s=b.strip()),
                    "corrupted_prompt": TEMPLATE.format(a=a.strip(), b=b.strip(), s=a.strip()),
                    "answer": a,
                    "wrong_answer": b,
                }
            )
    lengths = {len(bridge.to_tokens(p["clean_prompt"])[0]) for p in pairs}
    pairs = [p for p in pairs if len(bridge.to_tokens(p["clean_prompt"])[0]) == min(lengths)][:16]
    print(f"\ndataset: {len(pairs)} pairs of {min(lengths)} tokens, component='heads' (every layer and head)")
    one_s, one_times, one = best_of(repeat, lambda: attribution_patch(tc, component="heads", pairs=pairs, verify_top=0))
    singles_s, singles_times, _ = best_of(
        repeat, lambda: [attribution_patch(tc, **p, component="heads", verify_top=0) for p in pairs]
    )
    print(
        f"  verify_top=0: one call over {len(pairs)} pairs {one_s:.2f}s (runs {[round(t, 2) for t in one_times]}, "
        f"{one.forward_passes} batched passes; estimated {one.cost.seconds:.1f}s); {len(pairs)} single calls "
        f"{singles_s:.2f}s (runs {[round(t, 2) for t in singles_times]}); ratio {singles_s / one_s:.1f}x"
    )
    verify_s, verify_times, verified = best_of(
        repeat, lambda: attribution_patch(tc, component="heads", pairs=pairs, verify_top=10)
    )
    print(
        f"  verify_top=10: one call over {len(pairs)} pairs {verify_s:.2f}s (runs "
        f"{[round(t, 2) for t in verify_times]}, {verified.forward_passes} batched passes; estimated "
        f"{verified.cost.seconds:.1f}s); agreement {verified.agreement.model_dump() if verified.agreement else None}"
    )


if __name__ == "__main__":
    main()
