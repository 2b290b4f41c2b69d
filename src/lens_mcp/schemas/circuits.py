"""Results of edge_attribution, circuit_faithfulness and circuits."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lens_mcp.schemas.common import Cost, Result, Rounded
from lens_mcp.schemas.figures import GraphEdge, LayeredGraph, LineChart, edge_parts

MAX_DRAWN_EDGES = 60
"""A circuit picture stays readable up to about this many edges; beyond it the top ones by |score| are drawn."""


class EdgeScore(BaseModel):
    edge: str = Field(description="'writer->reader' ('@p': at position p), e.g. 'L0H1->L1H2.q', 'MLP3->logits'")
    score: Rounded = Field(
        description="Estimated change of the metric from patching this edge alone, corrupted to clean"
    )


class NodeScore(BaseModel):
    node: str = Field(description="A writer: 'embed', 'L<l>H<h>' or 'MLP<l>'")
    score: Rounded = Field(description="Sum of the node's outgoing edge scores (its node attribution score)")


class VerifiedEdge(BaseModel):
    edge: str
    estimate: Rounded = Field(description="The attribution score")
    exact: Rounded = Field(
        description="Exact effect: the metric of the corrupted run with only this edge carrying the clean writer's "
        "output, minus the corrupted metric (mean over pairs)"
    )
    wrong_sign: bool = Field(description="Estimate and exact effect have opposite signs")
    magnitude_off: bool = Field(description="The estimate is off by more than a factor 2 (either way)")


class EdgeAttributionResult(Result):
    method: str = Field(description="'eap' or 'eap-ig'")
    ig_steps: int = Field(description="Integration steps (1 for eap)")
    edges: str = Field(description="'component' (summed over positions) or 'position'")
    metric: str = Field(description="What the scores are in units of")
    n_pairs: int
    n_edges: int = Field(description="Edges in the graph (position edges: per position, times positions)")
    clean_metric: Rounded = Field(description="Mean metric on the clean prompts")
    corrupted_metric: Rounded = Field(description="Mean metric on the corrupted prompts")
    top_edges: list[EdgeScore] = Field(default_factory=list, description="Highest |score| first")
    top_nodes: list[NodeScore] = Field(default_factory=list, description="Writers, highest |score| first")
    verified: list[VerifiedEdge] = Field(default_factory=list, description="The top edges patched exactly")
    kv_heads: str | None = Field(
        default=None, description="How key/value inputs are named under grouped-query attention"
    )
    stored_as: list[str] = Field(default_factory=list, description="Names the full ranking is stored under")
    cost: Cost
    dry_run: bool = False
    notes: list[str] = Field(default_factory=list)

    def explain(self) -> str:
        return (
            f"score = estimated change of {self.metric} when one edge alone carries the clean writer's output into the "
            "corrupted run (positive: the edge moves the metric toward clean); mean over pairs"
        )

    def figures(self) -> list[LayeredGraph]:
        """The top edges as a layered graph (at most MAX_DRAWN_EDGES of them)."""
        drawn = [GraphEdge(*edge_parts(item.edge), item.score) for item in self.top_edges[:MAX_DRAWN_EDGES]]
        notes = []
        if self.edges == "position":
            notes.append("position edges: an edge drawn once per position it appears at")
        if self.kv_heads:
            notes.append("L<l>.kv<g>: a key/value head, read by a group of query heads")
        return [
            LayeredGraph(
                name="circuit",
                title=f"edge_attribution ({self.method}), top edges of {self.n_edges:,}",
                edges=drawn,
                total=len(self.top_edges),
                units=f"score ({self.metric})",
                notes=notes,
            )
        ]


class CurvePoint(BaseModel):
    k: int = Field(description="Edges in the circuit")
    recovered: Rounded = Field(description="(circuit - ablated_all) / (full - ablated_all), pooled over pairs")
    complement: Rounded = Field(description="The same with only the circuit's edges ablated")
    metric: Rounded = Field(description="Mean metric with every edge outside the circuit ablated")


class CircuitFaithfulnessResult(Result):
    circuit: str = Field(description="What was evaluated: the stored name, 'edges', or 'nodes'")
    ablation: str
    edges: str = Field(description="'component' or 'position'")
    n_pairs: int
    n_edges: int = Field(description="Edges in the graph")
    full_metric: Rounded = Field(description="Mean metric of the unablated model on the clean prompts")
    ablated_metric: Rounded = Field(description="Mean metric with every edge ablated")
    curve: list[CurvePoint] = Field(default_factory=list)
    target: Rounded | None = None
    smallest_k: int | None = Field(default=None, description="Smallest k whose recovered reaches target (null: none)")
    stored_as: str | None = None
    cost: Cost
    dry_run: bool = False
    notes: list[str] = Field(default_factory=list)

    def explain(self) -> str:
        return (
            "recovered: share of the metric's gap (full model - everything ablated) that the circuit alone keeps; 1 = "
            "all of it, 0 = none; complement: the same with the circuit itself ablated"
        )

    def figures(self) -> list[LineChart]:
        """The faithfulness curve: recovered (and complement) against k, the target line, the smallest k marked."""
        if not self.curve:
            return []
        ks = [float(point.k) for point in self.curve]
        mark = None
        if self.smallest_k is not None:
            reached = next(p for p in self.curve if p.k == self.smallest_k)
            mark = (float(reached.k), float(reached.recovered), f"smallest k = {reached.k}")
        target = None if self.target is None else (float(self.target), f"target {self.target:g}")
        return [
            LineChart(
                name="faithfulness",
                title=f"circuit_faithfulness of {self.circuit!r} ({self.ablation} ablation, {self.n_pairs} pairs)",
                x=ks,
                series=[
                    ("recovered (circuit kept)", [float(p.recovered) for p in self.curve]),
                    ("complement (circuit ablated)", [float(p.complement) for p in self.curve]),
                ],
                x_axis=f"k: edges in the circuit (of {self.n_edges:,})",
                y_axis="recovered: (circuit - ablated) / (full - ablated)",
                log_x=len(ks) > 2 and ks[-1] >= 10 * ks[0],
                target=target,
                mark=mark,
                notes=[] if mark is not None or target is None else [f"no k reaches the target {self.target:g}"],
            )
        ]


class StoredCircuit(BaseModel):
    name: str
    kind: str = Field(description="'ranking' (scored edges, use with k=[...]) or 'circuit' (an edge set)")
    edges: str = Field(description="'component' or 'position'")
    size: int = Field(description="Edges stored")
    last_recovered: Rounded | None = Field(default=None, description="The last faithfulness measured on it")
    last_k: int | None = None


class CircuitsResult(Result):
    circuits: list[StoredCircuit]
    removed: list[str] = Field(default_factory=list)

    def explain(self) -> str:
        return "circuits and rankings stored on this model; last_recovered is the last circuit_faithfulness value"
