"""Direct logit attribution of every head and every other residual-stream component to a metric at one position. Private to tools/reading/: head_attribution and its by_source split build on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lens_mcp.errors import LensError
from lens_mcp.schemas.common import HeadScore
from lens_mcp.schemas.reading import HeadAttribution, OtherComponents
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import rows_for_time
from lens_mcp.tools.core.direct import final_norm_centres, has_final_norm
from lens_mcp.tools.core.forward import cached_forward, output_slope, readout
from lens_mcp.tools.core.metrics import AnswerMetric, metric_warnings, resolve_metric
from lens_mcp.tools.core.tokens import encode, token_string
from lens_mcp.tools.core.validation import check_top_k, resolve_position

FP32_TOLERANCE = 1e-3


def stacked_or_none(tc: ToolContext, attribute: str) -> torch.Tensor | None:
    """A stacked per-layer weight such as b_O, or None when the checkpoint has no such parameter."""
    value = tc.view.stacked_weight(attribute)
    return value if isinstance(value, torch.Tensor) else None


def attribute_prompt(
    tc: ToolContext,
    prompt: str,
    answer: str,
    wrong_answer: str | None,
    position: int,
    top_k: int,
    unrounded: dict[str, Any] | None = None,
) -> HeadAttribution:
    encode(tc, prompt)  # the prompt's own errors first
    metric = resolve_metric(tc, answer, wrong_answer)
    result, raw = attribute_prompts(tc, [(prompt, metric)], position, top_k)[0]
    if unrounded is not None:
        unrounded.update(raw)
    return result


class RowCache:
    """One row of a batched cache, read as `attribute` reads a single prompt's (`cache[name][0, ...]`)."""

    def __init__(self, cache: Any, row: int) -> None:
        self._cache, self._row = cache, row
        self.cache_dict = cache.cache_dict

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._cache[name][self._row : self._row + 1]


