"""circuit_faithfulness: how much of a behaviour a circuit carries, every edge outside it ablated exactly; a
curve over circuit sizes in one batched call."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.circuits import CircuitFaithfulnessResult, CurvePoint
from lens_mcp.tools.circuits._engine import build_graph, edited_slowdown
from lens_mcp.tools.circuits._faithful import evaluate, kept_masks
from lens_mcp.tools.circuits._graph import Graph
from lens_mcp.tools.circuits._inputs import load_dataset
from lens_mcp.tools.circuits._store import Edge, Stored, lookup, store
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate
from lens_mcp.tools.core.metrics import MetricName
from lens_mcp.tools.core.pairs import PairsArgument
from lens_mcp.tools.core.tokens import encode

MAX_SIZES = 32
MAX_REFERENCES = 64


def _parse_edges(graph: Graph, names: object, arg: str, n_tokens: int) -> list[Edge]:
    if not isinstance(names, (list, tuple)) or not names:
        raise LensError(f"{arg}: give a non-empty list of edges, e.g. ['L0H1->L1H2.q', 'L1H2->logits'].")
    by_position = isinstance(names[0], str) and "@" in names[0]
    parsed = [graph.parse_edge(name, f"{arg}[{i}]", n_tokens if by_position else None) for i, name in enumerate(names)]
    return list(dict.fromkeys(parsed))


def _node_edges(graph: Graph, nodes: object) -> list[Edge]:
    """A node circuit: the kept writers' every outgoing edge (the embeddings always kept), so a node outside the
    set has its output replaced everywhere."""
    if not isinstance(nodes, (list, tuple)) or not nodes:
        raise LensError("nodes: give a non-empty list of heads and MLPs, e.g. ['L1H2', 'MLP0'].")
    kept = {0} | {graph.parse_writer(str(node), f"nodes[{i}]") for i, node in enumerate(nodes)}
    return [(w, r, None) for r in range(len(graph.readers)) for w in range(graph.prefix[r]) if w in kept]


def circuit_faithfulness(
    tc: ToolContext,
    clean_prompt: Annotated[str | None, Field(description="The clean prompt (or pass pairs)")] = None,
    corrupted_prompt: Annotated[str | None, Field(description="The corrupted prompt, same token length")] = None,
    answer: Annotated[str | None, Field(description="The clean answer, one token")] = None,
    wrong_answer: Annotated[str | None, Field(description="The competing answer, one token")] = None,
    metric: Annotated[MetricName, Field(description="logit_diff, prob or logprob at the last position")] = "logit_diff",
    pairs: PairsArgument = None,
    circuit: Annotated[
        str | None, Field(description="A stored ranking or circuit ('last': the last edge_attribution ranking)")
    ] = None,
    edges: Annotated[
        list[str] | None, Field(description="Or the circuit's edges, e.g. ['L0H1->L1H2.q', 'L1H2->logits']")
    ] = None,
    nodes: Annotated[
        list[str] | None, Field(description="Or a node circuit: heads and MLPs kept, e.g. ['L1H2', 'MLP0']")
    ] = None,
    k: Annotated[
        list[int] | None,
        Field(
            description="Circuit sizes: the top k edges of the ranking (or the first k edges given), one curve "
            "point each, e.g. [10, 20, 50, 100]; null: the whole circuit"
        ),
    ] = None,
    ablation: Annotated[
        Literal["corrupted", "mean", "resample"],
        Field(
            description="What an ablated edge carries: the corrupted run's writer output; the mean per position "
            "over reference_prompts; or one reference prompt's, drawn per row"
        ),
    ] = "corrupted",
    reference_prompts: Annotated[
        list[str] | None,
        Field(description="mean/resample: prompts of the same token length (default: the corrupted prompts)"),
    ] = None,
    seed: Annotated[int, Field(description="resample: the random seed")] = 0,
    target: Annotated[float, Field(description="Report the smallest k whose recovered reaches this")] = 0.8,
    name: Annotated[
        str | None, Field(description="Store the evaluated circuit (the largest k) under this name")
    ] = None,
    add: Annotated[list[str] | None, Field(description="Edges added to the stored circuit before evaluating")] = None,
    remove: Annotated[list[str] | None, Field(description="Edges removed from it before evaluating")] = None,
    dry_run: Annotated[bool, Field(description="Only estimate the cost; compute nothing")] = False,
) -> CircuitFaithfulnessResult:
    """Circuit faithfulness: ablate every edge outside a circuit (exactly: each reader's input rebuilt with the
    ablated writers' outputs replaced) and measure how much of the metric is left. recovered = (circuit -
    ablated_all) / (full - ablated_all), pooled over pairs: 1 = the circuit alone keeps the whole behaviour, 0 =
    no more than with everything ablated; complement = the same with only the circuit ablated. The circuit is a
    stored ranking's top k (k=[...]: a whole curve, evaluated as rows of batched passes), a list of edges, or a
    set of nodes (heads and MLPs kept, every other writer ablated). add/remove edit a stored circuit; name=
    stores the result. Returns the smallest k reaching `target`."""
    graph = build_graph(tc)
    given = [arg for arg, value in (("circuit", circuit), ("edges", edges), ("nodes", nodes)) if value is not None]
    if len(given) != 1:
        raise LensError(
            "give exactly one of circuit='<stored name>' (e.g. 'last' after edge_attribution), edges=[...] or "
            f"nodes=[...] (got {', '.join(given) or 'none'})."
        )
    if ablation not in ("corrupted", "mean", "resample"):
        raise LensError(f"ablation={ablation!r} is not 'corrupted', 'mean' or 'resample'.")
    data = load_dataset(tc, pairs, clean_prompt, corrupted_prompt, answer, wrong_answer, metric, True)
    n_tokens = data.n_tokens
    base: Stored | None = None
    if circuit is not None:
        base = lookup(tc, circuit)
        if base.n_tokens is not None and base.n_tokens != n_tokens:
            raise LensError(
                f"circuit={circuit!r} holds position edges of {base.n_tokens}-token prompts; these are {n_tokens}."
            )
        ordered = list(base.edges)
        by_position = base.by_position
    elif edges is not None:
        ordered = _parse_edges(graph, edges, "edges", n_tokens)
        by_position = ordered[0][2] is not None
    else:
        ordered = _node_edges(graph, nodes)
        by_position = False
    if add or remove:
        if k is not None:
            raise LensError("add/remove edit a whole circuit; drop k, or store the top k first with name=.")
        removed = set(_parse_edges(graph, remove, "remove", n_tokens)) if remove else set()
        ordered = [e for e in ordered if e not in removed]
        if add:
            extra = _parse_edges(graph, add, "add", n_tokens)
            ordered += [e for e in extra if e not in set(ordered)]
        if any((e[2] is not None) != by_position for e in ordered):
            raise LensError("add: mix of position edges ('@p') and component edges; use the circuit's kind.")
    if not ordered:
        raise LensError("the circuit is empty: keep at least one edge (an empty circuit is 'everything ablated').")
    if k is None:
        sizes = [len(ordered)]
    else:
        if not isinstance(k, (list, tuple)) or not k or len(k) > MAX_SIZES:
            raise LensError(f"k: give 1 to {MAX_SIZES} circuit sizes, e.g. k=[10, 20, 50].")
        sizes = sorted({int(v) for v in k})
        if sizes[0] < 1:
            raise LensError("k: sizes start at 1 (k=0 is everything ablated, reported as ablated_metric).")
        if sizes[-1] > len(ordered):
            raise LensError(
                f"k={sizes[-1]} is larger than the circuit's {len(ordered)} edges (the graph has "
                f"{graph.n_edges * (n_tokens if by_position else 1)}); use k up to {len(ordered)}."
            )
    references = None
    if ablation != "corrupted":
        texts = reference_prompts
        if texts is None:
            references = torch.cat([tokens[1:2] for tokens in data.tokens], dim=0)
        else:
            if not isinstance(texts, (list, tuple)) or not texts or len(texts) > MAX_REFERENCES:
                raise LensError(f"reference_prompts: give 1 to {MAX_REFERENCES} prompts.")
            encoded = [encode(tc, text, f"reference_prompts[{i}]") for i, text in enumerate(texts)]
            for i, row in enumerate(encoded):
                if int(row.shape[-1]) != n_tokens:
                    raise LensError(
                        f"reference_prompts[{i}] is {row.shape[-1]} tokens; the pairs are {n_tokens}: mean and "
                        "resample ablation work position by position."
                    )
            references = torch.cat(encoded, dim=0)
    elif reference_prompts is not None:
        raise LensError("reference_prompts is only used with ablation='mean' or 'resample'.")
    n_rows = len(data.tokens) * (2 + 2 * len(sizes))
    probing = time.perf_counter()
    slowdown = edited_slowdown(tc, graph)
    cost = estimate(
        tc,
        Work(
            rows=n_rows + (len(data.tokens) if references is None else int(references.shape[0])),
            tokens_per_row=n_tokens,
            cells=len(sizes),
            result_chars=900 + 120 * len(sizes),
            slowdown=slowdown,
            spent_seconds=time.perf_counter() - probing,
        ),
    )
    enforce(tc, cost, "fewer sizes k=[...], fewer pairs, or shorter prompts")
    label = circuit if circuit is not None else ("edges" if edges is not None else "nodes")
    head = dict(
        circuit=label,
        ablation=ablation,
        edges="position" if by_position else "component",
        n_pairs=len(data.tokens),
        n_edges=graph.n_edges * (n_tokens if by_position else 1),
        cost=cost,
        target=target,
    )
    if dry_run:
        return CircuitFaithfulnessResult(**head, full_metric=0.0, ablated_metric=0.0, dry_run=True)  # type: ignore[arg-type]
    kept = kept_masks(graph, [ordered[:size] for size in sizes], n_tokens if by_position else None)
    counter = ProgressCounter(tc.progress, n_rows, "rows")
    curve = evaluate(tc, graph, data.tokens, list(data.metrics), kept, ablation, references, seed, counter)
    full, ablated, recovered, complement, circuit_metric = curve.pooled()
    points = [
        CurvePoint(k=size, recovered=r, complement=c, metric=m)
        for size, r, c, m in zip(sizes, recovered, complement, circuit_metric, strict=True)
    ]
    reached = [p.k for p, r in zip(points, recovered, strict=True) if r >= target]
    stored_as = None
    evaluated = ordered[: sizes[-1]]
    if name is not None:
        kind = "ranking" if base is not None and base.kind == "ranking" and k is not None else "circuit"
        scores = base.scores[: sizes[-1]] if base is not None and base.scores and kind == "ranking" else None
        store(
            tc,
            name,
            Stored(kind, evaluated if kind == "circuit" else ordered, scores, n_tokens if by_position else None),
        )
        stored_as = name
    for key in dict.fromkeys(n for n in (circuit, name) if n is not None):
        item = tc.model.circuits.get(key)
        if item is not None:
            item.last_recovered, item.last_k = recovered[-1], sizes[-1]
    return CircuitFaithfulnessResult(
        **head,  # type: ignore[arg-type]
        full_metric=full,
        ablated_metric=ablated,
        curve=points,
        smallest_k=reached[0] if reached else None,
        stored_as=stored_as,
    )
