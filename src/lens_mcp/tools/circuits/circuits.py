"""circuits: the edge rankings and circuits stored on the loaded model, with their last faithfulness."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.circuits import CircuitsResult, StoredCircuit
from lens_mcp.tools.circuits._store import lookup
from lens_mcp.tools.core.context import ToolContext


def circuits(
    tc: ToolContext,
    remove: Annotated[list[str] | None, Field(description="Names to delete")] = None,
) -> CircuitsResult:
    """List the edge rankings (from edge_attribution) and circuits (from circuit_faithfulness(name=...)) stored on
    this model, with their size and last measured faithfulness; remove=[...] deletes some."""
    removed = []
    if remove is not None:
        if not isinstance(remove, (list, tuple)):
            raise LensError("remove: give a list of stored names.")
        for name in remove:
            lookup(tc, str(name), "remove")
            del tc.model.circuits[str(name)]
            removed.append(str(name))
    listed = [
        StoredCircuit(
            name=name,
            kind=item.kind,
            edges="position" if item.by_position else "component",
            size=len(item.edges),
            last_recovered=item.last_recovered,
            last_k=item.last_k,
        )
        for name, item in tc.model.circuits.items()
    ]
    return CircuitsResult(circuits=listed, removed=removed)
