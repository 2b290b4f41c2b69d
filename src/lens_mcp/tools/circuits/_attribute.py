"""Edge scores: EAP and EAP-IG over a dataset of clean/corrupted pairs (denoising convention).

score(w -> r) = (w's clean output - w's corrupted output) . mean over steps of d(metric)/d(r's input), the
gradient taken on the corrupted prompt with its token embeddings moved toward the clean ones:
embed = corrupted + (k / ig_steps) (clean - corrupted), k = 0 .. ig_steps - 1 (the left Riemann sum of
Hanna et al.'s reference code, interpolating the inputs). k = 0 is the corrupted run itself, so ig_steps=1 is
EAP exactly: TransformerLens's `attribution_patch(..., EdgeAttributionConfig(granularity="edge"))`.
Scores are in the metric's units, averaged over pairs; component scores sum the position scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lens_mcp.tools.circuits._engine import Metric, check_additive, gradient_pass, gradient_slowdown, writer_states
from lens_mcp.tools.circuits._graph import Graph
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import observe_pass

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


def _row_metric(metrics: Sequence[Metric], owners: Sequence[int]) -> Metric:
    """One metric over stacked rows, row i measured by its own pair's metric metrics[owners[i]]."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([metrics[owner](logits[row : row + 1]) for row, owner in enumerate(owners)])

    return metric


def _by_length(pairs: Sequence[torch.Tensor]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for index, tokens in enumerate(pairs):
        groups.setdefault(int(tokens.shape[-1]), []).append(index)
    return list(groups.values())


CONTRACT_BLOCKS = 8
"""Reader blocks of the score contraction: each block multiplies only the writers its last reader reads."""


def _contract(graph: Graph, delta: torch.Tensor, grad: torch.Tensor, by_position: bool) -> torch.Tensor:
    """Sum over rows (and positions, for component edges) of delta[b, p, w] . grad[r, b, p]: one matrix product
    per block of readers (in graph order), against the writers before the block's last reader, so about half of
    the full [writers x readers] product is computed. delta: [rows, positions, writers, d_model]; grad: [readers,
    rows, positions, d_model]."""
    n_w, n_r = len(graph.writers), len(graph.readers)
    n_pos = int(delta.shape[1])
    if by_position:
        left = delta.permute(1, 2, 0, 3).reshape(n_pos, n_w, -1)  # [p, w, b d]
        right = grad.permute(2, 0, 1, 3).reshape(n_pos, n_r, -1)  # [p, r, b d]
        out = torch.zeros(n_pos, n_w, n_r, device=delta.device)
    else:
        left = delta.permute(2, 0, 1, 3).reshape(n_w, -1)  # [w, b p d]
        right = grad.reshape(n_r, -1)  # [r, b p d] (no copy)
        out = torch.zeros(n_w, n_r, device=delta.device)
    size = -(-n_r // CONTRACT_BLOCKS)
    for start in range(0, n_r, size):
        stop = min(n_r, start + size)
        limit = max(graph.prefix[start:stop])
        if by_position:
            out[:, :limit, start:stop] = torch.bmm(left[:, :limit], right[:, start:stop].transpose(1, 2))
        else:
            out[:limit, start:stop] = left[:limit] @ right[start:stop].T
    return out * graph.valid().to(out.device)


def attribute(
    tc: ToolContext,
    graph: Graph,
    pairs: Sequence[torch.Tensor],
    metrics: Sequence[Metric],
    ig_steps: int,
    by_position: bool,
    counter: ProgressCounter,
) -> Scores:
    """`pairs`: (2, n) token tensors (clean, corrupted); `metrics`: each pair's metric of [rows, vocab] logits.
    Pairs of one length run as rows of one batch: one clean forward, then forward + backward passes over the
    corrupted rows (pair x interpolation step), as many rows at a time as ROW_BYTES_BUDGET allows."""
    n_pos = int(pairs[0].shape[-1])
    shape = (n_pos, len(graph.writers), len(graph.readers)) if by_position else (len(graph.writers), len(graph.readers))
    total = torch.zeros(shape, device=pairs[0].device)
    clean_metrics = torch.zeros(len(pairs))
    corrupted_metrics = torch.zeros(len(pairs))
    passes = 0
    d_model = tc.view.d_model
    for group in _by_length(pairs):
        per_batch = max(1, ROW_BYTES_BUDGET // row_bytes(graph, int(pairs[group[0]].shape[-1]), d_model))
        pairs_per_chunk = max(1, per_batch // ig_steps)
        for first in range(0, len(group), pairs_per_chunk):
            chunk = group[first : first + pairs_per_chunk]
            clean_tokens = torch.cat([pairs[i][:1] for i in chunk])
            corrupted_tokens = torch.cat([pairs[i][1:2] for i in chunk])
            clean = writer_states(tc, graph, clean_tokens)
            passes += 1
            clean_metrics[chunk] = _row_metric(metrics, chunk)(clean.logits).cpu()
            if ig_steps > 1:
                clean_embed = embeddings(tc, clean_tokens).float()
                corrupted_embed = embeddings(tc, corrupted_tokens).float()
            rows = [(slot, step) for step in range(ig_steps) for slot in range(len(chunk))]  # step 0 first
            grad_sum: torch.Tensor | None = None
            delta: torch.Tensor | None = None
            for start in range(0, len(rows), per_batch):
                batch = rows[start : start + per_batch]
                slots = torch.tensor([slot for slot, _ in batch], device=clean_tokens.device)
                embed = None
                if ig_steps > 1:
                    alphas = torch.tensor([step / ig_steps for _, step in batch], device=slots.device)[:, None, None]
                    embed = corrupted_embed[slots] + alphas * (clean_embed[slots] - corrupted_embed[slots])
                metric = _row_metric(metrics, [chunk[slot] for slot, _ in batch])
                started = time.perf_counter()
                run = gradient_pass(tc, graph, corrupted_tokens[slots], metric, embed)
                observe_pass(tc, len(batch), n_pos, time.perf_counter() - started, True, gradient_slowdown(tc, graph))
                passes += 1
                if start == 0:  # the first len(chunk) rows are step 0: the corrupted runs themselves
                    delta = clean.writers.sub_(run.writers[: len(chunk)])  # the clean writers are not read again
                    corrupted_metrics[chunk] = run.metric[: len(chunk)].cpu()
                    check_additive(clean, run.final, delta)
                if ig_steps == 1:
                    grad_sum = run.grads  # rows are the chunk's pairs, in order
                else:
                    if grad_sum is None:
                        grad_sum = torch.zeros(
                            run.grads.shape[0], len(chunk), *run.grads.shape[2:], device=run.grads.device
                        )
                    grad_sum.index_add_(1, slots, run.grads)
                del run
                counter.advance(len(batch))
            assert grad_sum is not None and delta is not None
            total += _contract(graph, delta, grad_sum, by_position) / ig_steps
    return Scores(total / len(pairs), clean_metrics, corrupted_metrics, passes)
