"""Pictures of the circuit tools on the toy model: edge_attribution's layered graph (the top edges, capped at
MAX_DRAWN_EDGES, the strongest in the darkest shade of its sign) and circuit_faithfulness's curve (every point
drawn, the target line, the smallest k reaching it marked). Each PNG decodes and image=true leaves the structured
JSON unchanged."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from matplotlib.colors import to_rgb
from mcp.server.mcpserver import MCPServer

from lens_mcp.model_host import ModelHost
from lens_mcp.schemas.circuits import MAX_DRAWN_EDGES, CircuitFaithfulnessResult, EdgeAttributionResult
from lens_mcp.schemas.figures import LayeredGraph, LineChart, edge_parts, graph_node
from lens_mcp.server import images
from lens_mcp.server.app import build_server
from tests.image_refs import decode
from tests.mcp_client import call_tool, result_data
from tests.shared import untimed

TOY = {
    "clean_prompt": "w20 w31 w42 w53 w64 w20 w31 w42 w53",
    "corrupted_prompt": "w20 w31 w42 w53 w77 w20 w31 w42 w53",
    "answer": " w64",
    "wrong_answer": " w77",
}


async def drawn(server: MCPServer, tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], list[bytes], str]:
    """The result with image=true (checked equal to the result without), its PNGs and its captions."""
    plain = result_data(await call_tool(server, tool, arguments, mode="legacy"))
    result = await call_tool(server, tool, {**arguments, "image": True}, mode="legacy")
    data = result_data(result)
    assert untimed(data) == untimed(plain)
    pngs = [base64.b64decode(block.data) for block in result.content if block.type == "image"]
    captions = " ".join(block.text for block in result.content[1:] if block.type == "text")
    assert all(len(png) <= images.MAX_PNG_BYTES for png in pngs)
    return data, pngs, captions


def has_colour(pixels: np.ndarray, colour: str) -> bool:
    return bool((np.abs(pixels - np.array(to_rgb(colour))).max(axis=-1) < 2 / 255).any())


async def test_edge_attribution_graph_draws_the_top_edges_capped(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    for top_k in (7, MAX_DRAWN_EDGES + 20):
        arguments = {**TOY, "edges": "position", "top_k": top_k, "verify_top": 0}
        data, pngs, captions = await drawn(server, "edge_attribution", arguments)
        assert len(pngs) == 1
        (figure,) = EdgeAttributionResult.model_validate(data).figures()
        assert isinstance(figure, LayeredGraph)
        expected = min(len(data["top_edges"]), MAX_DRAWN_EDGES)
        assert len(data["top_edges"]) == top_k and len(figure.edges) == expected
        assert [f"{e.writer}->{e.reader}" for e in figure.edges] == [
            "->".join(edge_parts(e["edge"])) for e in data["top_edges"][:expected]
        ]
        rendered = images.render_figure(figure)
        assert rendered.drawn == expected
        pixels = decode(pngs[0])
        assert pixels.shape[:2] == (rendered.height, rendered.width)
        # the strongest edge is drawn in the darkest shade of its sign, and nothing in the other sign's darkest
        # shade unless an edge of that sign is as strong
        top = data["top_edges"][0]["score"]
        own = images.POSITIVE_SHADES if top > 0 else images.NEGATIVE_SHADES
        assert has_colour(pixels, own[-1])
        if top_k > MAX_DRAWN_EDGES:
            assert f"the top {MAX_DRAWN_EDGES} of {top_k}" in captions
        else:
            assert f"{expected} edges drawn" in captions and "of" not in captions.split("edges drawn")[1][:4]


def test_graph_nodes_by_layer_and_input() -> None:
    assert graph_node("embed") == (-1.0, "embed", "")
    assert graph_node("L3H2.k") == (3.0, "L3H2", "k")
    assert graph_node("L20.kv1.v") == (20.0, "L20.kv1", "v")
    assert graph_node("MLP4") == (4.0, "MLP4", "")
    assert graph_node("logits")[0] == float("inf")
    assert edge_parts("L0H1->L1H2.q@3") == ("L0H1", "L1H2.q")


async def test_faithfulness_curve_marks_the_smallest_k(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    await call_tool(server, "edge_attribution", {**TOY, "verify_top": 0}, mode="legacy")
    arguments = {**TOY, "circuit": "last", "k": [1, 2, 5, 10, 20], "target": 0.8}
    data, pngs, captions = await drawn(server, "circuit_faithfulness", arguments)
    assert len(pngs) == 1 and "5 points" in captions
    (figure,) = CircuitFaithfulnessResult.model_validate(data).figures()
    assert isinstance(figure, LineChart)
    assert figure.x == [1, 2, 5, 10, 20]
    assert figure.series[0][1] == [p["recovered"] for p in data["curve"]]
    assert figure.target is not None and figure.target[0] == 0.8
    assert data["smallest_k"] is not None
    assert figure.mark is not None and figure.mark[0] == data["smallest_k"]
    assert data["smallest_k"] == min(p["k"] for p in data["curve"] if p["recovered"] >= 0.8)
    rendered = images.render_figure(figure)
    assert rendered.drawn == 2 * len(data["curve"])
    pixels = decode(pngs[0])
    assert pixels.shape[:2] == (rendered.height, rendered.width)
    assert has_colour(pixels, images.TARGET_COLOUR) and has_colour(pixels, images.CURVE_COLOURS[0])


async def test_no_target_reached_is_said_and_dry_run_draws_nothing(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    await call_tool(server, "edge_attribution", {**TOY, "verify_top": 0}, mode="legacy")
    data, pngs, _ = await drawn(server, "circuit_faithfulness", {**TOY, "circuit": "last", "k": [1], "target": 2.0})
    (figure,) = CircuitFaithfulnessResult.model_validate(data).figures()
    assert data["smallest_k"] is None and figure.mark is None and figure.notes and len(pngs) == 1
    result = await call_tool(
        server, "circuit_faithfulness", {**TOY, "circuit": "last", "k": [1], "dry_run": True, "image": True},
        mode="legacy",
    )  # fmt: skip
    assert not [block for block in result.content if block.type == "image"]
