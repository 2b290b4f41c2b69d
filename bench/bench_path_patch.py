"""Benchmark: lens-mcp's path_patch against TransformerLens's get_act_patch_direct_path, in one process.

One sender head into every later head's query (or key/value) input on SmolLM2-135M, with an IOI pair of
15 tokens, both ways; prints the time of each, the ratio and the largest absolute difference between the two
grids (raw logit difference ' Mary' - ' John').

    .venv/bin/python bench/bench_path_patch.py [--device cpu|cuda] [--sender 0 0] [--component q]
        [--pair early|late] [--repeat 2] [--model smollm2-135m|PATH] [--skip-tl]

Pairs: `early` corrupts both names of the first clause (the prompts differ from position 2 on); `late` is the
ABC corruption (only the subject of the second clause differs, at position 10), where lens-mcp recomputes only
the last 5 positions. Our run goes `repeat` times before and after TransformerLens's; the fastest is compared.
TransformerLens refuses k/v on grouped-query models, so only q has a ratio on SmolLM2.

Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = {
    "early": "When Tom and Paul went to the store, Paul gave a drink to",
    "late": "When Mary and John went to the store, Tom gave a drink to",
}
ANSWER, WRONG = " Mary", " John"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sender", nargs=2, type=int, default=[0, 0], metavar=("LAYER", "HEAD"))
    parser.add_argument("--component", default="q", choices=["q", "k", "v"])
    parser.add_argument("--pair", default="early", choices=sorted(CORRUPTED))
    parser.add_argument("--repeat", type=int, default=2, help="runs of ours before and after TransformerLens's")
    parser.add_argument("--skip-tl", action="store_true", help="only time lens-mcp (no ratio)")
    args = parser.parse_args()

    from transformer_lens import patching

    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost
    from lens_mcp.tools.causal.path_patch import run_path_patch
    from lens_mcp.tools.core.context import ToolContext

    started = time.perf_counter()
    host = ModelHost(Limits.from_env())
    host.load(args.model, device=args.device)
    print(
        f"loaded {args.model} on {args.device} in {time.perf_counter() - started:.1f}s; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    if hasattr(os, "getloadavg"):
        print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    corrupted = CORRUPTED[args.pair]
    sender_layer, sender_head = args.sender

    with host.use() as model, torch.no_grad():
        tc = ToolContext(model, host.limits)
        bridge = model.bridge
        tokens = bridge.to_tokens([CLEAN, corrupted])
        answer, wrong = bridge.to_single_token(ANSWER), bridge.to_single_token(WRONG)
        n_layers, n_heads = int(bridge.cfg.n_layers), int(bridge.cfg.n_heads)

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        def ours() -> tuple[float, torch.Tensor, object]:
            sync()
            begin = time.perf_counter()
            run = run_path_patch(
                tc, CLEAN, corrupted, ANSWER, WRONG, [[sender_layer, sender_head]], "all_heads", args.component
            )
            sync()
            elapsed = time.perf_counter() - begin
            grid = torch.zeros(n_layers, n_heads)
            for (_, (receiver,)), value in zip(run.paths, run.values, strict=True):
                grid[receiver.layer, receiver.head] = value
            return elapsed, grid, run

        run_path_patch(tc, CLEAN, corrupted, ANSWER, WRONG, [[n_layers - 2, 0]], "all_heads", "q")  # warm-up
        times = []
        for _ in range(args.repeat):
            elapsed, grid, run = ours()
            times.append(elapsed)
        print(
            f"lens-mcp path_patch ({sender_layer},{sender_head}) -> all_heads [{args.component}], pair {args.pair} "
            f"({tokens.shape[-1]} tokens): {len(run.paths)} paths, method {run.stats.method}, "  # type: ignore[attr-defined]
            f"{run.stats.forward_passes} batched passes, rows per batch {run.stats.batch_rows}; "  # type: ignore[attr-defined]
            f"runs: {', '.join(f'{t:.2f}s' for t in times)}"
        )
        if args.skip_tl:
            return

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return logits[0, -1, answer] - logits[0, -1, wrong]

        sync()
        begin = time.perf_counter()
        _, clean_cache = bridge.run_with_cache(tokens[:1], names_filter=lambda name: name.endswith("hook_z"))
        _, corrupted_cache = bridge.run_with_cache(tokens[1:], names_filter=lambda name: name.endswith("hook_z"))
        reference = patching.get_act_patch_direct_path(
            bridge,
            tokens[1:],
            clean_cache,
            corrupted_cache,
            metric,
            sender_layer,
            sender_head,
            args.component,
            verbose=False,
        )
        sync()
        tl_time = time.perf_counter() - begin
        print(f"TransformerLens get_act_patch_direct_path (+ both caches): {tl_time:.2f}s")
        for _ in range(args.repeat):
            elapsed, grid, run = ours()
            times.append(elapsed)
        if hasattr(os, "getloadavg"):
            print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        best = min(times)
        later = slice(sender_layer + 1, n_layers)
        diff = float((grid[later] - reference.cpu()[later]).abs().max())
        print(f"lens-mcp runs: {', '.join(f'{t:.2f}s' for t in times)}")
        print(
            f"RESULT component={args.component} pair={args.pair} paths={len(run.paths)} "  # type: ignore[attr-defined]
            f"transformer_lens={tl_time:.2f}s lens_mcp_best={best:.2f}s ratio={tl_time / best:.1f}x "
            f"max_abs_diff={diff:.2e}"
        )


if __name__ == "__main__":
    main()
