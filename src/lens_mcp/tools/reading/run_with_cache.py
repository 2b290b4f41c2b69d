"""run_with_cache: one forward pass, summarized. Each requested activation is reduced to L2 norms per position
(attention patterns: entropy and most-attended source per head) by a hook as it is produced, so memory holds
one activation at a time, never the cache of every hook."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from lens_mcp.schemas.common import TopToken
from lens_mcp.schemas.reading import CacheSummary, HookSummary
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate
from lens_mcp.tools.core.forward import summarizing_forward
from lens_mcp.tools.core.hook_names import HookGroup, resolve_hook_selection
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_top_k, resolve_layers, resolve_positions


def top_tokens(tc: ToolContext, logits: torch.Tensor, k: int) -> list[TopToken]:
    """Top-k of one logit vector as TopToken (token, id, prob)."""
    probs = logits.float().softmax(dim=-1)
    values, ids = probs.topk(k)
    strings = token_strings(tc, ids)
    return [TopToken(token=s, id=int(i), prob=float(p)) for s, i, p in zip(strings, ids, values, strict=True)]


def _position_axis(name: str, point: Any, tensor: torch.Tensor, n_tokens: int) -> int | None:
    axis = getattr(point, "pos_dim", None)
    if axis is None:
        axis = tensor.ndim - 2 if name.endswith(("hook_pattern", "hook_attn_scores")) else 1
    axis = axis % tensor.ndim if tensor.ndim else 0
    if tensor.ndim >= 2 and tensor.shape[axis] == n_tokens:
        return axis
    if tensor.ndim >= 1 and tensor.shape[0] == n_tokens:  # a hook fired without the batch axis
        return 0
    return None


def position_norms(tensor: torch.Tensor, axis: int | None, positions: list[int]) -> list[float]:
    """L2 norm over every axis but the position axis (non-finite entries, e.g. masked scores, count as 0)."""
    x = tensor.float()
    x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if axis is None:  # no position axis: one norm of the whole activation, repeated per column
        return [float(x.norm())] * len(positions)
    rows = x.movedim(axis, 0)[positions]
    return rows.reshape(len(positions), -1).norm(dim=1).tolist()


def _enforce_cost(tc: ToolContext, groups: list[HookGroup], n_tokens: int, n_positions: int, top_k: int) -> None:
    """Refuse, before the forward pass, a summary whose JSON would be over the response cap: norms are one
    number per hooked layer and position; a pattern is an entropy per head and a top source per head and
    query position."""
    n_heads = tc.view.n_heads
    cells = 0
    for group in groups:
        per_row = n_heads * (1 + n_positions) if "pattern" in group.label else n_positions
        cells += len(group.names) * per_row
    # a lower bound (short numbers, short tokens): a call refused on it is over the cap for certain, and one
    # near the cap is computed and then measured exactly by the adapter
    floor = 5 * cells + 4 * n_tokens + 30 * top_k
    work = Work(rows=1, tokens_per_row=n_tokens, cells=cells, result_chars=floor)
    enforce(tc, estimate(tc, work), "fewer hooks=, layers=[...] or positions=[...]")


def run_with_cache(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The text to run (BOS is prepended)")],
    hooks: Annotated[
        list[str] | str,
        Field(
            description=(
                "What to summarize: families (resid_pre, resid_mid, resid_post, attn_out, mlp_out, pattern, attn_scores, "
                "q, k, v, z, rot_q, rot_k, mlp_pre, mlp_post), exact hook names ('blocks.3.attn.hook_z'), or globs "
                "('blocks.*.ln1.hook_scale'). model_info lists this model's families"
            )
        ),
    ] = ["resid_post"],  # noqa: B006
    layers: Annotated[
        list[int] | None,
        Field(
            description=(
                "Only these layers (negative counts from the end) for families and globs; exact names are always kept. "
                "Default: all"
            )
        ),
    ] = None,
    positions: Annotated[
        list[int] | None,
        Field(
            description=(
                "Only these positions (negative counts from the end; query positions for patterns). Default: all"
            )
        ),
    ] = None,
    top_k: Annotated[int, Field(description="Next-token predictions to list at the last position")] = 5,
) -> CacheSummary:
    """One forward pass over `prompt`, summarized rather than dumped: the string tokens, the top_k next-token
    predictions at the last position (token, id, prob), and per requested hook kind its shape and a layer x
    position grid of L2 norms (4 significant digits). Attention patterns are summarized per head instead:
    mean entropy (nats) and, per query position, the most-attended source position. Only the requested hook
    points are hooked, and each activation is reduced as it is produced. Use layers=/positions= to narrow a
    long prompt. Next: attention_pattern for one head's full top sources, logit_lens to read the residual
    stream as predictions, head_attribution for which heads write the answer."""
    tokens = encode(tc, prompt)
    n_tokens = int(tokens.shape[-1])
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    n_layers = tc.view.n_layers
    layer_list = None if layers is None else resolve_layers(layers, n_layers)
    position_list = resolve_positions(positions, n_tokens)
    groups = resolve_hook_selection(tc.view, [hooks] if isinstance(hooks, str) else hooks, layer_list)
    hook_dict = tc.view.hook_dict
    _enforce_cost(tc, groups, n_tokens, len(position_list), top_k)

    summaries: dict[str, dict[str, Any]] = {}

    def summarize(name: str, tensor: torch.Tensor) -> None:
        summary: dict[str, Any] = {"shape": list(tensor.shape)}
        if name.endswith("hook_pattern") and tensor.ndim == 4:
            pattern = tensor[0].float()[:, position_list, :]  # heads x queries x sources
            entropy = torch.special.entr(pattern).sum(dim=-1) + 0.0  # + 0.0 turns -0.0 into 0.0
            summary["entropy"] = entropy.mean(dim=-1).tolist()
            summary["top_source"] = pattern.argmax(dim=-1).tolist()
        else:
            axis = _position_axis(name, hook_dict[name], tensor, n_tokens)
            summary["norms"] = position_norms(tensor, axis, position_list)
        summaries[name] = summary

    names = [name for group in groups for name in group.names]
    logits = summarizing_forward(tc, tokens, names, summarize)

    results = []
    not_fired = [name for name in names if name not in summaries]
    for group in groups:
        fired = [(name, layer) for name, layer in zip(group.names, group.layers, strict=True) if name in summaries]
        if not fired:
            continue
        rows = [summaries[name] for name, _ in fired]
        is_pattern = "entropy" in rows[0]
        results.append(
            HookSummary(
                hook=group.label,
                layers=[layer for _, layer in fired],
                shape=rows[0]["shape"],
                norms=None if is_pattern else [row.get("norms", []) for row in rows],
                entropy=[row["entropy"] for row in rows] if is_pattern else None,
                top_source=[row["top_source"] for row in rows] if is_pattern else None,
            )
        )
    return CacheSummary(
        tokens=token_strings(tc, tokens[0]),
        positions=position_list,
        top_predictions=top_tokens(tc, logits[0, -1], top_k),
        hooks=results,
        not_fired=not_fired or None,
    )
