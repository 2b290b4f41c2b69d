"""The computations behind edge attribution and circuit faithfulness, on TransformerLens's per-head hook points.

With `use_attn_result`, `use_split_qkv_input` and `use_hook_mlp_in` on, every writer's residual contribution
(`hook_embed`, `attn.hook_result` per head, `hook_mlp_out`) and every reader's own copy of the residual stream
(`attn.hook_{q,k,v}_input` per query or key/value head, `hook_mlp_in`, the last block's `hook_resid_post` for the
logits) is a hook point. On a pre-norm model a reader's input is a constant plus the sum of the writers before it,
so replacing some writers' contributions in one reader's copy is exact. `writer_states` keeps the writers as a
[rows, positions, writers, d_model] tensor; `gradient_pass` adds a zero leaf at every reader and differentiates
the metric; `edge_run` rebuilds each reader's input per row from a mask of replaced edges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lens_mcp.errors import LensError
from lens_mcp.tools.circuits._fused import FusedLayer, fused_hooks, fused_layers, reader_gradients
from lens_mcp.tools.circuits._graph import Graph
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import measured_slowdown
from lens_mcp.tools.core.forward import final_residual, readout

log = logging.getLogger(__name__)

Metric = Callable[[torch.Tensor], torch.Tensor]
"""Per-row metric of the last position's logits [rows, vocab] -> [rows]."""

_ADDITIVE_RTOL = 1e-3


def build_graph(tc: ToolContext) -> Graph:
    """The model's graph, or a LensError where the residual stream is not a sum of the writers."""
    view = tc.view
    detail = view.residual_write_obstruction()
    if detail is not None:
        raise LensError(
            f"edge attribution and circuit faithfulness are not exact on this model ({detail}): a head's or MLP's "
            "output is rescaled before it joins the residual stream, so the residual stream is not a sum of the "
            "writers. Use attribution_patch, patch_sweep or path_patch here."
        )
    return Graph(view.n_layers, view.n_heads, view.n_kv_heads, view.capabilities.parallel_attn_mlp)


