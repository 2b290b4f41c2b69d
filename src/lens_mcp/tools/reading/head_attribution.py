"""head_attribution: direct logit attribution of every attention head (and of everything else in the residual
stream) to logit(answer) - logit(wrong_answer) at one position.

Each component's output at the position is divided by the final norm's scale cached on this very run (and
centred first when the final norm is a LayerNorm), then projected on W_U[:, answer] - W_U[:, wrong]: the
convention of TransformerLens's `apply_ln_to_stack`. Head outputs are z @ W_O per query head, so grouped-query
models (fewer key/value heads) need nothing special."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from lens_mcp.schemas.common import HeadScore
from lens_mcp.schemas.reading import HeadAttribution, OtherComponents
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.forward import cached_forward
from lens_mcp.tools.core.metrics import AnswerMetric, metric_warnings, resolve_metric
from lens_mcp.tools.core.tokens import encode, token_string
from lens_mcp.tools.core.validation import check_top_k, resolve_position

FP32_TOLERANCE = 1e-3


def _final_norm_centres(tc: ToolContext) -> bool:
    """Whether the final norm subtracts the mean (LayerNorm) rather than only scaling (RMSNorm)."""
    cfg = tc.cfg
    return cfg.normalization_type in ("LN", "LNPre") and not getattr(cfg, "final_rms", False)


def _has_final_norm(tc: ToolContext) -> bool:
    norm = tc.cfg.normalization_type
    return norm in ("LN", "LNPre", "RMS", "RMSPre") and "ln_final.hook_scale" in tc.bridge.hook_dict


def _stacked_or_none(tc: ToolContext, attribute: str) -> torch.Tensor | None:
    """A stacked per-layer weight such as b_O, or None when the checkpoint has no such parameter."""
    try:
        value = getattr(tc.bridge, attribute)
    except AttributeError:
        return None
    return value if isinstance(value, torch.Tensor) else None


def head_attribution(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The text to run (BOS is prepended)")],
    answer: Annotated[
        str, Field(description="The expected next token, one token (usually with a leading space: ' Paris')")
    ],
    wrong_answer: Annotated[
        str | None,
        Field(
            description=(
                "A competing token (' Rome'); attribute logit(answer) - logit(wrong_answer). "
                "Omitted: attribute logit(answer) alone"
            )
        ),
    ] = None,
    position: Annotated[int, Field(description="Position whose prediction is attributed (-1 = last)")] = -1,
    top_k: Annotated[int, Field(description="How many heads to list by absolute contribution")] = 10,
) -> HeadAttribution:
    """Direct logit attribution: how much each attention head writes logit(answer) - logit(wrong_answer) (or
    logit(answer)) into the residual stream at `position`, through the final norm's scale taken from the same
    run (TransformerLens's apply_ln_to_stack convention). Returns the layer x head grid, the top_k heads by
    absolute value (sign kept: positive pushes towards answer), the direct contributions of the embeddings, each
    MLP and the biases, their sum `total`, and `actual` (the metric from the model's real logits); `explained`
    and `note` say whether total matches actual (within 1e-3 on fp32). Direct effects only: a head that matters
    through later layers can score near 0 here; patch it to see its total effect."""
    tokens = encode(tc, prompt)
    n_tokens = int(tokens.shape[-1])
    pos = resolve_position(position, n_tokens)
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    metric = resolve_metric(tc, answer, wrong_answer)
    n_layers = int(tc.cfg.n_layers)

    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    if not getattr(tc.cfg, "attn_only", False):
        names += [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
    names += [name for name in ("hook_embed", "hook_pos_embed") if name in tc.bridge.hook_dict]
    if _has_final_norm(tc):
        names.append("ln_final.hook_scale")
    logits, cache = cached_forward(tc, tokens, names, positions=[pos])
    with torch.no_grad():
        read = logits[0, pos]
        result = _attribute(tc, metric, cache, float(metric(read)), pos, top_k, token_string(tc, int(tokens[0, pos])))
    result.warnings = metric_warnings(tc, metric, read)
    return result


def _attribute(
    tc: ToolContext, metric: AnswerMetric, cache: Any, actual: float, pos: int, top_k: int, token: str
) -> HeadAttribution:
    bridge, cfg = tc.bridge, tc.cfg
    n_layers, n_heads = int(cfg.n_layers), int(cfg.n_heads)
    attn_only = bool(getattr(cfg, "attn_only", False))

    W_U = bridge.W_U
    direction = W_U[:, metric.answer_id].float()
    if metric.wrong_id is not None:
        direction = direction - W_U[:, metric.wrong_id].float()
    if _final_norm_centres(tc):
        # (x - mean(x)) . d == x . (d - mean(d)): centring each component equals centring the direction.
        direction = direction - direction.mean()
    scale = float(cache["ln_final.hook_scale"][0, 0].reshape(-1)[0]) if _has_final_norm(tc) else 1.0

    def project(vector: torch.Tensor) -> float:
        return float(vector.to(direction.device).float() @ direction) / scale

    # Heads: z (layers, heads, d_head) at the position through each head's W_O (layers, heads, d_head, d_model),
    # contracted with the direction first so no (heads, d_model) output is built.
    # (.to: under a device_map the layers live on different devices.)
    z = torch.stack(
        [cache[f"blocks.{layer}.attn.hook_z"][0, 0].to(direction.device) for layer in range(n_layers)]
    ).float()
    head_directions = torch.einsum("lhdm,m->lhd", bridge.W_O.to(direction.device).float(), direction)
    heads = torch.einsum("lhd,lhd->lh", z, head_directions) / scale

    b_O = _stacked_or_none(tc, "b_O")
    attn_bias = project(b_O.sum(dim=0)) if b_O is not None else 0.0
    b_U = _stacked_or_none(tc, "b_U")
    unembed_bias = 0.0
    if b_U is not None:
        unembed_bias = float(b_U[metric.answer_id])
        if metric.wrong_id is not None:
            unembed_bias -= float(b_U[metric.wrong_id])
    embed = project(cache["hook_embed"][0, 0])
    pos_embed = project(cache["hook_pos_embed"][0, 0]) if "hook_pos_embed" in cache.cache_dict else None
    mlp = None if attn_only else [project(cache[f"blocks.{layer}.hook_mlp_out"][0, 0]) for layer in range(n_layers)]

    heads_total = float(heads.sum())
    total = heads_total + embed + (pos_embed or 0.0) + sum(mlp or []) + attn_bias + unembed_bias
    tolerance = FP32_TOLERANCE if tc.model.dtype == torch.float32 else 0.02 * max(1.0, abs(actual))
    gap = total - actual
    explained = abs(gap) <= tolerance
    if explained:
        note = (
            f"total equals actual to {abs(gap):.1e} (tolerance {tolerance:.0e}): the components account for "
            "the whole metric."
        )
    else:
        note = (
            f"total differs from actual by {gap:+.4g} (tolerance {tolerance:.0e}): this model's residual "
            "stream holds something the listed components miss (e.g. a norm after each sublayer); read the "
            "grid as approximate."
        )

    flat = heads.flatten()
    order = flat.abs().argsort(descending=True)[: min(top_k, flat.numel())]
    top_heads = [HeadScore(layer=int(i) // n_heads, head=int(i) % n_heads, score=float(flat[i])) for i in order]
    return HeadAttribution(
        metric=metric.description,
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
