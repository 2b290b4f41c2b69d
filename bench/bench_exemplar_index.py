"""Benchmark: build_exemplar_index against the plain forward pass on the same corpus tokens, in one process.

On the default model and its builtin SAE (or --model / --layer for an MLP layer's neurons): the same contexts
(BOS + 64 corpus tokens each) run through (a) the model's forward pass stopped after the hook's block, the pass the
index itself runs, and (b) the whole model; then the index is built over them (rebuild, one call, no time cap). The
ratio index / forward is the share of the plain throughput the index keeps; peak RSS is reported before and after.

  python bench/bench_exemplar_index.py [--model smollm2-135m] [--corpus kjv-bible] [--tokens 16384] [--layer L]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import rows_for_time
from lens_mcp.tools.features import _corpus, _exemplars
from lens_mcp.tools.features._sae import get_sae
from lens_mcp.tools.features.build_exemplar_index import build_exemplar_index


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="kjv-bible")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--layer", type=int, default=None, help="index this MLP layer's neurons instead of the SAE")
    args = parser.parse_args()
    torch.manual_seed(0)
    limits = Limits(max_call_seconds=100_000, max_work_units=10**12)
    host = ModelHost(limits)
    host.load(args.model, device="cpu")
    with host.use() as model:
        tc = ToolContext(model, limits)
        if args.layer is None:
            unit = _exemplars.unit_group(tc, "sae", 0, get_sae(tc, None))
        else:
            unit = _exemplars.unit_group(tc, "neuron", args.layer)
        body = 64
        store = _corpus.token_store(tc.view.tokenizer, tc.view.d_vocab, _corpus.read_corpus(args.corpus))
        rows = store.rows(body, args.tokens // body)
        n_tokens = len(rows) * body
        per_pass = max(1, rows_for_time(tc, body + 1, unit.layer + 1))
        print(f"{args.model}, {unit.kind} at {unit.hook} ({unit.width} units), {len(rows)} contexts x {body} tokens")
        rss_before = peak_rss_mb()

        def forward(stop: bool) -> float:
            start = time.perf_counter()
            for first in range(0, len(rows), per_pass):
                tokens, _ = _exemplars.batch_tokens(tc, store, rows[first : first + per_pass], body)
                with torch.no_grad():
                    if stop:
                        _exemplars.hook_activation(tc, unit, tokens)
                    else:
                        tc.view(tokens)
            return n_tokens / (time.perf_counter() - start)

        forward(True)  # warm-up
        truncated = forward(True)
        whole = forward(False)
        result = build_exemplar_index(
            tc, layer=args.layer, corpus=args.corpus, tokens=args.tokens, context=body, rebuild=True
        )
        assert result.complete and result.tokens_indexed == n_tokens, result
        index_rate = float(result.tokens_per_second or 0.0)
        print(f"forward stopped after layer {unit.layer}: {truncated:,.0f} tokens/s")
        print(f"whole forward pass:             {whole:,.0f} tokens/s")
        print(f"build_exemplar_index:           {index_rate:,.0f} tokens/s")
        print(
            f"index / stopped forward = {index_rate / truncated:.2f}; index / whole forward = {index_rate / whole:.2f}"
        )
        print(f"peak RSS {rss_before:,.0f} MB before, {peak_rss_mb():,.0f} MB after ({per_pass} contexts per batch)")


if __name__ == "__main__":
    main()
