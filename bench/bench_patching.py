"""Benchmark: lens-mcp's patch_sweep against TransformerLens's own patching functions, in one process.

Runs the full sweep (every layer x every position for resid_pre, every layer x every head for heads) on
SmolLM2-135M with the Eiffel Tower / Colosseum pair, both ways, and prints the time of each, the ratio,
and the largest absolute difference between the two grids (raw logit difference ' Paris' - ' Rome').

    .venv/bin/python bench/bench_patching.py [--device cpu|cuda] [--components resid_pre heads] [--repeat 3]
        [--grouping auto|offset|merged|both] [--model smollm2-135m|PATH] [--skip-tl]

Our sweep runs `repeat` times before and `repeat` times after TransformerLens's (the fastest is compared:
on a shared machine, bursts of load from other processes slow single runs by up to 10x).

Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import torch

CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"
ANSWER, WRONG = " Paris", " Rome"
TL_FUNCTIONS = {"resid_pre": "get_act_patch_resid_pre", "heads": "get_act_patch_attn_head_out_all_pos"}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--components", nargs="+", default=["resid_pre", "heads"], choices=sorted(TL_FUNCTIONS))
    parser.add_argument("--repeat", type=int, default=3, help="runs of our sweep (the best is reported)")
    parser.add_argument("--skip-tl", action="store_true", help="only time lens-mcp (no ratio)")
    parser.add_argument(
        "--grouping",
        default="auto",
        choices=["auto", "offset", "merged", "both"],
        help="batch rows per first changed position (offset), all together (merged), or auto: "
        "merged on a GPU, offset on a CPU",
    )
    args = parser.parse_args()

    from transformer_lens import patching

    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost
    from lens_mcp.tools.causal import _engine as patching_engine
    from lens_mcp.tools.causal.patch_sweep import run_sweep
    from lens_mcp.tools.core.context import ToolContext

    started = time.perf_counter()
    host = ModelHost(Limits.from_env())
    host.load(args.model, device=args.device)
    print(
        f"loaded {args.model} on {args.device} in {time.perf_counter() - started:.1f}s; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}")

    with host.use() as model, torch.no_grad():
        tc = ToolContext(model, host.limits)
        bridge = model.bridge
        tokens = bridge.to_tokens([CLEAN, CORRUPTED])
        answer, wrong = bridge.to_single_token(ANSWER), bridge.to_single_token(WRONG)

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return logits[0, -1, answer] - logits[0, -1, wrong]

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        groupings = {"auto": [None], "offset": [False], "merged": [True], "both": [None, False, True]}[args.grouping]
        run_sweep(tc, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre", layers=[0], positions=[-1])  # warm-up
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        print(
            f"{'component':<10} {'cells':>5} {'TL wall s':>9} {'TL cpu s':>8} {'grouping':>8} {'ours wall s':>11} "
            f"{'ours cpu s':>10} {'ratio wall':>10} {'ratio cpu':>9} {'max |diff|':>10}  method/passes  "
            "(all our runs, wall s)"
        )
        for component in args.components:
            timings: dict[bool | None, list[tuple[float, float]]] = {merge: [] for merge in groupings}
            sweeps: dict[bool | None, Any] = {}

            def ours(
                component: str = component,
                sweeps: dict[bool | None, Any] = sweeps,
                timings: dict[bool | None, list[tuple[float, float]]] = timings,
            ) -> None:
                """`repeat` runs of each grouping; called before and after TransformerLens's run, so that a
                burst of load from other processes on the machine does not decide the comparison alone."""
                for merge in groupings:
                    patching_engine.MERGE_OFFSETS = merge
                    for _ in range(max(1, args.repeat)):
                        sync()
                        t0, c0 = time.perf_counter(), time.process_time()
                        sweeps[merge] = run_sweep(tc, CLEAN, CORRUPTED, ANSWER, WRONG, component)
                        sync()
                        timings[merge].append((time.perf_counter() - t0, time.process_time() - c0))
                patching_engine.MERGE_OFFSETS = None

            ours()
            tl_wall = tl_cpu = float("nan")
            reference = None
            if not args.skip_tl:
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                _, clean_cache = bridge.run_with_cache(tokens[:1])
                reference = getattr(patching, TL_FUNCTIONS[component])(bridge, tokens[1:], clean_cache, metric)
                sync()
                tl_wall, tl_cpu = time.perf_counter() - t0, time.process_time() - c0
                ours()
            for merge in groupings:
                sweep = sweeps[merge]
                wall, cpu = min(timings[merge])
                shape = (len(sweep.layers), len(sweep.heads) if sweep.heads else len(sweep.positions or []))
                values = sweep.values.reshape(shape).float().cpu()
                diff = float((reference.float().cpu() - values).abs().max()) if reference is not None else float("nan")
                name = {None: "auto", False: "offset", True: "merged"}[merge]
                stats = sweep.engine.stats
                runs = " ".join(f"{w:.2f}" for w, _ in timings[merge])
                print(
                    f"{component:<10} {values.numel():>5} {tl_wall:>9.2f} {tl_cpu:>8.2f} {name:>8} {wall:>11.2f} "
                    f"{cpu:>10.2f} {tl_wall / wall:>9.1f}x {tl_cpu / cpu:>8.1f}x {diff:>10.2e}  "
                    f"{stats.method}/{stats.forward_passes}  ({runs})",
                    flush=True,
                )
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