def _writer_hooks(graph: Graph) -> list[tuple[str, int, bool]]:
    """(hook name, first writer index, per-head) of every writer hook point, in forward order."""
    hooks = [("hook_embed", 0, False)]
    for layer in range(graph.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_result", graph.writer_index(layer, 0), True))
        hooks.append((f"blocks.{layer}.hook_mlp_out", graph.writer_index(layer, None), False))
    return hooks


def _reader_hooks(graph: Graph) -> list[tuple[str, int, int]]:
    """(hook name, first reader index, readers at that hook) of every reader hook point."""
    hooks = []
    for layer in range(graph.n_layers):
        base = graph.reader_base(layer)
        hooks.append((f"blocks.{layer}.attn.hook_q_input", base, graph.n_heads))
        hooks.append((f"blocks.{layer}.attn.hook_k_input", base + graph.n_heads, graph.n_kv))
        hooks.append((f"blocks.{layer}.attn.hook_v_input", base + graph.n_heads + graph.n_kv, graph.n_kv))
        hooks.append((f"blocks.{layer}.hook_mlp_in", base + graph.readers_per_layer - 1, 1))
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", len(graph.readers) - 1, 1))
    return hooks


def _capture_writers(graph: Graph, store: torch.Tensor) -> list[tuple[str, Callable[..., Any]]]:
    """Forward hooks copying every writer's output into store[rows, positions, writers, d_model]."""

    def make(first: int, per_head: bool) -> Callable[..., Any]:
        def hook(act: torch.Tensor, hook: Any = None) -> None:
            if per_head:
                store[:, :, first : first + act.shape[2]] = act.detach().to(store.dtype)
            else:
                store[:, :, first] = act.detach().to(store.dtype)

        return hook

    return [(name, make(first, per_head)) for name, first, per_head in _writer_hooks(graph)]


def _new_store(graph: Graph, tokens: torch.Tensor, d_model: int) -> torch.Tensor:
    return torch.zeros(tokens.shape[0], tokens.shape[1], len(graph.writers), d_model, device=tokens.device)


@dataclass
class WriterStates:
    writers: torch.Tensor
    """[rows, positions, writers, d_model] (float32)"""
    logits: torch.Tensor
    """[rows, vocab]: the last position's logits"""
    final: torch.Tensor
    """[rows, positions, d_model]: the final residual stream (the logits reader's input)"""


def writer_states(tc: ToolContext, graph: Graph, tokens: torch.Tensor) -> WriterStates:
    """Every writer's output, the logits and the final residual stream of one forward pass."""
    store = _new_store(graph, tokens, tc.view.d_model)
    with torch.no_grad(), tc.view.per_head_hooks(inputs=False):
        final = final_residual(tc, tokens, _capture_writers(graph, store))
        logits = readout(tc, final[:, -1]).float()  # the last position only: no unembedding of every position
    return WriterStates(store, logits, final.detach().float())


@dataclass
class GradientPass:
    writers: torch.Tensor
    """[rows, positions, writers, d_model]: the writers of the run (at its embeddings as given)."""
    grads: torch.Tensor
    """[readers, rows, positions, d_model]: d(metric)/d(each reader's input) (reader-major, so a contraction over
    rows, positions and d_model reads it as one [readers, rows * positions * d_model] matrix)."""
    metric: torch.Tensor
    """[rows]"""
    final: torch.Tensor
    """[rows, positions, d_model]: the final residual stream"""


def gradient_pass(
    tc: ToolContext, graph: Graph, tokens: torch.Tensor, metric: Metric, embed: torch.Tensor | None = None
) -> GradientPass:
    """One forward and backward: every reader's input gradient. `embed` replaces the token embeddings
    (integrated gradients' interpolated inputs). Runs the fused pass where it was checked equal to the per-head
    split pass on this model, else the split pass."""
    layers = _checked_fused_layers(tc, graph)
    if layers is not None:
        return _gradient_pass(tc, graph, tokens, metric, embed, layers)
    return _gradient_pass(tc, graph, tokens, metric, embed, None)


FUSED_CHECK = "edge attribution's fused gradient pass equals the per-head split pass"
_FUSED_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8}


def _checked_fused_layers(tc: ToolContext, graph: Graph) -> list[FusedLayer] | None:
    """The fused pass's weights where it applies to this model and gave the split pass's gradients, writers and
    metric on a probe batch (checked once per model), else None."""
    layers = fused_layers(tc, graph)
    if layers is None:
        return None
    verdict = tc.model.engine_checks.get(FUSED_CHECK)
    if verdict is None:
        generator = torch.Generator().manual_seed(0)
        n_tokens = max(2, min(8, tc.view.n_ctx))
        tokens = torch.randint(0, tc.view.d_vocab, (2, n_tokens), generator=generator).to(tc.view.device)

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return logits[:, 0].float() - logits[:, 1].float()

        try:
            fused = _gradient_pass(tc, graph, tokens, metric, None, layers)
        except Exception as exc:  # any failure of the faster path leaves the reference path in place
            log.warning("the fused gradient pass failed on this model (%s): using the per-head split pass", exc)
            verdict = False
        else:
            split = _gradient_pass(tc, graph, tokens, metric, None, None)
            rtol = _FUSED_RTOL.get(tc.view.dtype, 2e-2)
            verdict = all(
                float((a - b).norm()) <= rtol * max(float(b.norm()), 1e-6)
                for a, b in ((fused.grads, split.grads), (fused.writers, split.writers), (fused.metric, split.metric))
            )
            if not verdict:
                log.warning("the fused gradient pass differs from the per-head split pass here: using the split pass")
        tc.model.engine_checks[FUSED_CHECK] = verdict
    return layers if verdict else None


