"""head_attribution's extensions: a head's cell split over source positions (by_source), the attribution of a
prompt minus a baseline prompt (baseline_prompt), and the mean over a prompt dataset (pairs).

Each builds on head_attribution's single-prompt decomposition (its unrounded parts), so every number here is
in the grid's units and follows whatever that decomposition does for the architecture. A source's part of
head (l, h) at query q is pattern[h, q, s] x (v[s, kv(h)] . head_direction[l, h]) / scale: the head's z is
the attention-weighted sum of its key/value group's values, so the parts sum to the cell exactly; the sum is
checked, and a model where it does not hold (e.g. attention sinks) is refused."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import ValidationError

from lens_mcp.errors import LensError
from lens_mcp.schemas.common import GridSpread, HeadScore, PairMetrics
from lens_mcp.schemas.components import BaselineComparison, HeadPair, SourcePart, SourceSplit
from lens_mcp.schemas.reading import HeadAttribution, OtherComponents
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate, grid_chars
from lens_mcp.tools.core.metrics import AnswerMetric, resolve_metric
from lens_mcp.tools.core.pairs import PromptPair, resolve_pairs, spread
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_top_k, resolve_head, resolve_layer
from lens_mcp.tools.reading._dla import attribute_prompt, attribute_prompts
from lens_mcp.tools.reading._heads import head_reads

_SCALARS = ("embed", "attn_bias", "unembed_bias", "total", "actual")


def _minus(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {key: a[key] - b[key] for key in (*_SCALARS, "heads")}
    out["pos_embed"] = None if a["pos_embed"] is None else a["pos_embed"] - b["pos_embed"]
    out["mlp"] = None if a["mlp"] is None else [x - y for x, y in zip(a["mlp"], b["mlp"], strict=True)]
    return out


def _mean(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(parts)
    out: dict[str, Any] = {key: sum(p[key] for p in parts) / n for key in _SCALARS}
    out["heads"] = torch.stack([p["heads"] for p in parts]).mean(dim=0)
    out["pos_embed"] = None if parts[0]["pos_embed"] is None else sum(p["pos_embed"] for p in parts) / n
    out["mlp"] = None if parts[0]["mlp"] is None else torch.tensor([p["mlp"] for p in parts]).mean(dim=0).tolist()
    return out


def _top(heads: torch.Tensor, top_k: int) -> list[tuple[int, int]]:
    n_heads = heads.shape[1]
    flat = heads.flatten()
    order = flat.abs().argsort(descending=True)[: min(top_k, flat.numel())]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order]


def _build(
    first: HeadAttribution, parts: dict[str, Any], top_k: int, metric: str, explained: bool, note: str, **extra: Any
) -> HeadAttribution:
    heads = parts["heads"]
    return HeadAttribution(
        metric=metric,
        position=first.position,
        token=first.token,
        heads=heads.tolist(),
        top_heads=[HeadScore(layer=lay, head=h, score=float(heads[lay, h])) for lay, h in _top(heads, top_k)],
        other=OtherComponents(
            embed=parts["embed"],
            pos_embed=parts["pos_embed"],
            mlp=parts["mlp"],
            attn_bias=parts["attn_bias"],
            unembed_bias=parts["unembed_bias"],
        ),
        heads_total=float(heads.sum()),
        total=parts["total"],
        actual=parts["actual"],
        explained=explained,
        note=note,
        **extra,
    )


def _source_parts(
    tc: ToolContext, tokens: torch.Tensor, raw: dict[str, Any], layer: int, head: int, pos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(each source's part of the head's cell, the attention row) on one prompt; the parts are checked to sum
    to the cell."""
    kept = head_reads(tc, tokens, layer, head, pos)
    direction = raw["head_directions"][layer, head].float()
    values = kept["v"].to(direction.device) @ direction  # (n,)
    parts = kept["pattern"].to(direction.device) * values / raw["scale"]
    cell = float(raw["heads"][layer, head])
    if abs(float(parts.sum()) - cell) > 1e-3 * (1.0 + abs(cell)) + (0 if tc.model.dtype == torch.float32 else 1e-2):
        raise LensError(
            f"by_source: on this model L{layer}H{head}'s output is not its attention-weighted values (sum of parts "
            f"{float(parts.sum()):.4g} vs cell {cell:.4g}; e.g. attention sinks), so a split by source would be "
            "wrong; it is refused."
        )
    return parts, kept["pattern"]


