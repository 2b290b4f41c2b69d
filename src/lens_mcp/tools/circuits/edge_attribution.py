"""edge_attribution: a score for every edge of the residual-stream graph (EAP or EAP-IG), its top edges checked
by exact single-edge patching, and the full ranking stored for circuit_faithfulness."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Literal

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.circuits import EdgeAttributionResult, EdgeScore, NodeScore, VerifiedEdge
from lens_mcp.tools.circuits._attribute import attribute, row_bytes
from lens_mcp.tools.circuits._engine import (
    blended_slowdown,
    build_graph,
    edge_run,
    edited_slowdown,
    gradient_slowdown,
    writer_states,
)
from lens_mcp.tools.circuits._graph import Graph
from lens_mcp.tools.circuits._inputs import Dataset, load_dataset
from lens_mcp.tools.circuits._store import LAST, Stored, store
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate, row_memory
from lens_mcp.tools.core.metrics import MetricName
from lens_mcp.tools.core.pairs import PairsArgument
from lens_mcp.tools.core.validation import check_range, check_top_k

MAX_TOP_K = 200
MAX_VERIFY = 50
MAX_IG_STEPS = 64


def verify_edges(
    tc: ToolContext, graph: Graph, data: Dataset, edges: list[tuple[int, int, int | None]]
) -> torch.Tensor:
    """Exact effect per edge, mean over pairs: the corrupted run with only that edge carrying the clean writer's
    output (what path_patch computes for a head -> head or head -> logits edge), minus the corrupted metric."""
    effects = torch.zeros(len(edges))
    if not edges:
        return effects
    by_position = edges[0][2] is not None
    for tokens, metric in zip(data.tokens, data.metrics, strict=True):
        clean = writer_states(tc, graph, tokens[:1]).writers
        n = int(tokens.shape[-1])
        shape = (len(edges) + 1, *((n,) if by_position else ()), len(graph.writers), len(graph.readers))
        mask = torch.zeros(shape, dtype=torch.bool)
        for row, (w, r, p) in enumerate(edges, start=1):
            if by_position:
                mask[row, p, w, r] = True
            else:
                mask[row, w, r] = True
        rows = tokens[1:2].expand(len(edges) + 1, -1)
        values = edge_run(tc, graph, rows, mask.to(tokens.device), clean, metric).cpu()
        effects += values[1:] - values[0]
    return effects / len(data.tokens)


def edge_attribution(
    tc: ToolContext,
    clean_prompt: Annotated[str | None, Field(description="The clean prompt (or pass pairs)")] = None,
    corrupted_prompt: Annotated[
        str | None, Field(description="The corrupted prompt, same token length as the clean one")
    ] = None,
    answer: Annotated[str | None, Field(description="The clean answer, one token (e.g. ' Mary')")] = None,
    wrong_answer: Annotated[str | None, Field(description="The competing answer, one token (e.g. ' John')")] = None,
    metric: Annotated[
        MetricName, Field(description="logit_diff, prob or logprob of the answer, at the last position")
    ] = "logit_diff",
    pairs: PairsArgument = None,
    method: Annotated[
        Literal["eap", "eap-ig"],
        Field(description="eap: one gradient at the corrupted run; eap-ig: integrated gradients (Hanna et al. 2024)"),
    ] = "eap",
    ig_steps: Annotated[int, Field(description="eap-ig: interpolation steps (1 reproduces eap)")] = 5,
    edges: Annotated[
        Literal["component", "position"],
        Field(description="component: each edge summed over positions; position: one edge per position"),
    ] = "component",
    top_k: Annotated[int, Field(description="How many edges (and nodes) to list, highest |score| first")] = 20,
    verify_top: Annotated[int, Field(description="Patch this many of the top edges exactly and compare")] = 5,
    name: Annotated[
        str | None, Field(description="Also store the full ranking under this name (it is always stored as 'last')")
    ] = None,
    dry_run: Annotated[bool, Field(description="Only estimate the cost; compute nothing")] = False,
) -> EdgeAttributionResult:
    """Edge attribution patching: score every edge writer -> reader of the residual-stream graph. Writers: 'embed',
    each head's output 'L<l>H<h>', each MLP's output 'MLP<l>'. Readers: each head's query input 'L<l>H<h>.q', key
    and value inputs ('L<l>H<h>.k'/'.v'; under grouped-query attention per key/value head, 'L<l>.kv<g>.k'/'.v',
    feeding a group of query heads), each MLP's input 'MLP<l>', and 'logits'. score = (writer's clean output -
    its corrupted output) . gradient of the metric at the reader's input on the corrupted run (eap), or averaged
    over ig_steps inputs interpolated from corrupted to clean embeddings (eap-ig, k/ig_steps for k = 0..ig_steps-1:
    ig_steps=1 is eap). Positive: the edge moves the metric toward its clean value. Mean over pairs. The top
    verify_top edges are also patched exactly (the corrupted run with that edge alone carrying the clean writer's
    output). The full ranking is stored as 'last' (and under name) for circuit_faithfulness(circuit=..., k=[...]).
    The cost is estimated first (dry_run=true: only the estimate)."""
    graph = build_graph(tc)
    if method not in ("eap", "eap-ig"):
        raise LensError(f"method={method!r} is not 'eap' or 'eap-ig'.")
    if edges not in ("component", "position"):
        raise LensError(f"edges={edges!r} is not 'component' or 'position'.")
    steps = 1 if method == "eap" else check_range(ig_steps, 1, MAX_IG_STEPS, "ig_steps")
    top_k = check_top_k(top_k, MAX_TOP_K)
    verify_top = check_range(verify_top, 0, min(MAX_VERIFY, top_k), "verify_top", " (at most top_k)")
    by_position = edges == "position"
    data = load_dataset(tc, pairs, clean_prompt, corrupted_prompt, answer, wrong_answer, metric, by_position)
    n_pairs = len(data.tokens)
    n_edges = graph.n_edges * (data.n_tokens if by_position else 1)
    verify_rows = verify_top + 2 if verify_top else 0
    edge_bytes = row_bytes(graph, data.mean_tokens, tc.view.d_model)  # one pair's writer states and reader gradients
    probing = time.perf_counter()
    edited, gradient = edited_slowdown(tc, graph), gradient_slowdown(tc, graph)
    slowdown = blended_slowdown([(n_pairs * (1 + verify_rows), edited), (3 * n_pairs * steps, gradient)])
    cost = estimate(
        tc,
        Work(
            rows=n_pairs * (1 + steps + verify_rows),
            tokens_per_row=data.mean_tokens,
            backward_rows=n_pairs * steps,
            cells=n_edges,
            result_chars=1500 + 70 * top_k * 2 + 200 * verify_top,
            slowdown=slowdown,
            row_bytes=row_memory(tc, data.mean_tokens, backward=True) + edge_bytes,
            stored_bytes=edge_bytes,
            spent_seconds=time.perf_counter() - probing,
        ),
    )
    enforce(tc, cost, "fewer pairs, fewer ig_steps, shorter prompts, or edges='component'")
    result = dict(
        method=method,
        ig_steps=steps,
        edges=edges,
        metric=data.description,
        n_pairs=n_pairs,
        n_edges=n_edges,
        kv_heads=graph.kv_note(),
        cost=cost,
    )
    if dry_run:
        return EdgeAttributionResult(**result, clean_metric=0.0, corrupted_metric=0.0, dry_run=True)  # type: ignore[arg-type]

    counter = ProgressCounter(tc.progress, n_pairs * steps + verify_top, "passes")
    scores = attribute(tc, graph, data.tokens, list(data.metrics), steps, by_position, counter)
    values = scores.values.cpu()
    flat = values.flatten()
    valid = graph.valid()
    valid_flat = (valid.expand(values.shape[0], -1, -1) if by_position else valid).flatten()
    order = torch.argsort(flat.abs() * valid_flat - (~valid_flat).float(), descending=True)[: valid_flat.sum()]
    n_w, n_r = len(graph.writers), len(graph.readers)

    def unravel(index: int) -> tuple[int, int, int | None]:
        if by_position:
            p, rest = divmod(index, n_w * n_r)
            return rest // n_r, rest % n_r, p
        return index // n_r, index % n_r, None

    ranked = [unravel(i) for i in order.tolist()]  # plain ints: one conversion, not one per edge
    ranked_scores = flat[order].tolist()
    item = Stored("ranking", ranked, ranked_scores, data.n_tokens if by_position else None)
    stored = [LAST]
    store(tc, LAST, item)
    if name is not None:
        store(tc, name, replace(item))
        stored.append(name)
    top = [EdgeScore(edge=graph.edge_name(*e), score=s) for e, s in zip(ranked[:top_k], ranked_scores, strict=False)]
    node_totals = values.sum(dim=(0, 2) if by_position else 1)
    node_order = torch.argsort(node_totals.abs(), descending=True)[:top_k]
    nodes = [NodeScore(node=graph.writers[int(i)], score=float(node_totals[int(i)])) for i in node_order]
    verified = []
    if verify_top:
        exact = verify_edges(tc, graph, data, ranked[:verify_top])
        counter.advance(verify_top)
        for edge, estimate_value, exact_value in zip(ranked[:verify_top], ranked_scores, exact.tolist(), strict=False):
            ratio = abs(estimate_value) / max(abs(exact_value), 1e-12)
            verified.append(
                VerifiedEdge(
                    edge=graph.edge_name(*edge),
                    estimate=estimate_value,
                    exact=exact_value,
                    wrong_sign=estimate_value * exact_value < 0,
                    magnitude_off=not 0.5 <= ratio <= 2.0,
                )
            )
    return EdgeAttributionResult(
        **result,  # type: ignore[arg-type]
        clean_metric=float(scores.clean_metric.mean()),
        corrupted_metric=float(scores.corrupted_metric.mean()),
        top_edges=top,
        top_nodes=nodes,
        verified=verified,
        stored_as=stored,
    )
