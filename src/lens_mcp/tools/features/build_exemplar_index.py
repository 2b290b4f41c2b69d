"""build_exemplar_index: the exemplar index of every feature of an SAE, or every neuron of an MLP layer, over a
corpus, built once, resumable, and read by feature_exemplars."""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.features import ExemplarIndexResult
from lens_mcp.tools.core.arguments import DryRun
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, estimate, seconds_per_row
from lens_mcp.tools.core.validation import check_range, resolve_layer
from lens_mcp.tools.features._corpus import read_corpus, token_store
from lens_mcp.tools.features._exemplars import scan, unit_group
from lens_mcp.tools.features._index import Checkpointer, StopBuild, finish, prepare_build
from lens_mcp.tools.features._sae import get_sae

INDEX_TOP_K = 20
INDEX_SAMPLES = 64
DEFAULT_INDEX_TOKENS = 1_000_000
DEFAULT_CONTEXT = 64


def build_exemplar_index(
    tc: ToolContext,
    layer: Annotated[
        int | None, Field(description="Index the neurons of this MLP layer; omit to index the SAE's features")
    ] = None,
    hook: Annotated[str | None, Field(description="Hook of the SAE (omit when one SAE is loaded)")] = None,
    corpus: Annotated[
        str | None,
        Field(description="Builtin (python-stdlib, kjv-bible), a .txt/.jsonl file, or a HF dataset id (online)"),
    ] = None,
    tokens: Annotated[
        int, Field(description="Corpus tokens to index (evenly spread over the training split; all if fewer)")
    ] = DEFAULT_INDEX_TOKENS,
    context: Annotated[int | None, Field(description="Tokens per corpus context, BOS not counted (default 64)")] = None,
    rebuild: Annotated[bool, Field(description="Start over, replacing an index built for another model/SAE")] = False,
    dry_run: DryRun = False,
) -> ExemplarIndexResult:
    """Build the exemplar index feature_exemplars reads: for every feature of an SAE (or every neuron of MLP
    `layer`), the top 20 activating tokens, the count of active tokens and a uniform sample of them over `tokens`
    corpus tokens, streamed through the model with a running top-k per unit. Cached on disk, keyed by the model's
    weights fingerprint, the SAE's hash and the corpus; an index for another model or SAE is refused (naming both)
    unless rebuild=true. Resumable: a call runs within the server's time cap, saves a checkpoint and returns
    complete=false; call again (same arguments) to continue. `lens-mcp index` runs it to the end from a shell."""
    if layer is not None:
        unit = unit_group(tc, "neuron", resolve_layer(layer, tc.view.n_layers))
    else:
        unit = unit_group(tc, "sae", 0, get_sae(tc, hook))
    longest = max(2, tc.view.n_ctx - 1)
    body = min(DEFAULT_CONTEXT, longest) if context is None else check_range(context, 2, longest, "context")
    tokens = check_range(tokens, body, 1 << 40, "tokens")
    documents = read_corpus(corpus, tc.load_policy)
    store = token_store(tc.view.tokenizer, tc.view.d_vocab, documents, tc.progress)
    if store.n_rows(body) == 0:
        raise LensError(f"corpus {documents.name!r} is shorter than one context of {body} tokens; pass a larger one.")
    state = prepare_build(tc, unit, store, body, tokens // body, INDEX_TOP_K, INDEX_SAMPLES, rebuild)
    remaining = len(state.rows) - state.resumed_from
    per_row = seconds_per_row(tc, body + 1, unit.layer + 1)
    by_time = max(1, int(0.8 * tc.limits.max_call_seconds / per_row))
    by_work = max(1, int(tc.limits.max_work_units / ((body + 1) * (unit.layer + 1))))
    this_call = min(remaining, by_time, by_work)
    cost = estimate(
        tc,
        Work(rows=this_call, tokens_per_row=body + 1, layer_fraction=(unit.layer + 1) / tc.view.n_layers, cells=1),
    )
    label = f"all neurons of MLP layer {unit.layer}" if unit.kind == "neuron" else f"every feature of {unit.hook}"
    common = {
        "unit": label,
        "corpus": documents.name,
        "folder": str(state.folder),
        "context": body,
        "contexts_total": len(state.rows),
        "top_k": INDEX_TOP_K,
        "cost": cost,
    }
    if dry_run or remaining == 0:
        done = state.meta.get("complete", False) and remaining == 0
        return ExemplarIndexResult(
            **common,
            contexts_done=state.resumed_from,
            tokens_indexed=int(state.meta.get("n_tokens", 0)),
            complete=bool(done),
            resumed_from=state.resumed_from,
            seconds=0.0,
            tokens_per_second=None,
            meaning="dry run: the cost of this call only." if dry_run else "the index is already complete.",
            note=state.note + ("" if done or dry_run else "call again to continue."),
            dry_run=dry_run,
        )
    deadline = time.monotonic() + 0.8 * tc.limits.max_call_seconds
    checkpoint = Checkpointer(state, state.resumed_from, deadline)
    start = time.perf_counter()
    tokens_before = state.stats.n_tokens
    complete = True
    try:
        scan(
            tc,
            unit,
            store,
            state.rows[state.resumed_from : state.resumed_from + this_call],
            body,
            INDEX_TOP_K,
            INDEX_SAMPLES,
            stats=state.stats,
            label="indexed",
            on_batch=checkpoint,
        )
        rows_done = state.resumed_from + this_call
        if rows_done >= len(state.rows):
            finish(state)
        else:
            checkpoint.save(state.stats, rows_done)
            complete = False
    except StopBuild as stop:
        rows_done, complete = stop.rows_done, False
    seconds = time.perf_counter() - start
    new_tokens = state.stats.n_tokens - tokens_before
    return ExemplarIndexResult(
        **common,
        contexts_done=rows_done,
        tokens_indexed=state.stats.n_tokens,
        complete=complete,
        resumed_from=state.resumed_from,
        seconds=seconds,
        tokens_per_second=new_tokens / seconds if seconds > 0 else None,
        meaning=(
            "complete: feature_exemplars now reads this index for these units and this corpus."
            if complete
            else f"partial: {rows_done}/{len(state.rows)} contexts; call again with the same arguments to resume."
        ),
        note=state.note,
    )