def attribution_hooks(tc: ToolContext) -> list[str]:
    """What `attribute` reads from a run."""
    n_layers = tc.view.n_layers
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    if not tc.view.capabilities.attn_only:
        names += [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
    attn_out = [f"blocks.{layer}.hook_attn_out" for layer in range(n_layers)]
    names += [name for name in attn_out if name in tc.view.hook_dict]
    names += post_norm_hooks(tc)
    names += [name for name in ("hook_embed", "hook_pos_embed") if name in tc.view.hook_dict]
    names += ["blocks.0.hook_resid_pre", f"blocks.{n_layers - 1}.hook_resid_post"]
    if has_final_norm(tc):
        names.append("ln_final.hook_scale")
    return names


def attribute_prompts(
    tc: ToolContext,
    requests: Sequence[tuple[str, AnswerMetric]],
    position: int,
    top_k: int,
    labels: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[HeadAttribution, dict[str, Any]]]:
    """Every prompt's decomposition and its unrounded parts, prompts of one length run as rows of one batch
    (sized by time); errors name the prompt's label."""
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    encoded = [encode(tc, text) for text, _ in requests]
    by_length: dict[int, list[int]] = {}
    for index, tokens in enumerate(encoded):
        by_length.setdefault(int(tokens.shape[-1]), []).append(index)
    names = attribution_hooks(tc)
    found: dict[int, tuple[HeadAttribution, dict[str, Any]]] = {}
    for n_tokens, members in by_length.items():
        try:
            pos = resolve_position(position, n_tokens)
        except LensError as exc:
            label = labels[members[0]] if labels else ""
            raise LensError(f"{label}{exc}") from None
        rows = min(rows_for_time(tc, n_tokens), tc.limits.max_batch_sequences)
        for start in range(0, len(members), rows):
            chunk = members[start : start + rows]
            logits, cache = cached_forward(tc, torch.cat([encoded[i] for i in chunk]), names, positions=[pos])
            assert logits is not None
            with torch.no_grad():
                for row, index in enumerate(chunk):
                    metric, read, raw = requests[index][1], logits[row, pos], {}
                    token = token_string(tc, int(encoded[index][0, pos]))
                    result = attribute(tc, metric, RowCache(cache, row), float(metric(read)), pos, top_k, token, raw)
                    result.warnings = metric_warnings(tc, metric, read)
                    found[index] = (result, raw)
            if progress is not None:
                progress(len(found))
    return [found[index] for index in range(len(requests))]


def post_norm(tc: ToolContext, layer: int) -> Any:
    """The norm a block applies to its attention output before adding it to the residual stream, or None."""
    return tc.view.post_norm(layer, "ln1")


def post_norm_hooks(tc: ToolContext) -> list[str]:
    return [
        f"blocks.{layer}.ln1_post.hook_scale" for layer in range(tc.view.n_layers) if post_norm(tc, layer) is not None
    ]


def rms_weight(norm: Any, d_model: int, like: torch.Tensor) -> torch.Tensor:
    """The elementwise weight an RMS norm multiplies x / rms(x) by, whatever its parametrization (w or 1 + w):
    the norm of a constant vector so large that eps does not count."""
    probe = torch.full((1, 1, d_model), 1e3, dtype=like.dtype, device=like.device)
    return norm(probe)[0, 0].float()


def attention_maps(tc: ToolContext, cache: Any, raw: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """(layers, d_model): per layer, the elementwise factor that takes the heads' summed output (z @ W_O + b_O)
    to the block's attention output in the residual stream, frozen on this run: 1/scale * weight for a norm
    after the sublayer, the residual multiplier (fitted and checked) otherwise, 1 for most models."""
    factors = []
    d_model = tc.view.d_model
    for layer in range(tc.view.n_layers):
        if f"blocks.{layer}.hook_attn_out" not in cache.cache_dict:  # nothing to freeze against: the identity
            factors.append(torch.ones(d_model, device=direction.device))
            continue
        out = cache[f"blocks.{layer}.hook_attn_out"][0, 0].to(direction.device).float()
        norm = post_norm(tc, layer)
        if norm is not None:
            scale = cache[f"blocks.{layer}.ln1_post.hook_scale"][0, 0].reshape(-1)[0].to(direction.device).float()
            factors.append(rms_weight(norm, d_model, out).to(direction.device) / scale)
            continue
        energy = float(raw[layer] @ raw[layer])
        factor = float(out @ raw[layer]) / energy if energy > 0 else 1.0
        factors.append(torch.full((d_model,), factor, device=direction.device))
    return torch.stack(factors)


def attribute(
    tc: ToolContext,
    metric: AnswerMetric,
    cache: Any,
    actual: float,
    pos: int,
    top_k: int,
    token: str,
    unrounded: dict[str, Any] | None = None,
) -> HeadAttribution:
    view = tc.view
    n_layers, n_heads = view.n_layers, view.n_heads
    attn_only = view.capabilities.attn_only

    slope, linear = output_slope(tc)
    W_U = view.W_U
    direction = W_U[:, metric.answer_id].float()
    if metric.wrong_id is not None:
        direction = direction - W_U[:, metric.wrong_id].float()
    if final_norm_centres(tc):
        # (x - mean(x)) . d == x . (d - mean(d)): centring each component equals centring the direction.
        direction = direction - direction.mean()
    elif has_final_norm(tc):
        direction = direction * rms_weight(view.ln_final, view.d_model, direction).to(direction.device)
    scale = float(cache["ln_final.hook_scale"][0, 0].reshape(-1)[0]) if has_final_norm(tc) else 1.0
    direction = direction * slope  # a logit scale is linear: it multiplies every term

    def project(vector: torch.Tensor) -> float:
        return float(vector.to(direction.device).float() @ direction) / scale

    # Heads: z (layers, heads, d_head) at the position through each head's W_O (layers, heads, d_head, d_model).
    # (.to: under a device_map the layers live on different devices.)
    z = torch.stack(
        [cache[f"blocks.{layer}.attn.hook_z"][0, 0].to(direction.device) for layer in range(n_layers)]
    ).float()
    W_O = view.W_O.to(direction.device).float()
    b_O = stacked_or_none(tc, "b_O")
    b_O = (
        b_O.to(direction.device).float()
        if b_O is not None
        else torch.zeros(n_layers, view.d_model, device=direction.device)
    )
    raw = torch.einsum("lhd,lhdm->lm", z, W_O) + b_O  # each layer's summed head output before the block's map
    factors = attention_maps(tc, cache, raw, direction)  # (layers, d_model)
    layer_directions = factors * direction  # (layers, d_model)
    head_directions = torch.einsum("lhdm,lm->lhd", W_O, layer_directions)
    heads = torch.einsum("lhd,lhd->lh", z, head_directions) / scale

    attn_bias = float((b_O * layer_directions).sum()) / scale
    b_U = stacked_or_none(tc, "b_U")
    unembed_bias = 0.0
    if b_U is not None:
        unembed_bias = float(b_U[metric.answer_id])
        if metric.wrong_id is not None:
            unembed_bias -= float(b_U[metric.wrong_id])
        unembed_bias *= slope
    pos_embed = project(cache["hook_pos_embed"][0, 0]) if "hook_pos_embed" in cache.cache_dict else None
    if "hook_embed" in cache.cache_dict:
        embed = project(cache["hook_embed"][0, 0])
    else:  # no separate embedding hook: what enters block 0, less any positional embedding
        embed = project(cache["blocks.0.hook_resid_pre"][0, 0]) - (pos_embed or 0.0)
    mlp = None if attn_only else [project(cache[f"blocks.{layer}.hook_mlp_out"][0, 0]) for layer in range(n_layers)]

    capped_note = ""
    if not linear:
        final = cache[f"blocks.{n_layers - 1}.hook_resid_post"][0, 0]
        ids = [metric.answer_id] + ([metric.wrong_id] if metric.wrong_id is not None else [])
        raw_logits = readout(tc, final, ids, transform=False).float() * slope
        capped = actual
        actual = float(raw_logits[0] - raw_logits[1]) if len(ids) == 2 else float(raw_logits[0])
        capped_note = (
            f" This model soft-caps its logits, which does not distribute over a sum: every number here is the "
            f"pre-cap metric (actual {actual:.4g}); after the cap the model's metric is {capped:.4g}."
        )

    heads_total = float(heads.sum())
    total = heads_total + embed + (pos_embed or 0.0) + sum(mlp or []) + attn_bias + unembed_bias
    tolerance = FP32_TOLERANCE if tc.model.dtype == torch.float32 else 0.02 * max(1.0, abs(actual))
    gap = total - actual
    if unrounded is not None:  # the unrounded parts, for callers combining attributions (baselines, pairs, sources)
        unrounded.update(
            heads=heads,
            head_directions=head_directions,
            scale=scale,
            embed=embed,
            pos_embed=pos_embed,
            mlp=mlp,
            attn_bias=attn_bias,
            unembed_bias=unembed_bias,
            total=total,
            actual=actual,
        )
    explained = abs(gap) <= tolerance
    if explained:
        note = (
            f"total equals actual to {abs(gap):.1e} (tolerance {tolerance:.0e}): the components account for "
            "the whole metric."
        )
    else:
        note = (
            f"total differs from actual by {gap:+.4g} (tolerance {tolerance:.0e}): this model's blocks do "
            "something between the components and the residual stream that this decomposition does not model; "
            "read the grid as approximate."
        )
    note += capped_note

    flat = heads.flatten()
    order = flat.abs().argsort(descending=True)[: min(top_k, flat.numel())]
    top_heads = [HeadScore(layer=int(i) // n_heads, head=int(i) % n_heads, score=float(flat[i])) for i in order]
    return HeadAttribution(
        metric=metric.description + ("" if linear else ", before the output soft cap"),
        position=pos,
        token=token,
        heads=heads.tolist(),
        top_heads=top_heads,
        other=OtherComponents(
            embed=embed, pos_embed=pos_embed, mlp=mlp, attn_bias=attn_bias, unembed_bias=unembed_bias
        ),
        heads_total=heads_total,
        total=total,
        actual=actual,
        explained=explained,
        note=note,
    )