def attribution_call(
    tc: ToolContext,
    prompt: str | None,
    answer: str | None,
    wrong_answer: str | None,
    position: int,
    top_k: int,
    by_source: bool,
    layer: int | None,
    head: int | None,
    baseline_prompt: str | None,
    pairs: Sequence[PromptPair | dict[str, object]] | None,
) -> HeadAttribution:
    """head_attribution with every argument: the single-prompt path unchanged, or the extensions."""
    if not isinstance(by_source, bool):
        raise LensError(f"by_source: expected true or false, got {by_source!r:.40}.")
    if (layer is not None or head is not None) and not by_source:
        raise LensError("layer/head choose the head for by_source; pass by_source=true, or omit them.")
    if pairs is not None and baseline_prompt is not None:
        raise LensError(
            "pass either pairs=[...] or baseline_prompt, not both; put each baseline into its pair as corrupted_prompt."
        )
    if pairs is not None and by_source:
        raise LensError("by_source reads one prompt; call it with prompt=... (and baseline_prompt), not pairs.")
    if by_source and (layer is None) != (head is None):
        raise LensError("by_source: pass both layer and head, or neither (then the top head is split).")
    if layer is not None and head is not None:  # checked before any forward pass
        layer = resolve_layer(layer, tc.view.n_layers)
        head = resolve_head(head, tc.view.n_heads)
    if pairs is not None and not isinstance(pairs, (list, tuple)):
        raise LensError(f"pairs: expected a list of {{clean_prompt, answer, ...}} objects, got {pairs!r:.60}.")
    if pairs is None and prompt is not None and answer is None:
        raise LensError(
            "answer is required: pass answer (one token, e.g. ' Paris'), or a dataset as pairs=[{clean_prompt, "
            "answer, ...}]."
        )
    if pairs is None and baseline_prompt is None and not by_source and prompt is not None and answer is not None:
        return attribute_prompt(tc, prompt, answer, wrong_answer, position, top_k)  # the plain call, unchanged
    try:
        items = resolve_pairs(
            tc,
            pairs,
            clean_prompt=prompt,
            answer=answer,
            wrong_answer=wrong_answer,
            need_corrupted=False,
            need_answer=True,
            prompt_arg="prompt",
        )
        if pairs is None:
            items = [PromptPair.model_validate({**items[0].model_dump(), "corrupted_prompt": baseline_prompt})]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if pairs is None:
            where = {"clean_prompt": "prompt", "corrupted_prompt": "baseline_prompt"}.get(where, where)
        raise LensError(f"{'pairs' if pairs is not None else 'arguments'}: {where}: {first['msg']}.") from None
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    with_baseline = [item.corrupted_prompt is not None for item in items]
    if any(with_baseline) and not all(with_baseline):
        raise LensError(
            "pairs: corrupted_prompt is given in some pairs and not others; give it in every pair (each pair's "
            "baseline) or in none."
        )

    # Tokenize everything first: errors name the pair, and the cost is known before any forward pass.
    n_items = len(items)
    dataset = pairs is not None
    lengths = []
    for index, item in enumerate(items):
        where = f"pairs[{index}]." if dataset else ""
        lengths.append(
            int(encode(tc, item.clean_prompt, f"{where}{'clean_prompt' if dataset else 'prompt'}").shape[-1])
        )
        if item.corrupted_prompt is not None:
            label = f"{where}corrupted_prompt" if dataset else "baseline_prompt"
            lengths.append(int(encode(tc, item.corrupted_prompt, label).shape[-1]))
    if dataset:  # up to max_pairs x 2 forward passes: estimated before the first
        n_layers, n_heads = tc.view.n_layers, tc.view.n_heads
        cost = estimate(
            tc,
            Work(
                rows=len(lengths),
                tokens_per_row=max(lengths),
                cells=n_layers * n_heads,
                result_chars=grid_chars(4 * n_layers * n_heads + 60 * n_items, overhead=1500),
            ),
        )
        enforce(tc, cost, narrow="fewer pairs, or shorter prompts")

    requests: list[tuple[str, AnswerMetric]] = []
    labels: list[str] = []
    for index, item in enumerate(items):
        prefix = f"pairs[{index}]." if dataset else ""
        try:
            metric_of = resolve_metric(tc, item.answer or "", item.wrong_answer)
        except LensError as exc:
            raise LensError(f"{prefix}{exc}" if prefix else str(exc)) from None
        requests.append((item.clean_prompt, metric_of))
        labels.append(prefix)
        if item.corrupted_prompt is not None:
            requests.append((item.corrupted_prompt, metric_of))
            labels.append(prefix or "baseline_prompt: ")
    n_runs = len(requests)
    done = attribute_prompts(
        tc,
        requests,
        position,
        top_k,
        labels,
        progress=lambda finished: tc.progress(finished, n_runs, f"{finished} of {n_runs} prompts attributed"),
    )
    results, per_item = [], []
    runs = iter(done)
    for item in items:
        clean, raw_clean = next(runs)
        base = raw_base = None
        if item.corrupted_prompt is not None:
            base, raw_base = next(runs)
        results.append((clean, raw_clean, base, raw_base))
        per_item.append(_minus(raw_clean, raw_base) if raw_base is not None else raw_clean)

    first, raw_first, first_base, raw_first_base = results[0]
    explained = all(r[0].explained and (r[2] is None or r[2].explained) for r in results)
    if not dataset:
        parts = per_item[0]
        extra: dict[str, Any] = {}
        metric = first.metric
        note = first.note
        if first_base is not None:
            assert raw_first_base is not None
            metric = f"{first.metric} on prompt minus on baseline_prompt"
            note = f"prompt: {first.note} baseline: {first_base.note}"
            extra["baseline"] = BaselineComparison(
                baseline_position=first_base.position,
                baseline_token=first_base.token,
                prompt_actual=raw_first["actual"],
                baseline_actual=raw_first_base["actual"],
                top_heads=[
                    HeadPair(
                        layer=lay,
                        head=h,
                        prompt_score=float(raw_first["heads"][lay, h]),
                        baseline_score=float(raw_first_base["heads"][lay, h]),
                        difference=float(parts["heads"][lay, h]),
                    )
                    for lay, h in _top(parts["heads"], top_k)
                ],
                meaning=(
                    "difference = a head's direct contribution on the prompt minus on the baseline: near 0 for a "
                    "head that pushes the answer whatever the prompt; large for one that carries what differs."
                ),
            )
        if by_source:
            extra["by_source"] = _by_source(
                tc, items[0], raw_first, raw_first_base, parts, layer, head, first, first_base, top_k
            )
        return _build(first, parts, top_k, metric, explained, note, **extra)

    mean = _mean(per_item)
    stats = spread(torch.stack([p["heads"] for p in per_item]))
    pair_metrics = [
        PairMetrics(index=i, clean_metric=r[1]["actual"], corrupted_metric=None if r[3] is None else r[3]["actual"])
        for i, r in enumerate(results)
    ]
    what = "logit(answer) - logit(wrong_answer)" if items[0].wrong_answer is not None else "logit(answer)"
    metric = f"mean over {n_items} pairs of {what}" + (
        " on clean minus on corrupted_prompt" if any(with_baseline) else ""
    )
    unexplained = [i for i, r in enumerate(results) if not (r[0].explained and (r[2] is None or r[2].explained))]
    note = (
        "every pair's components sum to its actual metric; `heads` is the mean over pairs, `spread` its variation."
        if not unexplained
        else f"pairs {unexplained[:10]} are not fully explained by their components ({results[unexplained[0]][0].note})"
    )
    return _build(
        first,
        mean,
        top_k,
        metric,
        explained,
        note,
        spread=GridSpread(n_pairs=stats.n, std=stats.std.tolist(), min=stats.min.tolist(), max=stats.max.tolist()),
        pairs=pair_metrics,
    )


