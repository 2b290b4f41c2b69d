"""Benchmark: the gradient tools (attribution_patch at every component, edge_attribution eap and eap-ig) against
their floor on the plain Hugging Face model, measured in the same process, interleaved, best of N.

The floor of a gradient call is what any implementation must run on the same prompts (the plain
`transformers` model, a separate copy of the same weights with `requires_grad` off on every parameter, so the
backward pass computes activation gradients only):
- attribution_patch and edge_attribution eap: one forward pass of the clean prompts (no grad) and one forward
  and backward pass of the corrupted prompts, the gradient taken at a leaf on the input embeddings, of the
  metric (logit(answer) - logit(wrong answer) at the last position, summed over the pairs); each pass batched
  over the pairs;
- edge_attribution eap-ig with S steps: one clean forward and S forward and backward passes (one batch of
  pairs x S rows, the embeddings interpolated from corrupted toward clean as the tool does): the eap floor with
  S backward passes instead of one.
The tools run with verify_top=0 (the exact patching that checks the top cells is not a gradient pass). The
dataset: a 15-token IOI pair (the second mention of the subject differs) and 8 such pairs (other names, one
length), on SmolLM2-135M (the default model, CPU, fp32).

    .venv/bin/python bench/bench_gradient_floor.py [--repeat 3] [--components ...] [--skip-edges] [--skip-pairs]

Each line prints the tool's best time, the floor's best time (the two interleaved, so both see the same load)
and the ratio, in CPU seconds of the process and in wall seconds. On a shared machine the CPU time with one
torch thread (the default, --threads 1) is the steadier measure: it counts the work done, not the time spent
waiting for a core. Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.causal.attribution_patch import attribution_patch
from lens_mcp.tools.circuits.edge_attribution import edge_attribution
from lens_mcp.tools.core.context import ToolContext

COMPONENTS = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos"]
TEMPLATE = "When{a} and{b} went to the store,{s} gave a drink to"
NAMES = [" Mary", " John", " Tom", " James", " Anna", " Sarah", " David", " Paul", " Mark", " Kate", " Peter", " Emma"]


def ioi_pairs(tc: ToolContext, n: int) -> list[dict[str, str]]:
    """n IOI pairs of one length: the clean prompt's subject repeated (answer: the other name), the corrupted
    prompt repeats the other name instead."""
    names = [name for name in NAMES if len(tc.view.to_tokens(name, prepend_bos=False)[0]) == 1]
    pairs = []
    for i in range(n):
        a, b = names[(2 * i) % len(names)], names[(2 * i + 1) % len(names)]
        pairs.append(
            {
                "clean_prompt": TEMPLATE.format(a=a, b=b, s=b),
                "corrupted_prompt": TEMPLATE.format(a=a, b=b, s=a),
                "answer": a,
                "wrong_answer": b,
            }
        )
    return pairs


class Floor:
    """Two forward passes and one backward pass (or S, for integrated gradients) on the plain HF model."""

    def __init__(self, tc: ToolContext, pairs: list[dict[str, str]]) -> None:
        from transformers import AutoModelForCausalLM

        from lens_mcp.loading.gguf_cache import cache_dir_for
        from lens_mcp.loading.specs import smollm2_gguf_path

        self.model = AutoModelForCausalLM.from_pretrained(cache_dir_for(smollm2_gguf_path()), dtype=torch.float32)
        self.model.eval()
        self.model.requires_grad_(False)
        view = tc.view
        self.clean = torch.cat([view.to_tokens(p["clean_prompt"]) for p in pairs])
        self.corrupted = torch.cat([view.to_tokens(p["corrupted_prompt"]) for p in pairs])
        self.answer = torch.tensor([int(view.to_tokens(p["answer"], prepend_bos=False)[0, 0]) for p in pairs])
        self.wrong = torch.tensor([int(view.to_tokens(p["wrong_answer"], prepend_bos=False)[0, 0]) for p in pairs])
        self.embed = self.model.get_input_embeddings()

    def _metric(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        index = torch.arange(last.shape[0])
        return (last[index, self.answer[rows]] - last[index, self.wrong[rows]]).sum()

    def run(self, steps: int = 1) -> float:
        """The floor once; returns the metric (a check that it computed the same thing as the tool)."""
        n = self.clean.shape[0]
        with torch.no_grad():
            self.model(self.clean)
            clean_embed = self.embed(self.clean)
            corrupted_embed = self.embed(self.corrupted)
        rows = torch.arange(n).repeat(steps)
        alphas = torch.arange(steps).repeat_interleave(n).float()[:, None, None] / steps
        embeds = (corrupted_embed[rows] + alphas * (clean_embed[rows] - corrupted_embed[rows])).requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(inputs_embeds=embeds).logits
            value = self._metric(logits, rows)
            torch.autograd.grad(value, [embeds])
        return float(value.detach())


Timing = tuple[float, float]
"""(wall seconds, CPU seconds of this process)."""


def timed(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def interleaved(repeat: int, tool: Callable[[], Any], floor: Callable[[], Any]) -> tuple[Timing, Timing, Any]:
    """Best of `repeat` runs of each (wall and CPU time each), alternating, so both see the same load."""
    best_tool: Timing = (float("inf"), float("inf"))
    best_floor: Timing = (float("inf"), float("inf"))
    out = None
    for _ in range(repeat):
        spent, _ = timed(floor)
        best_floor = (min(best_floor[0], spent[0]), min(best_floor[1], spent[1]))
        spent, out = timed(tool)
        best_tool = (min(best_tool[0], spent[0]), min(best_tool[1], spent[1]))
    return best_tool, best_floor, out


def report(tool: str, what: str, tool_s: Timing, floor_s: Timing) -> None:
    print(
        f"| {tool} | {what} | {tool_s[1]:.3f} | {floor_s[1]:.3f} | {tool_s[1] / floor_s[1]:.2f}x "
        f"| {tool_s[0]:.3f} | {floor_s[0]:.3f} | {tool_s[0] / floor_s[0]:.2f}x |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--components", nargs="*", default=COMPONENTS, choices=COMPONENTS)
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--skip-edges", action="store_true")
    parser.add_argument("--skip-pairs", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: CPU time is the work done, whatever the load)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC')}")
    host = ModelHost(Limits.from_env(max_response_chars=1_000_000, max_call_seconds=3000))
    host.load("smollm2-135m", device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        dataset = ioi_pairs(tc, 8)
        one = dataset[:1]
        n_tokens = int(tc.view.to_tokens(one[0]["clean_prompt"]).shape[-1])
        print(f"pair: {one[0]}, {n_tokens} tokens; dataset: {len(dataset)} pairs")
        floors = {1: Floor(tc, one), len(dataset): Floor(tc, dataset)}
        attribution_patch(tc, **cast("dict[str, Any]", one[0]), component="heads", layers=[0], verify_top=0)  # warm-up
        print(
            "\n| tool | call | tool CPU s | floor CPU s | ratio | tool wall s | floor wall s | wall ratio |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |"
        )
        sets = [(1, one)] + ([] if args.skip_pairs else [(len(dataset), dataset)])
        for n_pairs, chosen in sets:
            floor = floors[n_pairs]
            kwargs: dict[str, Any] = dict(chosen[0]) if n_pairs == 1 else {"pairs": chosen}
            label = "1 pair" if n_pairs == 1 else f"pairs={n_pairs}"
            for component in args.components:
                tool_s, floor_s, result = interleaved(
                    args.repeat,
                    lambda kwargs=kwargs, component=component: attribution_patch(
                        tc, **kwargs, component=component, verify_top=0
                    ),
                    floor.run,
                )
                floor_metric = floor.run() / n_pairs  # the same corrupted metric, computed independently
                assert abs(float(result.corrupted_metric) - floor_metric) < 1e-2 * (1 + abs(floor_metric)), floor_metric
                report("attribution_patch", f"{component}, {label}", tool_s, floor_s)
            if args.skip_edges:
                continue
            methods: list[tuple[Literal["eap", "eap-ig"], int]] = [("eap", 1), ("eap-ig", args.ig_steps)]
            for method, steps in methods:
                tool_s, floor_s, _ = interleaved(
                    args.repeat,
                    lambda kwargs=kwargs, method=method, steps=steps: edge_attribution(
                        tc, **kwargs, method=method, ig_steps=steps, verify_top=0, top_k=5
                    ),
                    lambda floor=floor, steps=steps: floor.run(steps),
                )
                what = f"{method}{f' ({steps} steps)' if steps > 1 else ''}, {label}"
                report("edge_attribution", what, tool_s, floor_s)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
