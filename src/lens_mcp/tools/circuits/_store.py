"""Edge rankings and circuits kept by name on the loaded model (like steering vectors), with their last
faithfulness, so an agent can refine a circuit and evaluate it again."""

from __future__ import annotations

from dataclasses import dataclass

from lens_mcp.errors import LensError
from lens_mcp.tools.circuits._graph import Graph
from lens_mcp.tools.core.context import ToolContext

MAX_STORED = 32
LAST = "last"
"""The name every edge_attribution call also stores its ranking under."""

Edge = tuple[int, int, int | None]
"""(writer, reader, position or None)"""


@dataclass
class Stored:
    kind: str
    """'ranking' (edges by |score|, highest first) or 'circuit'"""
    edges: list[Edge]
    scores: list[float] | None
    n_tokens: int | None
    """Position edges: the prompt length they were found on (None: component edges)."""
    last_recovered: float | None = None
    last_k: int | None = None

    @property
    def by_position(self) -> bool:
        return self.n_tokens is not None

    def names(self, graph: Graph) -> list[str]:
        return [graph.edge_name(w, r, p) for w, r, p in self.edges]


def store(tc: ToolContext, name: str, item: Stored) -> None:
    circuits = tc.model.circuits
    if not name or len(name) > 64:
        raise LensError("name: give 1 to 64 characters.")
    if name not in circuits and len(circuits) >= MAX_STORED:
        raise LensError(
            f"name: {MAX_STORED} circuits are stored already; reuse a name, or remove one with circuits(remove=[...])."
        )
    circuits[name] = item


def lookup(tc: ToolContext, name: str, arg: str = "circuit") -> Stored:
    item = tc.model.circuits.get(name)
    if item is None:
        known = ", ".join(sorted(tc.model.circuits)) or "none yet"
        raise LensError(
            f"{arg}={name!r} is not stored (stored: {known}); pass a stored name: edge_attribution stores its "
            f"ranking as '{LAST}' and under name=..., circuit_faithfulness under name=...."
        )
    return item
