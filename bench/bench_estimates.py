"""Benchmark: how close each tool's cost estimate (`cost.seconds`, made before its patched passes) is to the time
the call then takes, over a matrix of components, prompt lengths, where the pair differs, and dataset sizes.

    .venv/bin/python bench/bench_estimates.py [--model smollm2-135m|toy-induction] [--lengths 8 32 128]
        [--pairs 1 4] [--png bench/estimates.png]

Prints one line per call (estimate, actual, ratio actual/estimate) and the share within 0.5x-2x, and writes a
log-log scatter plot. Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

WORDS: list[str] = [
    str(word)
    for word in (
        "the cat sat on a mat while my old dog ran to his house near our big tree and she said that they would "
        "go there with him after school when it was warm but nobody knew why people like green apples more"
    ).split()
]


TOY_WORDS = [f"w{i}" for i in range(1, 200)]


def pair_prompts(n_words: int, where: str, seed: int, words: Sequence[str] = WORDS) -> tuple[str, str]:
    """A clean / corrupted pair of n_words words that differ at one word, early (the 2nd) or late (the last)."""
    rng = random.Random(seed)
    clean = [rng.choice(words) for _ in range(n_words)]
    corrupted = list(clean)
    index = 1 if where == "early" else n_words - 1
    corrupted[index] = next(w for w in words if w != clean[index])
    return " ".join(clean), " ".join(corrupted)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 32, 128, 256])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--png", default="bench/estimates.png")
    args = parser.parse_args()

    from lens_mcp.errors import LensError
    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost
    from lens_mcp.tools.causal.ablate_heads import ablate_heads
    from lens_mcp.tools.causal.attribution_patch import attribution_patch
    from lens_mcp.tools.causal.patch_sweep import patch_sweep
    from lens_mcp.tools.causal.path_patch import path_patch
    from lens_mcp.tools.circuits.circuit_faithfulness import circuit_faithfulness
    from lens_mcp.tools.circuits.edge_attribution import edge_attribution
    from lens_mcp.tools.core.context import ToolContext
    from lens_mcp.tools.features.feature_exemplars import feature_exemplars
    from lens_mcp.tools.features.generate import generate

    host = ModelHost(Limits(max_call_seconds=3600, max_work_units=10**12, max_sweep_cells=10**6))
    host.load(args.model, device=args.device)
    print(
        f"{args.model} on {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; load average {os.getloadavg()[0]:.2f}"
    )
    rows: list[tuple[str, float, float]] = []
    toy = args.model == "toy-induction"
    words, answer, wrong = (TOY_WORDS, " w5", " w6") if toy else (WORDS, " the", " a")
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        late = tc.view.n_layers // 2
        calls: list[tuple[str, Callable[[], Any]]] = []
        for n_words in args.lengths:
            for where in ("early", "late"):
                for n_pairs in args.pairs:
                    items = [pair_prompts(n_words, where, seed, words) for seed in range(n_pairs)]
                    data = [{"clean_prompt": c, "corrupted_prompt": k, "answer": answer, "wrong_answer": wrong}
                            for c, k in items]  # fmt: skip
                    for component in ("resid_pre", "attn_out", "heads", "heads_by_pos"):
                        if (component == "heads_by_pos" and n_words > 32) or (n_pairs > 4 and n_words > 32):
                            continue
                        # past 64 words a full layer x position grid takes tens of minutes: two layers of it
                        some = [0, late] if component in ("resid_pre", "attn_out") and n_words > 64 else None
                        label = f"patch_sweep {component} {n_words}w {where} {n_pairs}p" + (" 2 layers" if some else "")
                        calls.append((label, lambda d=data, c=component, s=some: patch_sweep(tc, pairs=d, component=c, layers=s)))  # type: ignore[arg-type]  # fmt: skip
                    if n_pairs == 1:
                        clean, corrupted = items[0]
                        calls.append((f"path_patch into L{late} q {n_words}w {where}", lambda c=clean, k=corrupted:
                                      path_patch(tc, c, k, answer, wrong, receivers=[[late, 0]], receiver_input="q")))  # fmt: skip
                        calls.append((f"attribution_patch heads_by_pos {n_words}w {where}", lambda c=clean, k=corrupted:
                                      attribution_patch(tc, c, k, answer, wrong, component="heads_by_pos")))  # fmt: skip
                        calls.append((f"edge_attribution eap {n_words}w {where}", lambda c=clean, k=corrupted:
                                      edge_attribution(tc, c, k, answer, wrong)))  # fmt: skip
                        calls.append((f"circuit_faithfulness last {n_words}w {where}", lambda c=clean, k=corrupted:
                                      circuit_faithfulness(tc, c, k, answer, wrong, circuit="last")))  # fmt: skip
                    elif n_pairs > 1 and n_words <= 32:
                        calls.append((f"edge_attribution eap {n_words}w {where} {n_pairs}p", lambda d=data:
                                      edge_attribution(tc, pairs=d)))  # type: ignore[arg-type]  # fmt: skip
            clean = pair_prompts(n_words, "late", 0, words)[0]
            calls.append((f"ablate_heads 4 heads {n_words}w", lambda c=clean:
                          ablate_heads(tc, c, heads=[[late, h] for h in range(4)], answer=answer, wrong_answer=wrong, individually=True)))  # fmt: skip
        calls.append(("generate 16 tokens", lambda: generate(tc, " ".join(words[:8]), max_new_tokens=16)))
        if not toy:
            for tokens in (4096, 16384):
                calls.append((f"feature_exemplars scan {tokens} tokens", lambda n=tokens:
                              feature_exemplars(tc, feature=3, tokens=n)))  # fmt: skip
        calls[0][1]()  # warm-up
        for label, call in calls:
            started = time.perf_counter()
            try:
                result = call()
            except LensError as exc:  # refused before computing: nothing to compare
                print(f"{label:<52} refused: {str(exc)[:100]}")
                continue
            actual = time.perf_counter() - started
            estimated = result.cost.seconds if result.cost is not None else float("nan")
            rows.append((label, estimated, actual))
            print(
                f"{label:<52} est {estimated:8.2f}s  actual {actual:8.2f}s  ratio {actual / max(estimated, 1e-9):6.2f}"
            )
    ratios = [actual / max(est, 1e-9) for _, est, actual in rows]
    inside = sum(0.5 <= r <= 2 for r in ratios)
    print(f"within 0.5x-2x: {inside}/{len(ratios)}; worst under {min(ratios):.2f}, worst over {max(ratios):.2f}")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5))
    axes = figure.add_subplot(1, 1, 1)
    for tool, colour in (("patch_sweep", "C0"), ("path_patch", "C1"), ("attribution_patch", "C2"), ("edge", "C3")):
        points = [(est, act) for label, est, act in rows if label.startswith(tool)]
        if points:
            axes.scatter([p[0] for p in points], [p[1] for p in points], s=14, color=colour, label=tool)
    low = min(min(e, a) for _, e, a in rows) * 0.8
    high = max(max(e, a) for _, e, a in rows) * 1.25
    axes.plot([low, high], [low, high], "k-", lw=0.8)
    axes.plot([low, high], [2 * low, 2 * high], "k--", lw=0.6)
    axes.plot([low, high], [0.5 * low, 0.5 * high], "k--", lw=0.6)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("estimated seconds")
    axes.set_ylabel("actual seconds")
    axes.set_title(f"cost estimates on {args.model} ({inside}/{len(ratios)} within 2x)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.png, dpi=100)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
