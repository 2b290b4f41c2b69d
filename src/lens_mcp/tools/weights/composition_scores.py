"""composition_scores: weight-based Q/K/V composition between attention heads (Elhage et al., 2021).

The score of a sender head A and a later receiver head B is ||W_OV(A) W(B)||_F / (||W_OV(A)||_F ||W(B)||_F),
with W(B) = W_QK(B) (q), W_QK(B)^T (k) or W_OV(B) (v): TransformerLens's `utilities.composition_scores`, on the
factored circuits `bridge.OV_for_attn_layers()` / `QK_for_attn_layers()` (grouped-query key/value heads
expanded to their query heads; attention layers only on hybrids), as `bridge.all_composition_scores` computes
them. Done per receiver layer against earlier layers only (the pairs all_composition_scores keeps), from
factors collapsed once, so the work is half of all_composition_scores's and progress arrives per layer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Annotated, Literal

import torch
from pydantic import Field
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.utilities.matrix import composition_scores as tl_composition_scores

from lens_mcp.errors import LensError
from lens_mcp.schemas.weights import CompositionPair, CompositionScores
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.validation import check_top_k, resolve_layers

BASELINE_SAMPLES = 64
MAX_MACS = 2_000_000_000_000
"""Multiply-adds one call may do (SmolLM2-135M, every pair: 83 G)."""
PRODUCT_FLOATS = 32_000_000
"""Largest intermediate product (floats) held at once: sender layers are chunked to stay under it."""
BASELINE_SEED = 0


@contextmanager
def one_thread() -> Iterator[None]:
    """Batched small-matrix SVDs on CPU: torch parallelizes over the batch, and on busy cores that ran 100x
    slower than one thread (84 s vs 0.6 s for SmolLM2's 270 heads). The model is held exclusively meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def circuits(tc: ToolContext, kind: str) -> tuple[list[int], FactoredMatrix, FactoredMatrix]:
    """(attention layer numbers, senders' OV circuits, receivers' circuit for `kind`), each (layers, heads, d, d)."""
    if tc.view.capabilities.encoder_decoder:
        raise LensError("composition scores are not defined across an encoder-decoder model's two residual streams.")
    try:
        indices, ov, qk = tc.view.attention_circuits()
        if kind == "v":
            return indices, ov, ov
    except (AttributeError, ValueError) as exc:
        raise LensError(f"this model's attention weights cannot be factored into OV/QK circuits ({exc}).") from None
    return list(indices), ov, (qk if kind == "q" else qk.T)


def random_baseline(tc: ToolContext) -> tuple[float, float]:
    """Mean and standard deviation of the score of independent Gaussian circuits of this model's shapes
    (d_model x d_head factors), by TransformerLens's composition_scores, with a fixed seed."""
    return _random_baseline(tc.view.d_model, tc.view.d_head, BASELINE_SAMPLES)


@lru_cache(maxsize=8)
def _random_baseline(d_model: int, d_head: int, samples: int) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(BASELINE_SEED)

    def factored() -> FactoredMatrix:
        a = torch.randn(samples, d_model, d_head, generator=generator)
        b = torch.randn(samples, d_head, d_model, generator=generator)
        return FactoredMatrix(a, b)

    with torch.no_grad(), one_thread():
        scores = tl_composition_scores(factored(), factored(), broadcast_dims=False)
    return float(scores.mean()), float(scores.std())


def all_scores(tc: ToolContext, kind: str, receiver_layers: list[int] | None = None) -> dict[int, torch.Tensor]:
    """{receiver layer: scores (earlier attention layers, sender heads, receiver heads)} for each receiver
    attention layer asked for that has earlier attention layers; sender rows follow the attention-layer order."""
    indices, left, right = circuits(tc, kind)
    position = {layer: i for i, layer in enumerate(indices)}
    wanted = indices if receiver_layers is None else receiver_layers
    for layer in wanted:
        if layer not in position:
            raise LensError(f"layers: layer {layer} has no attention heads on this model; pass attention layers.")
    targets = [layer for layer in wanted if position[layer] > 0]
    if not targets:
        raise LensError("layers: the first attention layer has no earlier heads to compose with; pass later layers.")
    n_heads, mdim, d_model = int(left.A.shape[1]), int(left.mdim), int(left.A.shape[-2])
    macs = sum(position[layer] for layer in targets) * n_heads * mdim * d_model * n_heads * mdim
    if macs > MAX_MACS:
        raise LensError(
            f"layers: scoring receivers {targets[:5]}{'...' if len(targets) > 5 else ''} against every earlier head "
            f"is about {macs / 1e9:,.0f} G multiply-adds, over this tool's cap of {MAX_MACS / 1e9:,.0f} G; pass "
            "fewer receiver layers, e.g. layers=[L] for the heads of layer L."
        )
    chunk = max(1, PRODUCT_FLOATS // (n_heads * mdim * n_heads * mdim))
    with torch.no_grad():
        with one_thread():
            new_left = left.collapse_l()  # (layers, heads, mdim, d_model)
            new_right = right.collapse_r()  # (layers, heads, d_model, mdim)
        left_norms = new_left.norm(dim=(-2, -1))
        right_norms = new_right.norm(dim=(-2, -1))
        scores: dict[int, torch.Tensor] = {}
        for done, layer in enumerate(targets):
            r = position[layer]
            # One GEMM per receiver layer: (r * H * mdim, d_model) @ (d_model, H_r * mdim), then the Frobenius
            # norm of each (mdim, mdim) block, i.e. ||new_left[A] @ new_right[B]||_F for every pair (A, B).
            receivers = new_right[r]  # (H_r, d_model, mdim)
            n_heads_r, d_model, mdim_r = receivers.shape
            flat_receivers = receivers.permute(1, 0, 2).reshape(d_model, -1)
            parts = []
            for first in range(0, r, chunk):  # sender layers in chunks: the product stays under PRODUCT_FLOATS
                senders = new_left[first : min(r, first + chunk)]
                n_layers_s, n_heads_s, mdim_l, _ = senders.shape
                product = senders.reshape(-1, d_model) @ flat_receivers
                blocks = product.reshape(n_layers_s, n_heads_s, mdim_l, n_heads_r, mdim_r)
                parts.append(blocks.square().sum(dim=(2, 4)).sqrt())  # (chunk, H, H_r)
            scores[layer] = torch.cat(parts) / left_norms[:r, :, None] / right_norms[r][None, None, :]
            tc.progress(done + 1, len(targets), f"receiver layer {layer}")
    return scores


def composition_scores(
    tc: ToolContext,
    kind: Annotated[
        Literal["q", "k", "v"],
        Field(description="Which input of the receiver head reads the sender's output: q (query), k (key), v (value)"),
    ] = "k",
    top_k: Annotated[int, Field(description="How many head pairs to list, highest score first")] = 20,
    layers: Annotated[
        list[int] | None,
        Field(description="Receiver layers (the later head of each pair; senders: every earlier layer). Default: all"),
    ] = None,
) -> CompositionScores:
    """Weight-based composition between attention heads (Elhage et al., 2021): how strongly a sender head's
    OV output lands in the subspace a later receiver head reads through its queries (q), keys (k) or values
    (v). score = ||W_OV(A) W(B)||_F / (||W_OV(A)||_F ||W(B)||_F), from 0 to 1, computed as TransformerLens's
    all_composition_scores does (grouped-query key/value heads expanded; weights as the model holds them in
    compatibility mode, norm weights folded in). Returns the top_k pairs, each with `ratio` = score over the
    mean score of random Gaussian matrices of the same shapes (baseline_mean, baseline_std): a ratio well
    above 1 is composition the weights make possible, not proof it is used. K-composition of a previous-token
    head into an induction head is the classic case. Weights only, no prompt: check the edge causally with
    path patching or ablation."""
    if kind not in ("q", "k", "v"):
        raise LensError(f"kind={kind!r} is not one of q, k, v.")
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    receiver_layers = None if layers is None else resolve_layers(layers, tc.view.n_layers)
    scores = all_scores(tc, kind, receiver_layers)
    indices, _, _ = circuits(tc, kind)
    mean, std = random_baseline(tc)

    rows = []  # (score, sender layer, sender head, receiver layer, receiver head)
    for layer, grid in scores.items():
        flat = grid.flatten()
        best = flat.argsort(descending=True)[: min(top_k, flat.numel())]
        n_heads_r = grid.shape[2]
        n_heads_s = grid.shape[1]
        for i in best.tolist():
            sender, rest = divmod(i, n_heads_s * n_heads_r)
            sender_head, receiver_head = divmod(rest, n_heads_r)
            rows.append((float(flat[i]), indices[sender], sender_head, layer, receiver_head))
    rows.sort(key=lambda row: -row[0])
    pairs = [
        CompositionPair(
            sender_layer=sl, sender_head=sh, receiver_layer=rl, receiver_head=rh, score=score, ratio=score / mean
        )
        for score, sl, sh, rl, rh in rows[:top_k]
    ]
    return CompositionScores(
        kind=kind,
        receiver_layers=list(scores),
        n_pairs=sum(int(grid.numel()) for grid in scores.values()),
        top_pairs=pairs,
        baseline_mean=mean,
        baseline_std=std,
        meaning=(
            f"score = share of the receiver's {kind.upper()}-input circuit that the sender's OV output spans "
            f"(0..1); random matrices of these shapes score {mean:.3g} +- {std:.2g}; ratio = score / that mean."
        ),
    )
