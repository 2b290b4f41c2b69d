"""Edge scores: EAP and EAP-IG over a dataset of clean/corrupted pairs (denoising convention).

score(w -> r) = (w's clean output - w's corrupted output) . mean over steps of d(metric)/d(r's input), the
gradient taken on the corrupted prompt with its token embeddings moved toward the clean ones:
embed = corrupted + (k / ig_steps) (clean - corrupted), k = 0 .. ig_steps - 1 (the left Riemann sum of
Hanna et al.'s reference code, interpolating the inputs). k = 0 is the corrupted run itself, so ig_steps=1 is
EAP exactly: TransformerLens's `attribution_patch(..., EdgeAttributionConfig(granularity="edge"))`.
Scores are in the metric's units, averaged over pairs; component scores sum the position scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lens_mcp.tools.circuits._engine import Metric, check_additive, gradient_pass, writer_states
from lens_mcp.tools.circuits._graph import Graph
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext

ROW_BYTES_BUDGET = 768 * 2**20
"""Bytes of writer and gradient tensors one batched backward pass may hold."""


class _EmbedOnly(Exception):
    pass


def embeddings(tc: ToolContext, tokens: torch.Tensor) -> torch.Tensor:
    """The token embeddings (hook_embed) of `tokens`, without running the blocks."""
    found: list[torch.Tensor] = []

    def grab(act: torch.Tensor, hook: object = None) -> None:
        found.append(act.detach())
        raise _EmbedOnly

    try:
        with torch.no_grad(), tc.view.hooks(fwd_hooks=[("hook_embed", grab)]):
            tc.view(tokens)
    except _EmbedOnly:
        pass
    return found[0]


@dataclass
class Scores:
    values: torch.Tensor
    """[writers, readers] (component) or [positions, writers, readers], zero where no edge."""
    clean_metric: torch.Tensor
    """[pairs]"""
    corrupted_metric: torch.Tensor
    """[pairs]"""
    passes: int


def row_bytes(graph: Graph, n_tokens: int, d_model: int) -> int:
    return 4 * n_tokens * d_model * (len(graph.writers) + 2 * len(graph.readers))


def attribute(
    tc: ToolContext,
    graph: Graph,
    pairs: Sequence[torch.Tensor],
    metrics: Sequence[Metric],
    ig_steps: int,
    by_position: bool,
    counter: ProgressCounter,
) -> Scores:
    """`pairs`: (2, n) token tensors (clean, corrupted); `metrics`: each pair's metric of [rows, vocab] logits."""
    valid = graph.valid().float()
    n_pos = int(pairs[0].shape[-1])
    shape = (n_pos, *valid.shape) if by_position else tuple(valid.shape)
    total = torch.zeros(shape, device=pairs[0].device)
    clean_metrics = torch.zeros(len(pairs))
    corrupted_metrics = torch.zeros(len(pairs))
    passes = 0
    d_model = tc.view.d_model
    for index, (tokens, metric) in enumerate(zip(pairs, metrics, strict=True)):
        clean = writer_states(tc, graph, tokens[:1])
        clean_metrics[index] = metric(clean.logits)[0]
        corrupted = tokens[1:2]
        per_batch = max(1, ROW_BYTES_BUDGET // row_bytes(graph, int(tokens.shape[-1]), d_model))
        grad_sum: torch.Tensor | None = None
        corrupted_writers: torch.Tensor | None = None
        if ig_steps > 1:
            clean_embed, corrupted_embed = embeddings(tc, tokens[:1]), embeddings(tc, corrupted)
        for start in range(0, ig_steps, per_batch):
            steps = list(range(start, min(ig_steps, start + per_batch)))
            rows = corrupted.expand(len(steps), -1)
            embed = None
            if ig_steps > 1:
                alphas = torch.tensor([k / ig_steps for k in steps], device=rows.device)[:, None, None]
                embed = corrupted_embed.float() + alphas * (clean_embed.float() - corrupted_embed.float())
            run = gradient_pass(tc, graph, rows, metric, embed)
            passes += 1
            if start == 0:
                corrupted_writers = run.writers[:1]
                corrupted_metrics[index] = run.metric[0]
                check_additive(clean, run)
            part = run.grads.sum(dim=0)
            grad_sum = part if grad_sum is None else grad_sum + part
            counter.advance(len(steps))
        assert grad_sum is not None and corrupted_writers is not None
        delta = (clean.writers - corrupted_writers)[0]
        grad = grad_sum / ig_steps
        if by_position:
            total += torch.einsum("pwd,prd->pwr", delta, grad)
        else:
            total += torch.einsum("pwd,prd->wr", delta, grad)
    return Scores(total * valid / len(pairs), clean_metrics, corrupted_metrics, passes)
