"""Benchmark: how the cost grows with prompt length. lens-mcp's patch_sweep (resid_pre, heads), attribution_patch,
path_patch and edge_attribution against TransformerLens's own functions on the same cells, at 16, 64, 256 and
1,024 tokens, on SmolLM2-135M and on a ~1B random-weight model (Llama-3.2-1B's shape with a 49,152 vocabulary,
fp32), with wall time and peak memory; then "the ceiling": how long a prompt the default caps let a full patch_sweep grid through.

    .venv/bin/python bench/bench_scaling.py [--quick] [--models 135m 1b] [--lengths 16 64 256 1024]
        [--lengths-1b 16 64] [--tools ...] [--tl-budget 20] [--json bench/scaling.json] [--plot-only]

The pair: random single-token words; the corrupted prompt differs at two tokens, one early (position 2, BOS is 0)
and one in the middle (position n // 2). Metric: raw logit(' Paris') - logit(' Rome') at the last position.

The cells are the same at every length (so the curve is cost per cell against length):
- patch_sweep resid_pre: layers {0, n_layers // 2} x positions {2, n // 2}: 4 cells;
- patch_sweep heads: every head of the last layer (all positions): n_heads cells;
- attribution_patch: heads_by_pos (every layer x head x position; two forwards and one backward either way);
- path_patch: sender head (n_layers - 2, 0) into each head of the last layer's query input: n_heads paths;
- edge_attribution: eap over component edges, verify_top=0. TransformerLens's edge attribution refuses
  grouped-query attention (both models here), so its baseline is the floor: one clean forward and one corrupted
  forward + backward, measured the same way.

TransformerLens's loops run one full forward per cell. Where cells x (one forward) would exceed --tl-budget
seconds, only a sample of its cells is timed (its reference caches are always run in full) and the total is
extrapolated: the row says `sampled k/N`.

Each model runs in its own subprocess (a 1B model takes minutes to load here). Every measurement resets the
process's peak resident set (/proc/self/clear_refs, 5) and reads getrusage(RUSAGE_SELF).ru_maxrss after it,
minus the resident set just before it: the peak memory the call added.

Writes the records to --json, a table to stdout, and two plots: bench/scaling_time.png (seconds against tokens,
log-log, per tool, both models) and bench/scaling_memory.png (peak MB against tokens); --quick writes its plots
to a temporary folder and no JSON. Results are recorded in
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
ANSWER, WRONG = " Paris", " Rome"
WORDS = (
    "the cat sat on a mat while my old dog ran to his house near our big tree and she said that they would go "
    "there with him after school when it was warm but nobody knew why people like green apples more"
).split()
TOOLS = ["patch_sweep resid_pre", "patch_sweep heads", "attribution_patch", "path_patch", "edge_attribution"]
MODEL_1B = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 49152,  # SmolLM2's tokenizer (Llama-3.2-1B has 128,256): 0.8 GB less per weight copy
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
}
H100_FP32_FLOPS = 67e12
"""NVIDIA H100 SXM5 datasheet: 67 TFLOPS FP32 (dense, no tensor cores; fp32 matmuls do not use TF32 in PyTorch
unless allowed)."""
GPU_EFFICIENCY = 0.5
"""Assumed share of that peak an fp32 forward reaches (an assumption, not a measurement)."""


# ---------------------------------------------------------------------------------------------- measuring


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, peak MB added over the resident set before the call, result)."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set (VmHWM, ru_maxrss)
    except OSError:
        pass
    base = rss_kb()
    started = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return seconds, max(0.0, (peak - base) / 1024), out


def emit(record: dict[str, Any]) -> None:
    print("RECORD " + json.dumps(record), flush=True)


# ---------------------------------------------------------------------------------------------- the 1B model


def build_1b(folder: Path) -> None:
    """Llama-3.2-1B's shape with random weights (fp32, ~4.9 GB) and SmolLM2's tokenizer (49,152 ids, all in range)."""
    import transformers as tf

    from lens_mcp.loading.specs import smollm2_gguf_path

    if (folder / "model.safetensors").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf_path()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = tf.LlamaConfig(**MODEL_1B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    tf.LlamaForCausalLM(config).eval().save_pretrained(folder)


# ---------------------------------------------------------------------------------------------- the worker


def make_pair(tc: Any, n: int) -> tuple[str, str, torch.Tensor, list[int]]:
    """A clean / corrupted pair of exactly n tokens (BOS included) differing at positions 2 and n // 2."""
    view = tc.view
    single = [w for w in WORDS if view.to_tokens(" " + w, prepend_bos=False).shape[-1] == 1]
    rng = random.Random(n)
    words = ["The"] + [rng.choice(single) for _ in range(n)]
    while True:
        count = int(view.to_tokens(" ".join(words)).shape[-1])
        if count == n:
            break
        words = words[: len(words) - (count - n)] if count > n else words + [rng.choice(single)] * (n - count)
    offset = n - len(words)  # tokens before the first word (BOS)
    corrupted = list(words)
    for position in sorted({2, n // 2}):
        index = position - offset
        corrupted[index] = next(w for w in single if w != words[index])
    clean_text, corrupted_text = " ".join(words), " ".join(corrupted)
    tokens = view.to_tokens([clean_text, corrupted_text])
    changed = (tokens[0] != tokens[1]).nonzero().flatten().tolist()
    assert tokens.shape[-1] == n and changed == sorted({2, n // 2}), (tokens.shape, changed)
    return clean_text, corrupted_text, tokens, changed


def worker(args: argparse.Namespace) -> None:
    import pandas as pd
    from transformer_lens import patching
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch as tl_attribution_patch

    from lens_mcp.errors import LensError
    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost
    from lens_mcp.tools.causal.attribution_patch import attribution_patch
    from lens_mcp.tools.causal.patch_sweep import patch_sweep
    from lens_mcp.tools.causal.path_patch import path_patch
    from lens_mcp.tools.circuits.edge_attribution import edge_attribution
    from lens_mcp.tools.core.context import ToolContext

    label = args.worker
    spec = "smollm2-135m" if label == "135m" else str(args.model_dir)
    uncapped = Limits.from_env(
        max_call_seconds=10**7,
        max_work_units=10**13,
        max_response_chars=10**8,
        max_sweep_cells=10**8,
        max_prompt_tokens=4096,
    )
    started = time.perf_counter()
    host = ModelHost(uncapped)
    host.load(spec, device="cpu")
    load_s = time.perf_counter() - started
    emit({"kind": "load", "model": label, "seconds": load_s, "rss_mb": rss_kb() / 1024})
    with host.use() as model:
        tc = ToolContext(model, uncapped)
        bridge = model.bridge
        n_layers, n_heads = int(bridge.cfg.n_layers), int(bridge.cfg.n_heads)
        n_params = sum(p.numel() for p in bridge.parameters())
        embed_params = sum(p.numel() for name, p in bridge.named_parameters() if "embed" in name)
        emit(
            {
                "kind": "model",
                "model": label,
                "n_layers": n_layers,
                "n_heads": n_heads,
                "d_model": int(bridge.cfg.d_model),
                "n_params": n_params,
                "embed_params": embed_params,
                "dtype": str(bridge.cfg.dtype),
            }
        )
        answer, wrong = bridge.to_single_token(ANSWER), bridge.to_single_token(WRONG)

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return logits[0, -1, answer] - logits[0, -1, wrong]

        warm = make_pair(tc, 16)
        patch_sweep(tc, warm[0], warm[1], ANSWER, WRONG, component="resid_pre", layers=[0], positions=[-1])
        # once per model: edge attribution's slowdown probes and its fused-pass check, not part of any length's cost
        edge_attribution(tc, warm[0], warm[1], ANSWER, WRONG, verify_top=0, top_k=1)

        def one_length(n: int) -> None:
            clean, corrupted, tokens, changed = make_pair(tc, n)
            common: dict[str, Any] = dict(clean_prompt=clean, corrupted_prompt=corrupted, answer=ANSWER)
            common["wrong_answer"] = WRONG
            with torch.no_grad():
                fwd_s, fwd_mb, _ = measure(lambda tokens=tokens: bridge(tokens[1:]))
            base = {"model": label, "tokens": n, "load": os.getloadavg()[0]}
            emit({"kind": "forward", **base, "seconds": fwd_s, "peak_mb": fwd_mb})

            def sample_size(cells: int, fwd_s: float = fwd_s) -> int:
                return max(1, min(cells, math.floor(args.tl_budget / max(fwd_s, 1e-6))))

            def tl_cells(
                setup: Callable[[], Any], cell_loop: Callable[[Any, int], Any], cells: int
            ) -> tuple[float, float, int]:
                """TransformerLens's setup (caches), then k of its cells; the time extrapolated to all cells."""
                setup_s, setup_mb, state = measure(setup)
                k = sample_size(cells)
                loop_s, loop_mb, _ = measure(lambda: cell_loop(state, k))
                return setup_s + loop_s * cells / k, max(setup_mb, loop_mb), k

            def resid_setup(tokens: torch.Tensor = tokens) -> Any:
                with torch.no_grad():
                    return bridge.run_with_cache(tokens[:1])[1]

            if TOOLS[0] in args.tools:
                # patch_sweep resid_pre: layers {0, mid} x the two changed positions
                layers, positions = [0, n_layers // 2], [2, n // 2]
                ours_s, ours_mb, _ = measure(
                    lambda: patch_sweep(tc, **common, component="resid_pre", layers=layers, positions=positions)
                )
                cells = [(layer, pos) for layer in layers for pos in positions]

                def resid_loop(cache: Any, k: int, tokens: torch.Tensor = tokens, cells: list[Any] = cells) -> Any:
                    frame = pd.DataFrame(cells[:k], columns=["layer", "pos"])
                    with torch.no_grad():
                        return patching.get_act_patch_resid_pre(
                            bridge, tokens[1:], cache, metric, index_axis_names=None, index_df=frame
                        )

                tl_s, tl_mb, k = tl_cells(resid_setup, resid_loop, len(cells))
                emit(row(base, TOOLS[0], len(cells), ours_s, ours_mb, tl_s, tl_mb, k, "TL get_act_patch_resid_pre"))

            if TOOLS[1] in args.tools:
                # patch_sweep heads: every head of the last layer, all positions
                ours_s, ours_mb, _ = measure(
                    lambda: patch_sweep(tc, **common, component="heads", layers=[n_layers - 1])
                )
                head_cells = [(n_layers - 1, head) for head in range(n_heads)]

                def heads_loop(cache: Any, k: int, tokens: torch.Tensor = tokens, cells: list[Any] = head_cells) -> Any:
                    frame = pd.DataFrame(cells[:k], columns=["layer", "head"])
                    with torch.no_grad():
                        return patching.get_act_patch_attn_head_out_all_pos(
                            bridge, tokens[1:], cache, metric, index_axis_names=None, index_df=frame
                        )

                tl_s, tl_mb, k = tl_cells(resid_setup, heads_loop, n_heads)
                emit(
                    row(
                        base,
                        TOOLS[1],
                        n_heads,
                        ours_s,
                        ours_mb,
                        tl_s,
                        tl_mb,
                        k,
                        "TL get_act_patch_attn_head_out_all_pos",
                    )
                )

            if TOOLS[2] in args.tools:
                # attribution_patch: heads_by_pos, two forwards and one backward either way
                ours_s, ours_mb, result = measure(
                    lambda: attribution_patch(tc, **common, component="heads_by_pos", verify_top=0)
                )
                baseline = "TL attribution_patch (node)"
                if n <= args.tl_attribution_max:
                    tl_s, tl_mb, _ = measure(
                        lambda tokens=tokens: tl_attribution_patch(
                            bridge, tokens[:1], tokens[1:], metric, EdgeAttributionConfig(granularity="node")
                        )
                    )
                else:  # its per-node loop multiplies the whole cached tensor once per node: quadratic in length
                    tl_s, tl_mb = math.nan, math.nan
                    baseline += f" not run above {args.tl_attribution_max} tokens"
                emit(
                    row(
                        base,
                        TOOLS[2],
                        result.n_cells,
                        ours_s,
                        ours_mb,
                        tl_s,
                        tl_mb,
                        None,
                        baseline,
                    )
                )

            if TOOLS[3] in args.tools:
                # path_patch: sender (n_layers - 2, 0) into every head of the last layer, query input
                sender = [n_layers - 2, 0]
                ours_s, ours_mb, _ = measure(
                    lambda: path_patch(tc, **common, senders=[sender], receivers="all_heads", receiver_input="q")
                )
                z_name = f"blocks.{sender[0]}.attn.hook_z"

                def path_setup(tokens: torch.Tensor = tokens) -> Any:
                    with torch.no_grad():
                        keep = lambda name: name == z_name  # noqa: E731
                        return (
                            bridge.run_with_cache(tokens[:1], names_filter=keep)[1],
                            bridge.run_with_cache(tokens[1:], names_filter=keep)[1],
                        )

                def path_loop(caches: Any, k: int, tokens: torch.Tensor = tokens) -> Any:
                    with torch.no_grad():
                        if k == n_heads:
                            return patching.get_act_patch_direct_path(
                                bridge,
                                tokens[1:],
                                caches[0],
                                caches[1],
                                metric,
                                sender[0],
                                sender[1],
                                "q",
                                verbose=False,
                            )
                        return direct_path_sample(bridge, tokens[1:], caches, metric, sender, k)

                tl_s, tl_mb, k = tl_cells(path_setup, path_loop, n_heads)
                emit(row(base, TOOLS[3], n_heads, ours_s, ours_mb, tl_s, tl_mb, k, "TL get_act_patch_direct_path"))

            if TOOLS[4] in args.tools:
                # edge_attribution: eap, component edges
                try:
                    ours_s, ours_mb, result = measure(
                        lambda: edge_attribution(tc, **common, method="eap", edges="component", verify_top=0)
                    )
                except LensError as exc:  # refused before computing (e.g. more memory than is free): say so, go on
                    reason = str(exc).split(". Narrow it")[0][:300]
                    emit(row(base, TOOLS[4], 0, math.nan, math.nan, math.nan, math.nan, None, f"lens-mcp {reason}"))
                    return
                refusal = None
                try:
                    tl_attribution_patch(
                        bridge, tokens[:1], tokens[1:], metric, EdgeAttributionConfig(granularity="edge")
                    )
                except (ValueError, NotImplementedError) as exc:
                    refusal = str(exc).split("\n")[0][:160]
                floor_s, floor_mb, _ = measure(lambda tokens=tokens: floor(bridge, tokens, metric))
                baseline = f"floor: clean fwd + corrupted fwd+bwd (TL edge attribution refused: {refusal})"
                if refusal is None:
                    floor_s, floor_mb, _ = measure(
                        lambda tokens=tokens: tl_attribution_patch(
                            bridge, tokens[:1], tokens[1:], metric, EdgeAttributionConfig(granularity="edge")
                        )
                    )
                    baseline = "TL attribution_patch (edge)"
                emit(row(base, TOOLS[4], result.n_edges, ours_s, ours_mb, floor_s, floor_mb, None, baseline))
            del changed

        for n in args.lengths:
            one_length(n)

        # The ceiling: the tools' own dry-run estimates of a FULL grid, with the caps lifted so nothing is refused
        # (the driver applies the default caps to them).
        for n in args.ceiling_lengths:
            clean, corrupted, _, _ = make_pair(tc, n)
            for component in ("resid_pre", "heads"):
                try:
                    dry_s, _, dry = measure(
                        lambda c=component, clean=clean, corrupted=corrupted: patch_sweep(
                            tc, clean, corrupted, ANSWER, WRONG, component=c, dry_run=True
                        )
                    )
                    cost = dry.cost
                    emit(
                        {
                            "kind": "ceiling",
                            "model": label,
                            "tokens": n,
                            "component": component,
                            "cells": cost.cells,
                            "seconds": cost.seconds,
                            "work_units": cost.work_units,
                            "result_chars": cost.result_chars,
                            "throughput": cost.throughput,
                            "dry_run_s": dry_s,
                        }
                    )
                except LensError as exc:
                    emit({"kind": "ceiling", "model": label, "tokens": n, "component": component, "error": str(exc)})


def row(
    base: dict[str, Any],
    tool: str,
    cells: int,
    ours_s: float,
    ours_mb: float,
    tl_s: float,
    tl_mb: float,
    sampled: int | None,
    baseline: str,
) -> dict[str, Any]:
    return {
        "kind": "row",
        **base,
        "tool": tool,
        "cells": cells,
        "ours_s": ours_s,
        "ours_mb": ours_mb,
        "tl_s": tl_s,
        "tl_mb": tl_mb,
        "sampled": sampled,
        "baseline": baseline,
    }


def direct_path_sample(
    bridge: Any, corrupted: torch.Tensor, caches: Any, metric: Any, sender: list[int], k: int
) -> Any:
    """The first k cells of TransformerLens's get_act_patch_direct_path loop (its own hook and fork switch)."""
    from transformer_lens.patching import _make_direct_path_hook, _split_qkv_input

    layer, head = sender
    w_o = bridge.blocks[layer].attn.W_O[head]
    z_name = f"blocks.{layer}.attn.hook_z"
    delta = caches[0][z_name][:, :, head] @ w_o - caches[1][z_name][:, :, head] @ w_o
    out = []
    with _split_qkv_input(bridge):
        for dst_head in range(k):
            fired: list[bool] = []
            hook = (f"blocks.{layer + 1}.attn.hook_q_input", _make_direct_path_hook(delta, dst_head, fired))
            out.append(float(metric(bridge.run_with_hooks(corrupted, fwd_hooks=[hook]))))
            assert fired
    return out


def floor(bridge: Any, tokens: torch.Tensor, metric: Any) -> None:
    """One clean forward, one corrupted forward + backward to a leaf at the embeddings (bench_edges.py's floor)."""
    with torch.no_grad():
        bridge(tokens[:1])
    leaf: list[torch.Tensor] = []

    def add(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        leaf.append(torch.zeros_like(act, requires_grad=True))
        return act + leaf[0]

    with torch.enable_grad(), bridge.hooks(fwd_hooks=[("hook_embed", add)]):
        torch.autograd.grad(metric(bridge(tokens[1:])), leaf)


# ---------------------------------------------------------------------------------------------- the driver


def run_worker(
    label: str,
    lengths: list[int],
    ceiling: list[int],
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    save: Any,
) -> None:
    """Run one model's worker, appending its records as they come (and saving them, so a cut-off run keeps them)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", label, "--model-dir", str(args.model_dir)]
    command += ["--lengths", *map(str, lengths), "--ceiling-lengths", *map(str, ceiling)]
    command += ["--tl-budget", str(args.tl_budget), "--tl-attribution-max", str(args.tl_attribution_max)]
    command += ["--tools", *args.tools]
    started = time.perf_counter()
    # A fixed mmap threshold: every large tensor is its own mapping, returned to the system when freed, so the
    # resident set falls back after each call and the next call's peak is not hidden in freed heap.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("RECORD "):
                record = json.loads(line[7:])
                records.append(record)
                save()
                print(f"  [{time.perf_counter() - started:6.0f}s] {short(record)}", flush=True)
    if process.returncode:
        print(f"worker {label} exited with {process.returncode}", flush=True)


def short(record: dict[str, Any]) -> str:
    if record["kind"] == "row":
        return (
            f"{record['model']} {record['tokens']} {record['tool']}: ours {record['ours_s']:.2f}s "
            f"baseline {record['tl_s']:.2f}s{' (sampled)' if record['sampled'] not in (None, record['cells']) else ''}"
        )
    return json.dumps(record)[:200]


def fmt_sampled(record: dict[str, Any]) -> str:
    k = record["sampled"]
    return "" if k is None or k == record["cells"] else f" *{k}/{record['cells']}"


def print_table(records: list[dict[str, Any]]) -> None:
    forward = {(r["model"], r["tokens"]): r["seconds"] for r in records if r["kind"] == "forward"}
    print(
        "\n| tool | model | tokens | cells | lens-mcp s | TL s | ratio TL/lens | lens-mcp peak MB | TL peak MB | "
        "one forward s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        if r["kind"] != "row":
            continue
        tl = f"{r['tl_s']:.2f}{fmt_sampled(r)}"
        if r["baseline"].startswith("floor"):
            tl += " (floor)"
        print(
            f"| {r['tool']} | {r['model']} | {r['tokens']} | {r['cells']} | {r['ours_s']:.2f} | {tl} | "
            f"{r['tl_s'] / r['ours_s']:.2f} | {r['ours_mb']:.0f} | {r['tl_mb']:.0f} | "
            f"{forward.get((r['model'], r['tokens']), float('nan')):.2f} |"
        )
    print("\n*k/N: TransformerLens's loop timed on k of its N cells (its caches in full), extrapolated to N.")
    print("(floor): TransformerLens's edge attribution refuses grouped-query attention; the floor is given instead.")
    forwards = [r for r in records if r["kind"] == "forward"]
    if forwards:
        print(
            "\none plain forward (corrupted prompt, no grad): "
            + ", ".join(f"{r['model']} {r['tokens']} tok {r['seconds']:.2f}s" for r in forwards)
        )


def print_ceiling(records: list[dict[str, Any]]) -> None:
    from lens_mcp.limits import Limits

    caps = Limits()
    models = {r["model"]: r for r in records if r["kind"] == "model"}
    print(
        f"\nThe ceiling (default caps: max_call_seconds={caps.max_call_seconds}, max_work_units="
        f"{caps.max_work_units:,}, max_response_chars={caps.max_response_chars:,}, max_sweep_cells="
        f"{caps.max_sweep_cells:,}, max_prompt_tokens={caps.max_prompt_tokens}); full grids, the tools' dry-run "
        "estimates (seconds at the throughput the tool measured on this loaded machine). H100 seconds: an "
        f"EXTRAPOLATION, work units x FLOPs per token-layer / ({H100_FP32_FLOPS / 1e12:.0f} TFLOPS fp32 x "
        f"{GPU_EFFICIENCY})"
    )
    print(
        "| model | component | tokens | cells | est. s here | work units | result chars | allowed here | "
        "H100 s (extrapolated) | allowed on one H100 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    fits: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] != "ceiling":
            continue
        if "error" in r:
            print(f"| {r['model']} | {r['component']} | {r['tokens']} | error: {r['error'][:120]} |")
            continue
        r["gpu_s"] = gpu_seconds(models[r["model"]], r["work_units"], r["tokens"])
        fits.setdefault((r["model"], r["component"]), []).append(r)
        print(
            f"| {r['model']} | {r['component']} | {r['tokens']} | {r['cells']} | {r['seconds']:.1f} | "
            f"{r['work_units']:,} | {r['result_chars']:,} | {over(caps, r['seconds'], r) or 'yes'} | "
            f"{r['gpu_s']:.3f} | {over(caps, r['gpu_s'], r) or 'yes'} |"
        )
    print(
        "\nLongest prompt a full grid is let through (power law through the two longest dry runs, solved for each cap):"
    )
    for (model, component), points in fits.items():
        points = sorted(points, key=lambda r: r["tokens"])
        if len(points) < 2:
            continue
        a, b = points[-2], points[-1]
        here = min(
            crossing(a, b, "seconds", caps.max_call_seconds),
            crossing(a, b, "work_units", caps.max_work_units),
            caps.max_prompt_tokens,
        )
        gpu = min(
            crossing(a, b, "gpu_s", caps.max_call_seconds),
            crossing(a, b, "work_units", caps.max_work_units),
            caps.max_prompt_tokens,
        )
        print(
            f"  {model} {component}: here ~{here:.0f} tokens; one H100 (extrapolated) ~{gpu:.0f} tokens "
            f"(work units alone: ~{crossing(a, b, 'work_units', caps.max_work_units):.0f}; "
            f"seconds alone on the H100: ~{crossing(a, b, 'gpu_s', caps.max_call_seconds):.0f})"
        )


def crossing(a: dict[str, Any], b: dict[str, Any], key: str, cap: float) -> float:
    """Tokens where value = c * tokens^k (through a and b) reaches cap."""
    ya, yb = max(a[key], 1e-9), max(b[key], 1e-9)
    k = math.log(yb / ya) / math.log(b["tokens"] / a["tokens"])
    if k <= 0:
        return float("inf")
    return b["tokens"] * (cap / yb) ** (1 / k)


def over(caps: Any, seconds: float, r: dict[str, Any]) -> str:
    reasons = []
    if seconds > caps.max_call_seconds:
        reasons.append("no: seconds")
    if r["work_units"] > caps.max_work_units:
        reasons.append("no: work units")
    if r["cells"] > caps.max_sweep_cells:
        reasons.append("no: cells")
    if r["tokens"] > caps.max_prompt_tokens:
        reasons.append("no: tokens")
    return ", ".join(reasons)


def gpu_seconds(model: dict[str, Any], work_units: int, tokens: int) -> float:
    """An extrapolation, not a measurement: work units (token-layers) x FLOPs per token-layer (2 x one block's
    parameters, plus 2 x tokens x d_model for causal attention's scores and weighted sum; the unembedding left
    out) over the assumed H100 fp32 throughput."""
    d_model, n_layers = model["d_model"], model["n_layers"]
    block_params = (model["n_params"] - model.get("embed_params", 0)) / n_layers
    flops = 2 * block_params + 2 * tokens * d_model
    return work_units * flops / (H100_FP32_FLOPS * GPU_EFFICIENCY)


def plot(records: list[dict[str, Any]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["kind"] == "row"]
    models = sorted({r["model"] for r in rows}, key=lambda m: (len(m), m))
    colors = {"135m": "tab:blue", "1b": "tab:red"}
    written = []
    for key, ylabel, name in (("s", "seconds", "scaling_time.png"), ("mb", "peak MB added", "scaling_memory.png")):
        fig, axes = plt.subplots(1, len(TOOLS), figsize=(15, 3.4), sharex=True)
        for ax, tool in zip(axes, TOOLS, strict=True):
            for model in models:
                points = sorted(
                    (r for r in rows if r["tool"] == tool and r["model"] == model), key=lambda r: r["tokens"]
                )
                if not points:
                    continue
                xs = [r["tokens"] for r in points]
                color = colors.get(model, "tab:green")
                ax.plot(xs, [max(r["ours_" + key], 1e-3) for r in points], "o-", color=color, label=f"lens-mcp {model}")
                ax.plot(
                    xs,
                    [max(r["tl_" + key], 1e-3) for r in points],
                    "s--",
                    color=color,
                    alpha=0.6,
                    label=f"{'floor' if tool == 'edge_attribution' else 'TL'} {model}",
                )
                for r in points:
                    if r["sampled"] not in (None, r["cells"]) and key == "s":
                        ax.plot([r["tokens"]], [r["tl_s"]], "s", mfc="white", color=color)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(tool, fontsize=9)
            ax.set_xlabel("prompt tokens", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel(ylabel, fontsize=8)
        axes[0].legend(fontsize=6)
        note = "; solid: lens-mcp, dashed: TransformerLens (edge_attribution: the floor)"
        note += "; hollow squares: TL extrapolated from sampled cells" if key == "s" else ""
        fig.suptitle(f"{ylabel} against prompt length, log-log{note}", fontsize=9)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=72)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 135M only, 16 and 64 tokens")
    parser.add_argument("--models", nargs="+", default=["135m", "1b"], choices=["135m", "1b"])
    parser.add_argument("--lengths", type=int, nargs="*", default=[16, 64, 256, 1024])
    parser.add_argument("--lengths-1b", type=int, nargs="+", default=None, help="default: --lengths")
    parser.add_argument("--ceiling-lengths", type=int, nargs="*", default=None, help="default: the measured lengths")
    parser.add_argument("--ceiling-lengths-1b", type=int, nargs="+", default=None)
    parser.add_argument("--tools", nargs="+", default=TOOLS, choices=TOOLS, help="default: all five")
    parser.add_argument("--skip-ceiling", action="store_true", help="no dry runs for the ceiling")
    parser.add_argument("--tl-budget", type=float, default=20.0, help="seconds of TL cells before it is sampled")
    parser.add_argument(
        "--tl-attribution-max",
        type=int,
        default=256,
        help="longest prompt TL's attribution_patch runs at (its per-node loop took over 10 minutes at 1,024)",
    )
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/lens-mcp-bench-llama-1b-random"))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "scaling.json")
    parser.add_argument("--plots", type=Path, default=ROOT / "bench")
    parser.add_argument("--plot-only", action="store_true", help="table and plots from --json, nothing run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.worker:
        worker(args)
        return
    if args.plot_only:
        records = json.loads(args.json.read_text())["records"]
    else:
        if args.quick:
            args.models, args.lengths = ["135m"], [16, 64]
            if args.plots == ROOT / "bench":
                args.plots = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
        header = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            "load_before": os.getloadavg(),
        }
        print(header, flush=True)
        records: list[dict[str, Any]] = []
        started = time.perf_counter()

        def save() -> None:
            if not args.quick:
                args.json.write_text(json.dumps({"header": header, "records": records}, indent=1))

        for label in args.models:
            lengths = args.lengths if label == "135m" or args.lengths_1b is None else args.lengths_1b
            ceiling = (args.ceiling_lengths_1b if label == "1b" else None) or args.ceiling_lengths or lengths
            ceiling = [] if args.skip_ceiling else ceiling
            if label == "1b":
                build_1b(args.model_dir)
            run_worker(label, lengths, ceiling, args, records, save)
        header["load_after"] = os.getloadavg()
        header["seconds"] = time.perf_counter() - started
        print(header)
        save()
    print_table(records)
    print_ceiling(records)
    for path in plot(records, args.plots):
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