def _gradient_pass(
    tc: ToolContext,
    graph: Graph,
    tokens: torch.Tensor,
    metric: Metric,
    embed: torch.Tensor | None,
    layers: list[FusedLayer] | None,
) -> GradientPass:
    d_model = tc.view.d_model
    rows, n_pos = int(tokens.shape[0]), int(tokens.shape[1])
    store = _new_store(graph, tokens, d_model)
    grads = torch.empty(len(graph.readers), rows, n_pos, d_model, device=tokens.device)
    final: list[torch.Tensor] = []
    if layers is None:
        hooks = _capture_writers(graph, store)
        reader_names = [name for name, _, _ in _reader_hooks(graph)]
        leaves: list[tuple[int, torch.Tensor]] = []
        fired: list[str] = []

        def make_leaf(name: str, first: int) -> Callable[..., torch.Tensor]:
            def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
                fired.append(name)
                leaf = torch.zeros_like(act, requires_grad=True)
                leaves.append((first, leaf))
                return act + leaf

            return hook

        hooks += [(name, make_leaf(name, first)) for name, first, _ in _reader_hooks(graph)]
    else:
        fused = fused_hooks(graph, layers, store)
        hooks = [(name, hook) for name, hook in _capture_writers(graph, store) if not name.endswith("attn.hook_result")]
        hooks += fused.hooks
    if embed is not None:
        replacement = embed

        def set_embed(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            store[:, :, 0] = replacement.to(store.dtype)
            return replacement.to(act.dtype)

        hooks[0] = ("hook_embed", set_embed)

    def keep_final(act: torch.Tensor, hook: Any = None) -> None:
        final.append(act.detach().float())

    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", keep_final))
    with torch.enable_grad(), tc.view.per_head_hooks(split=layers is None):
        resid = final_residual(tc, tokens, hooks)
        values = metric(readout(tc, resid[:, -1]))  # the last position only: no unembedding of every position
        if layers is None:
            found = torch.autograd.grad(values.sum(), [leaf for _, leaf in leaves], allow_unused=True)
        else:
            names = list(fused.leaves)
            grads_at = torch.autograd.grad(values.sum(), [fused.leaves[n] for n in names], allow_unused=True)
    if layers is None:
        missing = [name for name in reader_names if name not in fired]
        if missing:
            raise LensError(
                f"edge attribution is not supported on this model: the reader hook point {missing[0]} does not "
                "fire here (TransformerLens does not expose that input separately on this architecture), so the "
                "graph cannot be read. Use attribution_patch or path_patch here."
            )
        with torch.no_grad():
            for (first, leaf), grad in zip(leaves, found, strict=True):
                count = int(leaf.shape[2]) if leaf.dim() == 4 else 1
                if grad is None:
                    grads[first : first + count] = 0.0
                elif grad.dim() == 4:
                    grads[first : first + count] = grad.permute(2, 0, 1, 3)
                else:
                    grads[first] = grad
                del leaf
    else:
        missing = [
            f"blocks.{layer}.hook_mlp_in" for layer in range(graph.n_layers) if f"{layer}.mlp" not in fused.leaves
        ]
        if missing:
            raise LensError(
                f"edge attribution is not supported on this model: the reader hook point {missing[0]} does not "
                "fire here, so the graph cannot be read. Use attribution_patch or path_patch here."
            )
        reader_gradients(graph, layers, fused, dict(zip(names, grads_at, strict=True)), grads)
    return GradientPass(store, grads, values.detach().float(), final[-1])


def check_additive(clean: WriterStates, corrupted_final: torch.Tensor, delta: torch.Tensor) -> None:
    """Refuse a model whose final residual stream does not move by the sum of its writers' moves (a scale or
    norm this graph does not know of). delta[rows, positions, writers, d_model] = clean writers - corrupted
    writers, row i of `clean` paired with row i of `corrupted_final` [rows, positions, d_model]."""
    rows = int(clean.final.shape[0])
    moved = clean.final - corrupted_final[:rows]
    summed = delta.sum(dim=2)
    scale = float(moved.norm()) + 1e-6
    if float((moved - summed).norm()) > _ADDITIVE_RTOL * max(scale, float(summed.norm())):
        raise LensError(
            "edge attribution is not exact on this model: its final residual stream is not the sum of the embedding, "
            "head and MLP outputs (a scale or norm sits between them). Use attribution_patch or path_patch here."
        )


def _edit_hooks(
    graph: Graph, delta: torch.Tensor, replacement: torch.Tensor, sums: dict[int, torch.Tensor]
) -> list[tuple[str, Callable[..., Any]]]:
    """Writer hooks for edge_run: delta[rows, writers, positions, d_model] (writer-major: one writer's delta in one
    row is one contiguous block) = live output - replacement, and sums[n] = the sum of the first n writers'
    deltas [rows, positions, d_model], for every n a reader's prefix can end at."""

    def make(first: int, per_head: bool) -> Callable[..., Any]:
        def hook(act: torch.Tensor, hook: Any = None) -> None:
            count = act.shape[2] if per_head else 1
            live = act.detach().to(delta.dtype)
            block = live if per_head else live[:, :, None]
            delta[:, first : first + count] = (block - replacement[:, :, first : first + count]).transpose(1, 2)
            end = first + count
            previous = sums.get(first)
            part = delta[:, first:end].sum(dim=1)
            sums[end] = part if previous is None else previous + part

        return hook

    return [(name, make(first, per_head)) for name, first, per_head in _writer_hooks(graph)]


GATHER_CHUNK = 2048
"""Sparse edge corrections gathered at a time in edge_run (each one a positions x d_model block)."""
DENSE_RATIO = 64
"""edge_run multiplies a reader block's corrections as a dense matrix once more than 1 in DENSE_RATIO of its
(row, writer, reader) entries is non-zero (measured on a 2-core CPU: one gathered and added row of positions x
d_model costs about as much as 90 rows of the dense product)."""


def _gathered(
    correction: torch.Tensor,
    found: tuple[torch.Tensor, ...],
    sources: torch.Tensor,
    rows: int,
    count: int,
    n_pos: int,
    n_writers: int,
    by_position: bool,
) -> torch.Tensor:
    """Sum of the signed writer deltas named by the non-zero corrections, as [rows, positions, count, d_model].
    sources: the deltas as rows of [rows * writers (* positions), ...]."""
    d_model = int(sources.shape[1]) if by_position else int(sources.shape[1]) // n_pos
    # by_position: change[b, p, r] at row (b * n_pos + p) * count + r; else change[b, r] (p, d) at b * count + r
    flat = torch.zeros(rows * count * (n_pos if by_position else 1), int(sources.shape[1]), device=sources.device)
    for start in range(0, int(found[0].numel()), GATHER_CHUNK):
        index = tuple(axis[start : start + GATHER_CHUNK] for axis in found)
        signs = correction[index].to(sources.dtype)
        if by_position:
            b, p, w, r = index
            source = sources.index_select(0, (b * n_writers + w) * n_pos + p)
            flat.index_add_(0, (b * n_pos + p) * count + r, source * signs[:, None])
        else:
            b, w, r = index
            source = sources.index_select(0, b * n_writers + w)
            flat.index_add_(0, b * count + r, source * signs[:, None])
    if by_position:
        return flat.view(rows, n_pos, count, d_model)
    return flat.view(rows, count, n_pos, d_model).permute(0, 2, 1, 3)


def edge_run(
    tc: ToolContext,
    graph: Graph,
    tokens: torch.Tensor,
    replaced: torch.Tensor,
    replacement: torch.Tensor,
    metric: Metric,
) -> torch.Tensor:
    """Metric per row of a forward pass in which, in each row b, every edge (w, r) with replaced[b, w, r] (or
    replaced[b, p, w, r] for position edges, at position p) carries replacement[b, p, w] in place of writer w's
    live output. replacement broadcasts over rows (e.g. [1, positions, writers, d_model]).

    A reader's input changes by the sum of the replaced writers' deltas (live - replacement). Per row and reader
    block that is either the sparse sum over the replaced writers, or, where most writers are replaced (everything
    outside a small circuit), the running sum of all its writers' deltas minus the sparse sum over the kept ones:
    only min(replaced, kept) writer deltas enter per row, gathered one by one where they are few and multiplied
    as one batched matrix product where they are many."""
    rows, n_pos, n_writers, d_model = int(tokens.shape[0]), int(tokens.shape[1]), len(graph.writers), tc.view.d_model
    delta = torch.zeros(rows, n_writers, n_pos, d_model, device=tokens.device)
    sums: dict[int, torch.Tensor] = {0: torch.zeros_like(delta[:, 0])}
    by_position = replaced.dim() == 4
    sources = delta.view(rows * n_writers * n_pos, d_model) if by_position else delta.view(rows * n_writers, -1)
    hooks = _edit_hooks(graph, delta, replacement, sums)
    prefixes = graph.prefix

    def make(first: int, count: int) -> Callable[..., torch.Tensor]:
        limit = prefixes[first]
        cols = slice(first, first + count)

        def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            part = replaced[..., :limit, cols]  # [rows, (positions,) writers, count]
            n_replaced = part.flatten(1).sum(dim=1)
            if int(n_replaced.sum()) == 0:
                return act
            dense = 2 * n_replaced > part[0].numel()  # per row: start from the running sum of every writer
            correction = part.to(torch.int8) - dense.view(-1, *([1] * (part.dim() - 1))).to(torch.int8)
            found = correction.nonzero(as_tuple=True)
            if not by_position and int(found[0].numel()) * DENSE_RATIO > correction.numel():
                # many corrections: one batched product [rows, count, writers] x [rows, writers, positions * d_model]
                coefficients = correction.to(delta.dtype).transpose(1, 2)
                product = torch.bmm(coefficients, delta[:, :limit].reshape(rows, limit, -1))
                change = product.view(rows, count, n_pos, d_model).permute(0, 2, 1, 3)
            else:
                change = _gathered(correction, found, sources, rows, count, n_pos, n_writers, by_position)
            if bool(dense.any()):
                change = change + dense.to(delta.dtype)[:, None, None, None] * sums[limit][:, :, None, :]
            if act.dim() == 3:
                change = change[:, :, 0]
            return act - change.to(act.dtype)

        return hook

    hooks += [(name, make(first, count)) for name, first, count in _reader_hooks(graph)]
    with torch.no_grad(), tc.view.per_head_hooks(), tc.view.hooks(fwd_hooks=hooks):
        logits = tc.view(tokens)[:, -1]
    return metric(logits).float()


GRADIENT_PASS = "edge attribution's gradient pass"
EDITED_PASS = "a pass with edges replaced"


def gradient_slowdown(tc: ToolContext, graph: Graph) -> float:
    """How many times slower a `gradient_pass` runs than the three plain forward passes it is counted as."""

    def run(tokens: torch.Tensor) -> None:
        gradient_pass(tc, graph, tokens, lambda logits: logits[:, 0].float())

    return measured_slowdown(tc, GRADIENT_PASS, run, passes=3)


def edited_slowdown(tc: ToolContext, graph: Graph) -> float:
    """How many times slower an `edge_run` with half the edges replaced (or a `writer_states` pass, which holds
    the same per-head tensors) runs than a plain forward pass."""

    def run(tokens: torch.Tensor) -> None:
        generator = torch.Generator().manual_seed(0)
        half = torch.rand(int(tokens.shape[0]), len(graph.writers), len(graph.readers), generator=generator) < 0.5
        replaced = (half & graph.valid().cpu()).to(tokens.device)
        replacement = torch.zeros(1, int(tokens.shape[1]), len(graph.writers), tc.view.d_model, device=tokens.device)
        with torch.no_grad():
            edge_run(tc, graph, tokens, replaced, replacement, lambda logits: logits[:, 0].float())

    return measured_slowdown(tc, EDITED_PASS, run, passes=1)


def blended_slowdown(parts: list[tuple[float, float]]) -> float:
    """One slowdown for passes of several kinds: (plain-pass equivalents, slowdown) per kind, weighted."""
    total = sum(count for count, _ in parts)
    return sum(count * factor for count, factor in parts) / total if total > 0 else 1.0
