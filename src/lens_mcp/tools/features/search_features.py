"""search_features: the SAE features or MLP neurons that fire most on a text, each with its exemplars in one
line, from "where is X represented" to candidate units in one call."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.features import FeatureMatch, SearchFeaturesResult
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, single_pass_cost
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_top_k, resolve_layer, resolve_position
from lens_mcp.tools.features._corpus import TokenStore, read_corpus, token_store
from lens_mcp.tools.features._exemplars import Unit, hook_activation, unit_group
from lens_mcp.tools.features._index import Index, any_index, find_index
from lens_mcp.tools.features._sae import body_start, get_sae

CONTEXT = 64
"""The context length of the index searched for summaries (build_exemplar_index's default)."""
SUMMARY_WINDOW = 6


def summary(tc: ToolContext, index: Index, store: TokenStore, unit: int) -> str | None:
    stats = index.column(unit)
    if not stats.top_values or stats.top_values[0] <= 0:
        return "never active in the indexed corpus"
    row, position = divmod(int(stats.top_index[0]), CONTEXT)
    ids = store.context(row, CONTEXT)
    lo, hi = max(0, position - SUMMARY_WINDOW), min(CONTEXT, position + 3)
    strings = token_strings(tc, torch.from_numpy(ids[lo:hi]))
    marked = "".join(f"[[{s}]]" if lo + i == position else s for i, s in enumerate(strings))
    density = stats.n_active / stats.n_tokens if stats.n_tokens else 0.0
    return (
        f"max {stats.top_values[0]:.3g} on {strings[position - lo]!r} in {' '.join(marked.split())!r}; "
        f"active on {density:.2%} of tokens"
    )


def search_features(
    tc: ToolContext,
    text: Annotated[str, Field(description="The text to search with, e.g. 'The Eiffel Tower is in Paris'")],
    position: Annotated[
        int | None, Field(description="Position to read (BOS is 0; -1 = last); omit for each unit's max over the text")
    ] = None,
    layer: Annotated[
        int | None, Field(description="Search this MLP layer's neurons instead of the SAE's features")
    ] = None,
    hook: Annotated[str | None, Field(description="Hook of the SAE (omit when one SAE is loaded)")] = None,
    corpus: Annotated[
        str | None, Field(description="Corpus whose exemplar index gives the summaries (default python-stdlib)")
    ] = None,
    top_k: Annotated[int, Field(description="Units to list")] = 10,
) -> SearchFeaturesResult:
    """The SAE features (or, with layer=, the MLP neurons) that fire most on a text: at `position`, or each at its
    own max over the text's non-BOS tokens. Each comes with a one-line summary of its exemplars (its max activation
    over the corpus, that token in its context, and its density) when an exemplar index exists for that corpus
    (build_exemplar_index); feature_exemplars gives the full picture for one of them. One forward pass, stopped
    after the hook's block."""
    if layer is not None:
        unit: Unit = unit_group(tc, "neuron", resolve_layer(layer, tc.view.n_layers))
    else:
        unit = unit_group(tc, "sae", 0, get_sae(tc, hook))
    top_k = min(check_top_k(top_k, tc.limits.max_top_k), unit.width)
    tokens = encode(tc, text, "text")
    n_tokens = int(tokens.shape[-1])
    pos = None if position is None else resolve_position(position, n_tokens)
    cost = single_pass_cost(
        tc,
        Work(rows=1, tokens_per_row=n_tokens, layer_fraction=(unit.layer + 1) / tc.view.n_layers, cells=top_k),
    )
    enforce(tc, cost, "a smaller top_k")
    start = body_start(tc, tokens)
    with torch.no_grad():
        acts = unit.activations(hook_activation(tc, unit, tokens), 0)[0].float()  # [positions, width], BOS kept
    if pos is not None:
        values, where = acts[pos], torch.full((unit.width,), pos)
    else:
        body = acts[start:] if n_tokens > start else acts
        values, where = body.max(dim=0)
        where = where + (start if n_tokens > start else 0)
    top_values, top_units = values.topk(top_k)
    strings = token_strings(tc, tokens[0])
    note = ""
    index = store = None
    try:
        if not any_index(tc, unit):
            raise LensError("no exemplar index was built for these units")
        store = token_store(tc.view.tokenizer, tc.view.d_vocab, read_corpus(corpus, tc.load_policy), tc.progress)
        index, damaged = find_index(tc, unit, store, min(CONTEXT, max(2, tc.view.n_ctx - 1)))
        note = damaged or ""
    except LensError as exc:  # a summary is a bonus: the search still answers
        note = f"no summaries: {exc}; build_exemplar_index gives each match a summary."
    if index is None and not note:
        note = "no exemplar index for these units and this corpus: build_exemplar_index gives each match a summary."
    matches = [
        FeatureMatch(
            unit=int(u),
            activation=float(v),
            position=int(where[u]),
            token=strings[int(where[u])],
            summary=summary(tc, index, store, int(u)) if index is not None and store is not None else None,
        )
        for v, u in zip(top_values.tolist(), top_units.tolist(), strict=True)
    ]
    label = f"every feature of the SAE on {unit.hook}" if unit.kind == "sae" else f"neurons of MLP layer {unit.layer}"
    return SearchFeaturesResult(
        unit=label,
        tokens=strings,
        position=pos,
        matches=matches,
        index=None if index is None else str(index.folder),
        note=note,
        meaning=(
            "activation = how strongly each unit fires on the text (SAE feature activation, 0 = off; neuron: "
            "hook_post), at `position` or at its own max; summary = what it fires on most in the indexed corpus."
        ),
    )