def _by_source(
    tc: ToolContext,
    item: PromptPair,
    raw: dict[str, Any],
    raw_base: dict[str, Any] | None,
    parts: dict[str, Any],
    layer: int | None,
    head: int | None,
    first: HeadAttribution,
    first_base: HeadAttribution | None,
    top_k: int,
) -> SourceSplit:
    if layer is None and head is None:
        layer, head = _top(parts["heads"], 1)[0]
    elif layer is None or head is None:
        raise LensError("by_source: pass both layer and head, or neither (then the top head is split).")
    layer = resolve_layer(layer, tc.view.n_layers)
    head = resolve_head(head, tc.view.n_heads)
    tokens = encode(tc, item.clean_prompt)
    contributions, attention = _source_parts(tc, tokens, raw, layer, head, first.position)
    if raw_base is not None:
        assert item.corrupted_prompt is not None and first_base is not None
        base_tokens = encode(tc, item.corrupted_prompt, "baseline_prompt")
        if base_tokens.shape[-1] != tokens.shape[-1]:
            raise LensError(
                f"by_source with baseline_prompt subtracts position by position, so the two prompts must tokenize "
                f"to the same length (they are {tokens.shape[-1]} and {base_tokens.shape[-1]} tokens); reword one, "
                "or call by_source without baseline_prompt."
            )
        base_parts, _ = _source_parts(tc, base_tokens, raw_base, layer, head, first_base.position)
        contributions = contributions - base_parts.to(contributions.device)
    k = min(top_k, int(contributions.numel()))
    order = contributions.abs().argsort(descending=True)[:k]
    strings = token_strings(tc, tokens[0])
    listed = [int(i) for i in order]
    score = float(parts["heads"][layer, head])
    return SourceSplit(
        layer=layer,
        head=head,
        kv_head=tc.view.kv_head_of(head),
        score=score,
        sources=[
            SourcePart(
                position=s, token=strings[s], attention=float(attention[s]), contribution=float(contributions[s])
            )
            for s in listed
        ],
        rest=float(contributions.sum() - contributions[order].sum()),
        meaning=(
            f"contribution = attention x value at that source through L{layer}H{head}'s W_O, in the grid's units"
            + (" (prompt minus baseline at that position)" if raw_base is not None else "")
            + "; the listed parts plus rest sum to score."
        ),
    )
