"""edge_attribution and circuit_faithfulness on the default model (SmolLM2-135M, grouped-query attention): the
key/value receivers are named per key/value head, verified head -> head edges equal path_patch's exact values,
and the whole graph kept recovers exactly 1."""

from __future__ import annotations

import pytest

from lens_mcp.tools.causal.path_patch import run_path_patch
from lens_mcp.tools.circuits._engine import build_graph
from lens_mcp.tools.circuits._inputs import load_dataset
from lens_mcp.tools.circuits.circuit_faithfulness import circuit_faithfulness
from lens_mcp.tools.circuits.edge_attribution import edge_attribution, verify_edges
from lens_mcp.tools.core.context import ToolContext

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Anna and David went to the store, Paul gave a drink to"
ANSWER, WRONG = " Mary", " John"

pytestmark = pytest.mark.slow


def test_default_model_edges_and_path_patch(smol: ToolContext) -> None:
    result = edge_attribution(smol, CLEAN, CORRUPTED, ANSWER, WRONG, top_k=10, verify_top=3)
    graph = build_graph(smol)
    assert graph.gqa and result.kv_heads is not None and "kv" in result.kv_heads
    assert result.n_edges == graph.n_edges
    assert result.clean_metric > result.corrupted_metric
    data = load_dataset(smol, None, CLEAN, CORRUPTED, ANSWER, WRONG, "logit_diff", True)
    corrupted_metric = result.corrupted_metric
    for sender, receivers, receiver_input, name in (
        ((17, 4), [[20, 0]], "v", "L17H4->L20.kv0.v"),
        ((19, 2), [[23, 3]], "q", "L19H2->L23H3.q"),
        ((23, 0), "logits", "q", "L23H0->logits"),
    ):
        run = run_path_patch(smol, CLEAN, CORRUPTED, ANSWER, WRONG, [list(sender)], receivers, receiver_input)
        edge = graph.parse_edge(name, "test", None)
        exact = float(run.values.flatten()[0])
        ours = float(verify_edges(smol, graph, data, [edge])[0])
        assert ours == pytest.approx(exact - corrupted_metric, abs=2e-3), name
    curve = circuit_faithfulness(smol, CLEAN, CORRUPTED, ANSWER, WRONG, circuit="last", k=[10, 100, graph.n_edges])
    assert curve.curve[-1].recovered == pytest.approx(1.0, abs=1e-3)
    assert curve.ablated_metric == pytest.approx(corrupted_metric, abs=2e-3)
