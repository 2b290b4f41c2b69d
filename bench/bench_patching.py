"""Benchmark: lens-mcp's patch_sweep against TransformerLens's own patching functions, in one process.

Runs the full sweep (every layer x every position for resid_pre, every layer x every head for heads) on
SmolLM2-135M with the Eiffel Tower / Colosseum pair, both ways, and prints the time of each, the ratio,
and the largest absolute difference between the two grids (raw logit difference ' Paris' - ' Rome').

    .venv/bin/python bench/bench_patching.py [--device cpu|cuda] [--components resid_pre heads] [--repeat 1]

Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"
ANSWER, WRONG = " Paris", " Rome"
TL_FUNCTIONS = {"resid_pre": "get_act_patch_resid_pre", "heads": "get_act_patch_attn_head_out_all_pos"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--components", nargs="+", default=["resid_pre", "heads"], choices=sorted(TL_FUNCTIONS))
    parser.add_argument("--repeat", type=int, default=1, help="runs of our sweep (the best is reported)")
    parser.add_argument("--skip-tl", action="store_true", help="only time lens-mcp (no ratio)")
    args = parser.parse_args()

    from transformer_lens import patching

    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost
    from lens_mcp.tools.context import ToolContext
    from lens_mcp.tools.patch_sweep import run_sweep

    started = time.perf_counter()
    host = ModelHost(Limits.from_env())
    host.load(args.model, device=args.device)
    print(f"loaded {args.model} on {args.device} in {time.perf_counter() - started:.1f}s; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
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

        run_sweep(tc, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre", layers=[0], positions=[-1])  # warm-up
        print(f"{'component':<10} {'cells':>6} {'TransformerLens s':>18} {'lens-mcp s':>11} {'ratio':>7} "
              f"{'max |diff|':>11}  method / passes")
        for component in args.components:
            times = []
            for _ in range(max(1, args.repeat)):
                sync()
                t0 = time.perf_counter()
                sweep = run_sweep(tc, CLEAN, CORRUPTED, ANSWER, WRONG, component)
                sync()
                times.append(time.perf_counter() - t0)
            ours_s = min(times)
            shape = (len(sweep.layers), len(sweep.heads) if sweep.heads else len(sweep.positions or []))
            ours = sweep.values.reshape(shape)
            if args.skip_tl:
                print(f"{component:<10} {ours.numel():>6} {'-':>18} {ours_s:>11.2f} {'-':>7} {'-':>11}  "
                      f"{sweep.engine.stats.method} / {sweep.engine.stats.forward_passes}")
                continue
            sync()
            t0 = time.perf_counter()
            _, clean_cache = bridge.run_with_cache(tokens[:1])
            reference = getattr(patching, TL_FUNCTIONS[component])(bridge, tokens[1:], clean_cache, metric)
            sync()
            tl_s = time.perf_counter() - t0
            diff = float((reference.float().cpu() - ours.float().cpu()).abs().max())
            print(f"{component:<10} {ours.numel():>6} {tl_s:>18.2f} {ours_s:>11.2f} {tl_s / ours_s:>6.1f}x "
                  f"{diff:>11.2e}  {sweep.engine.stats.method} / {sweep.engine.stats.forward_passes}", flush=True)


if __name__ == "__main__":
    main()
