"""feature_exemplars: the corpus text an SAE feature, an MLP neuron or an attention head fires on, with its
activation density, quantile samples, a histogram and the tokens its write promotes."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.features import FeatureExemplarsResult, TokenEffectLite
from lens_mcp.tools.core.arguments import DryRun
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate, seconds_per_row
from lens_mcp.tools.core.forward import final_norm, unembed
from lens_mcp.tools.core.tokens import token_strings
from lens_mcp.tools.core.validation import check_int, check_range, resolve_head, resolve_layer
from lens_mcp.tools.features._corpus import read_corpus, token_store
from lens_mcp.tools.features._exemplars import (
    ColumnStats,
    Unit,
    histogram,
    quantile_picks,
    read_contexts,
    scan,
    unit_group,
)
from lens_mcp.tools.features._index import find_index
from lens_mcp.tools.features._sae import get_sae

DEFAULT_SCAN_TOKENS = 8192
DEFAULT_CONTEXT = 64
MAX_TOP_K = 50
N_SAMPLES = 256
N_EFFECTS = 8
_CHARS_PER_TOKEN = 20
"""A context token in the JSON: its string in `tokens` and its rounded value in `activations`."""


def resolve_unit(
    tc: ToolContext, feature: int | None, layer: int | None, neuron: int | None, head: int | None, hook: str | None
) -> tuple[Unit, int]:
    """(the unit group, the unit's column in it) from the arguments, every id checked."""
    if feature is not None:
        if layer is not None or neuron is not None or head is not None:
            raise LensError(
                "pass either feature=... (an SAE feature) or layer=... with neuron=... or head=..., not both."
            )
        sae = get_sae(tc, hook)
        feature = check_int(feature, "feature")
        if not 0 <= feature < sae.d_sae:
            raise LensError(
                f"feature={feature}: the SAE on {sae.hook_name} has features 0..{sae.d_sae - 1}; use one of those."
            )
        return unit_group(tc, "sae", 0, sae), feature
    if layer is None or (neuron is None) == (head is None):
        raise LensError(
            "say which unit: pass feature=<id> for an SAE feature, layer=<L> with neuron=<n> for an MLP neuron, or "
            "layer=<L> with head=<h> for an attention head."
        )
    layer = resolve_layer(layer, tc.view.n_layers)
    if neuron is not None:
        unit = unit_group(tc, "neuron", layer)
        neuron = check_int(neuron, "neuron")
        if not 0 <= neuron < unit.width:
            raise LensError(f"neuron={neuron}: layer {layer}'s MLP has neurons 0..{unit.width - 1}; use one of those.")
        return unit, neuron
    assert head is not None
    return unit_group(tc, "head", layer), resolve_head(head, tc.view.n_heads)


def context_length(tc: ToolContext, context: int | None) -> int:
    longest = max(2, tc.view.n_ctx - 1)
    if context is None:
        return min(DEFAULT_CONTEXT, longest)
    return check_range(context, 2, longest, "context", "(at most the model's context - 1)")


def direction_effects(tc: ToolContext, direction: torch.Tensor, n: int) -> tuple[list[TokenEffectLite], ...]:
    """The tokens a residual direction raises and lowers most through the final norm and unembedding (the
    unembedding bias subtracted, so only the direction ranks tokens): the reading sae_features uses."""
    with torch.no_grad():
        vector = direction.to(tc.view.W_U.dtype)[None]
        logits = unembed(tc, final_norm(tc, vector)) - unembed(tc, final_norm(tc, torch.zeros_like(vector)))
        logits = logits[0].float()
        up_values, up_ids = logits.topk(n)
        down_values, down_ids = (-logits).topk(n)

    def effects(ids: torch.Tensor, values: torch.Tensor) -> list[TokenEffectLite]:
        return [TokenEffectLite(token=s, logit=float(v)) for s, v in zip(token_strings(tc, ids), values, strict=True)]

    return effects(up_ids, up_values), effects(down_ids, -down_values)


def write_direction(tc: ToolContext, unit: Unit, column: int) -> torch.Tensor | None:
    if unit.kind == "sae":
        assert unit.sae is not None
        return unit.sae.decoder_rows()[column]
    if unit.kind == "neuron":
        W_out = tc.view.stacked_weight("W_out")
        return None if W_out is None else W_out[unit.layer, column]
    return None


def feature_exemplars(
    tc: ToolContext,
    feature: Annotated[
        int | None, Field(description="SAE feature id (with hook= when several SAEs are loaded)")
    ] = None,
    layer: Annotated[int | None, Field(description="Layer of the neuron or head (0-based; -1 = last)")] = None,
    neuron: Annotated[int | None, Field(description="MLP neuron (hook_post) in `layer`")] = None,
    head: Annotated[int | None, Field(description="Attention head in `layer`: where it attends")] = None,
    hook: Annotated[str | None, Field(description="Hook of the SAE (omit when one SAE is loaded)")] = None,
    corpus: Annotated[
        str | None,
        Field(description="Builtin (python-stdlib, kjv-bible), a .txt/.jsonl file, or a HF dataset id (online)"),
    ] = None,
    tokens: Annotated[
        int | None, Field(description="Corpus tokens to scan when no index exists (default: 8192, within the caps)")
    ] = None,
    context: Annotated[
        int | None, Field(description="Tokens per corpus context, BOS not counted (default 64, or less to fit)")
    ] = None,
    top_k: Annotated[int, Field(description="Top-activating contexts to list")] = 10,
    window: Annotated[int, Field(description="Tokens shown on each side of the marked token")] = 8,
    dry_run: DryRun = False,
) -> FeatureExemplarsResult:
    """The corpus contexts a unit fires on most, the explanation every feature browser leads with. A unit is an
    SAE feature (feature=), an MLP neuron (layer=, neuron=; hook_post) or an attention head (layer=, head=; its
    activation at a token is the most attention that query puts on one non-BOS token, and each context shows
    where it attends). Returns the top_k contexts (a window of tokens, each with its activation, the max token
    marked), density (fraction of tokens active), quantile samples at 10-90 % of the max, a histogram, and the
    tokens the unit's write promotes and suppresses (direct path through final norm + unembedding). Uses the
    exemplar index when one was built for this unit, model and corpus (build_exemplar_index, or `lens-mcp index`); otherwise scans a
    bounded, evenly spread sample of the corpus within the cost caps and says so. Progress per batch;
    cancellable."""
    unit, column = resolve_unit(tc, feature, layer, neuron, head, hook)
    top_k = check_range(top_k, 1, MAX_TOP_K, "top_k")
    window = check_range(window, 0, 64, "window")
    body = context_length(tc, context)
    documents = read_corpus(corpus, tc.load_policy)
    store = token_store(tc.view.tokenizer, tc.view.d_vocab, documents, tc.progress)
    if store.n_rows(body) == 0:
        raise LensError(
            f"corpus {documents.name!r} has {store.n_train} training tokens, fewer than one context of {body}; "
            "pass a smaller context or a larger corpus."
        )
    index, damaged = find_index(tc, unit, store, body)
    picks_rows = top_k + 5
    layer_fraction = (unit.layer + 1) / tc.view.n_layers
    note_parts = [damaged] if damaged else []
    if index is not None:
        rows_scanned = 0
    elif tokens is None:
        per_row = seconds_per_row(tc, body + 1, unit.layer + 1)
        by_time = int(0.8 * tc.limits.max_call_seconds / per_row) - picks_rows
        by_work = int(tc.limits.max_work_units / ((body + 1) * tc.view.n_layers * layer_fraction)) - picks_rows
        rows_scanned = max(1, min(DEFAULT_SCAN_TOKENS // body, by_time, by_work, store.n_rows(body)))
    else:
        tokens = check_range(tokens, body, 1 << 40, "tokens")
        rows_scanned = min(tokens // body, store.n_rows(body))
    work = Work(
        rows=rows_scanned + picks_rows,
        tokens_per_row=body + 1,
        layer_fraction=layer_fraction,
        cells=top_k + 5,
        result_chars=1500 + (top_k + 5) * (2 * window + 1) * _CHARS_PER_TOKEN,
    )
    cost = estimate(tc, work)
    enforce(tc, cost, "fewer tokens=..., a smaller top_k or window, or build an index (build_exemplar_index)")
    label = unit.label(column)
    if dry_run:
        return FeatureExemplarsResult(
            unit=label,
            corpus=documents.name,
            source="index" if index is not None else "scan",
            tokens_read=0,
            context=body,
            max_activation=None,
            density=None,
            top=[],
            quantiles=[],
            histogram=None,
            note="",
            meaning="dry run: the cost estimate only; call again without dry_run to compute.",
            cost=cost,
            dry_run=True,
        )
    if index is not None:
        stats: ColumnStats = index.column(column)
        note_parts.append(
            f"from the exemplar index over {stats.n_tokens:,} tokens of {documents.name} ({index.describe()})."
        )
    else:
        rows = store.rows(body, rows_scanned)
        running = scan(tc, unit, store, rows, body, top_k, N_SAMPLES, label=f"{label}:", columns=[column])
        stats = running.column(0)
        note_parts.append(
            f"no exemplar index for this unit and corpus: scanned a sample of {stats.n_tokens:,} tokens "
            f"({len(rows)} contexts of {body}, evenly spread over {store.n_train:,} training tokens of "
            f"{documents.name}); the top contexts are the top of this sample only. build_exemplar_index (or `lens-mcp index`) builds an index "
            "over the whole corpus (SAE features and MLP neurons)."
        )
    top_picks = [(i, v, None) for v, i in zip(stats.top_values, stats.top_index, strict=True)][:top_k]
    quantile_list = quantile_picks(stats, {i for i, _, _ in top_picks})
    before, after = (2 * window, 0) if unit.kind == "head" else (window, window)
    contexts = read_contexts(tc, unit, column, store, body, top_picks + quantile_list, before, after)
    promoted, suppressed = [], []
    direction = write_direction(tc, unit, column)
    if direction is not None:
        promoted, suppressed = direction_effects(tc, direction, N_EFFECTS)
    else:
        note_parts.append("A head writes what it reads (its OV circuit), so no fixed promoted tokens are listed.")
    if store.rebuilt_because:
        note_parts.append(f"The corpus token store was rebuilt ({store.rebuilt_because}).")
    peak = stats.top_values[0] if stats.top_values else None
    density = stats.n_active / stats.n_tokens if stats.n_tokens else None
    if unit.kind == "head":
        meaning = (
            "activation = the most attention the marked query token puts on one non-BOS token (0..1); each context's "
            "values are that query's attention to each token (attends_to: where it attends most); density = fraction of "
            f"query tokens with more than {0.5} on one non-BOS token."
        )
    else:
        meaning = (
            "activation = the unit's value at each token (SAE: feature activation, 0 = off; neuron: hook_post); "
            "`marked` is the max token of each context; density = fraction of corpus tokens where it is > 0."
        )
    return FeatureExemplarsResult(
        unit=label,
        corpus=documents.name,
        source="index" if index is not None else "scan",
        tokens_read=stats.n_tokens,
        context=body,
        max_activation=peak if peak is not None and math.isfinite(peak) else None,
        density=density,
        top=contexts[: len(top_picks)],
        quantiles=contexts[len(top_picks) :],
        histogram=histogram(stats),
        promoted=promoted,
        suppressed=suppressed,
        note=" ".join(note_parts),
        meaning=meaning,
        cost=cost,
    )
