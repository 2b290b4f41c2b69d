"""Benchmark and quality check of edge_attribution and circuit_faithfulness, in one process.

Part 1, SmolLM2-135M (the default model, 30 layers x 9 heads, 3 key/value heads), an IOI dataset of 16 pairs
in the style of Wang et al. 2022 (single-token names with a leading space; the corrupted prompt replaces the
three names with three others, the "ABC" corruption), metric logit(IO) - logit(S) at the last position:
- the floor: one forward of the clean prompts and one forward + backward of the corrupted prompts (a leaf at
  the embeddings), batched, measured here;
- edge_attribution's computation, component edges, eap and eap-ig (5 steps), against the floor and 5 x eap;
- peak resident memory of the process after the full graph (VmHWM);
- faithfulness curves of the EAP and EAP-IG rankings (corrupted ablation, pooled over the pairs), 10 sizes in
  one call, and the same 10 sizes as a loop of single evaluations.
Part 2, a GPT-2-small-config model with random weights (12 layers, 12 heads, d_model 768; vocabulary 512 to
fit the offline test tokenizer), one 8-token pair, position edges: our 10-size curve in one call against
TransformerLens's `faithfulness` for one size.

    nice .venv/bin/python bench/bench_edges.py [--skip-gpt2] [--skip-smol]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.circuits._attribute import attribute
from lens_mcp.tools.circuits._engine import build_graph
from lens_mcp.tools.circuits._faithful import evaluate, kept_masks
from lens_mcp.tools.circuits._inputs import load_dataset
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext

NAMES = [
    " Mary",
    " John",
    " Tom",
    " James",
    " Anna",
    " Sarah",
    " David",
    " Michael",
    " Paul",
    " Lisa",
    " Mark",
    " Kate",
    " Peter",
    " Emma",
    " Jack",
    " Alice",
    " Bob",
    " Steve",
    " Laura",
    " Daniel",
]
TEMPLATES = [
    "When{a} and{b} went to the store,{b} gave a drink to",
    "After{a} and{b} went to the park,{b} gave a ball to",
    "Then,{a} and{b} had a long argument, and afterwards{b} said to",
    "When{a} and{b} got a snack at the cafe,{b} decided to give it to",
]
SIZES = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


def vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def ioi_pairs(tc: ToolContext, n: int) -> list[dict[str, str]]:
    names = [name for name in NAMES if len(tc.view.to_tokens(name, prepend_bos=False)[0]) == 1]
    pairs = []
    for i in range(n):
        a, b = names[i % len(names)], names[(i + 1 + i // len(names)) % len(names)]
        c, d = names[(i + 5) % len(names)], names[(i + 9) % len(names)]
        template = TEMPLATES[(i // len(names)) % len(TEMPLATES)]
        pairs.append(
            {
                "clean_prompt": template.format(a=a, b=b),
                "corrupted_prompt": template.format(a=c, b=d),
                "answer": a,
                "wrong_answer": b,
            }
        )
    return pairs


def timed(fn: Any, repeat: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def smol(repeat: int) -> None:
    host = ModelHost(Limits())
    host.load("smollm2-135m", device="cpu")
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        graph = build_graph(tc)
        pairs = ioi_pairs(tc, 16)
        groups: dict[int, list[dict[str, str]]] = {}
        for pair in pairs:
            n = int(tc.view.to_tokens(pair["clean_prompt"]).shape[-1])
            groups.setdefault(n, []).append(pair)
        length, chosen = max(groups.items(), key=lambda kv: len(kv[1]))
        data = load_dataset(tc, chosen, None, None, None, None, "logit_diff", True)  # type: ignore[arg-type]
        print(
            f"SmolLM2-135M: {len(chosen)} IOI pairs of {length} tokens (of {len(pairs)} built); graph "
            f"{graph.n_edges} component edges"
        )
        clean = torch.cat([t[:1] for t in data.tokens])
        corrupted = torch.cat([t[1:] for t in data.tokens])

        def floor() -> None:
            with torch.no_grad():
                tc.model.bridge(clean)
            leaf: list[torch.Tensor] = []

            def add(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
                leaf.append(torch.zeros_like(act, requires_grad=True))
                return act + leaf[0]

            with torch.enable_grad(), tc.model.bridge.hooks(fwd_hooks=[("hook_embed", add)]):
                logits = tc.model.bridge(corrupted)[:, -1]
                value = torch.stack([m(logits[i : i + 1]).sum() for i, m in enumerate(data.metrics)]).sum()
                torch.autograd.grad(value, leaf)

        def run(steps: int) -> Any:
            return attribute(tc, graph, data.tokens, list(data.metrics), steps, False, ProgressCounter())

        rss0 = vm("VmRSS")
        t_floor, _ = timed(floor, repeat)
        t_eap, eap = timed(lambda: run(1), repeat)
        hwm = vm("VmHWM")
        t_ig, ig = timed(lambda: run(5), 1)
        t_floor2, _ = timed(floor, repeat)
        t_floor = min(t_floor, t_floor2)
        print(f"floor (clean fwd + corrupted fwd+bwd, {len(chosen)} rows each, batched): {t_floor:.2f} s")
        print(
            f"eap: {t_eap:.2f} s = {t_eap / t_floor:.1f} x floor; eap-ig (5 steps): {t_ig:.2f} s = "
            f"{t_ig / t_eap:.2f} x eap ({t_ig / (5 * t_floor):.1f} x 5 floors)"
        )
        print(f"memory: RSS before {rss0:.0f} MiB, peak (VmHWM) after eap {hwm:.0f} MiB")
        print(f"clean metric {float(eap.clean_metric.mean()):.3f}, corrupted {float(eap.corrupted_metric.mean()):.3f}")

        valid = graph.valid()
        curves = {}
        for label, scores in (("EAP", eap), ("EAP-IG", ig)):
            flat = (scores.values.abs() * valid - (~valid).float()).flatten()
            order = torch.argsort(flat, descending=True)[: max(SIZES)]
            n_r = len(graph.readers)
            edges = [(int(i) // n_r, int(i) % n_r, None) for i in order]
            kept = kept_masks(graph, [edges[:k] for k in SIZES], None)
            t_curve, curve = timed(
                lambda kept=kept: evaluate(
                    tc, graph, data.tokens, list(data.metrics), kept, "corrupted", None, 0, ProgressCounter()
                ),
                1,
            )
            curves[label] = curve.pooled()[2]
            print(f"{label} curve of {len(SIZES)} sizes in one call: {t_curve:.1f} s")
            if label == "EAP":
                start = time.perf_counter()
                for index in range(len(SIZES)):
                    evaluate(
                        tc,
                        graph,
                        data.tokens,
                        list(data.metrics),
                        kept[index : index + 1],
                        "corrupted",
                        None,
                        0,
                        ProgressCounter(),
                    )
                t_loop = time.perf_counter() - start
                print(f"  the same as {len(SIZES)} single evaluations: {t_loop:.1f} s ({t_loop / t_curve:.2f} x)")
        print("| edges | EAP recovered | EAP-IG recovered |")
        print("| --- | --- | --- |")
        for k, a, b in zip(SIZES, curves["EAP"], curves["EAP-IG"], strict=True):
            print(f"| {k} | {a:.3f} | {b:.3f} |")
        for label, values in curves.items():
            reach = [k for k, v in zip(SIZES, values, strict=True) if v >= 0.8]
            print(f"{label} reaches 0.8 at k = {reach[0] if reach else 'not within ' + str(max(SIZES))}")


def gpt2(repeat: int) -> None:
    import transformers as tf
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, faithfulness
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch as tl_attribution_patch

    from tests.architectures import tokenizer

    folder = Path(tempfile.mkdtemp(prefix="gpt2-small-random-"))
    torch.manual_seed(0)
    tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=512, bos_token_id=0, eos_token_id=0)).eval().save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    host = ModelHost(Limits())
    host.load(str(folder), device="cpu")
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        graph = build_graph(tc)
        data = load_dataset(tc, None, "ba be bi bo bu ba be", "ba be da bo bu ba be", " bi", " da", "logit_diff", True)
        tokens, metric = data.tokens[0], data.metrics[0]
        a, b = tc.model.bridge.to_single_token(" bi"), tc.model.bridge.to_single_token(" da")

        def tl_metric(logits: torch.Tensor) -> torch.Tensor:
            return logits[0, -1, a] - logits[0, -1, b]

        ranking = tl_attribution_patch(
            tc.model.bridge, tokens[:1], tokens[1:], tl_metric, EdgeAttributionConfig(granularity="edge")
        )
        n_pos = int(tokens.shape[-1])
        print(f"GPT-2-small config, random weights: {graph.n_edges * n_pos} position edges ({n_pos} tokens)")

        def index(node: Any, writer: bool) -> int:
            if writer:
                return (
                    0
                    if node.kind == "embed"
                    else graph.writer_index(node.layer, node.head if node.kind == "attn_head_out" else None)
                )
            if node.kind == "logits":
                return len(graph.readers) - 1
            base = graph.reader_base(node.layer)
            if node.kind == "mlp_in":
                return base + graph.readers_per_layer - 1
            return base + {"q_input": 0, "k_input": graph.n_heads, "v_input": 2 * graph.n_heads}[node.kind] + node.head

        sizes = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
        top = ranking.top_edges(max(sizes))
        edges = [(index(w, True), index(r, False), w.position) for w, r, _ in top]
        kept = kept_masks(graph, [edges[:k] for k in sizes], n_pos)
        t_tl, tl = timed(lambda: faithfulness(tc.model.bridge, tokens[:1], tokens[1:], tl_metric, top[:1000]), repeat)
        t_ours, curve = timed(
            lambda: evaluate(tc, graph, [tokens], [metric], kept, "corrupted", None, 0, ProgressCounter()), repeat
        )
        ours_1000 = curve.pooled()[2][sizes.index(1000)]
        print(f"TransformerLens faithfulness, one size (1000 edges): {t_tl:.2f} s (recovered {tl.recovered:.5f})")
        print(
            f"ours, {len(sizes)} sizes in one call: {t_ours:.2f} s = {t_ours / t_tl:.2f} x TL's one size "
            f"(recovered at 1000: {ours_1000:.5f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--skip-smol", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, load average before {os.getloadavg()}"
    )
    if not args.skip_gpt2:
        gpt2(args.repeat)
    if not args.skip_smol:
        smol(args.repeat)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
