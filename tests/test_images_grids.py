"""Heatmaps of the grid tools added after the first images: attribution_patch (2-D and heads_by_pos), head_attribution's
by_source split, composition_scores' top pairs, sae_features and path_patch. Each PNG decodes, has the grid's shape, puts every
value (and the extreme cell) in the right place, and image=true leaves the structured JSON unchanged."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

from lens_mcp.model_host import ModelHost
from lens_mcp.schemas.features import SaeFeaturesResult
from lens_mcp.schemas.figures import Heatmap
from lens_mcp.schemas.patching import AttributionPatchResult, PatchSweepResult
from lens_mcp.schemas.paths import PathPatchResult
from lens_mcp.schemas.reading import HeadAttribution
from lens_mcp.schemas.weights import CompositionScores
from lens_mcp.server.app import build_server
from lens_mcp.server.images import MAX_PNG_BYTES, render_heatmap
from tests.image_refs import EIFFEL_TOY, decode, invert_colours, read_cells
from tests.mcp_client import call_tool, result_data
from tests.sae_refs import HOOK, toy_sae_folder
from tests.shared import untimed

GREY, HATCH = 0xE6 / 255, 0x8C / 255  # server.images: a cell without a value is light grey hatched darker grey


def hatched(colours: np.ndarray) -> bool:
    """Every sampled colour is one of the two greys of a cell without a value (a sample may hit a hatch line)."""
    grey = np.abs(colours - colours.mean(axis=-1, keepdims=True)).max() < 0.01
    return bool(grey and ((colours > HATCH - 0.05) & (colours < GREY + 0.02)).all())


async def drawn(server: MCPServer, tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    """The result with image=true, checked to carry the same JSON as without; and its PNGs."""
    plain = result_data(await call_tool(server, tool, arguments, mode="legacy"))
    result = await call_tool(server, tool, {**arguments, "image": True}, mode="legacy")
    data = result_data(result)
    assert untimed(data) == untimed(plain)
    assert result.content[0].type == "text"
    pngs = [base64.b64decode(block.data) for block in result.content if block.type == "image"]
    assert all(len(png) <= MAX_PNG_BYTES for png in pngs)
    return data, pngs


def colours_of(png: bytes, heatmap: Heatmap) -> np.ndarray:
    """Each cell's colour in the PNG (the grid's box found by rendering the same heatmap here)."""
    pixels = decode(png)
    rendered = render_heatmap(heatmap)
    assert pixels.shape[:2] == (rendered.height, rendered.width)
    return read_cells(pixels, rendered.axes_box, heatmap.shape)


def signed_values(png: bytes, heatmap: Heatmap, grid: np.ndarray) -> np.ndarray:
    bound = float(np.nanmax(np.abs(grid)))
    recovered = invert_colours(colours_of(png, heatmap), "RdBu_r", TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound))
    assert np.abs(recovered - grid).max() < 0.03 * bound  # every cell in its place
    return recovered


def model_of(cls: type[BaseModel], data: dict[str, Any]) -> Any:
    return cls.model_validate(data)


def assert_extreme_at(recovered: np.ndarray, grid: np.ndarray) -> None:
    expected = np.unravel_index(np.nanargmax(np.abs(grid)), grid.shape)
    assert np.unravel_index(np.nanargmax(np.abs(recovered)), grid.shape) == expected


async def test_attribution_patch_image_is_the_estimated_grid(toy_host: ModelHost) -> None:
    data, pngs = await drawn(build_server(toy_host), "attribution_patch", {**EIFFEL_TOY, "component": "resid_pre"})
    assert len(pngs) == 1
    grid = np.array(data["grid"], dtype=float)
    assert data["axes"] == ["layer", "position"] and grid.shape == (len(data["layers"]), len(data["positions"]))
    (heatmap,) = model_of(AttributionPatchResult, data).heatmaps()
    assert heatmap.shape == grid.shape and heatmap.rows == [str(layer) for layer in data["layers"]]
    assert heatmap.columns[3] == f"3 {data['clean_tokens'][3]!r}"  # the corrupted position, labelled by its token
    assert_extreme_at(signed_values(pngs[0], heatmap, grid), grid)


async def test_attribution_patch_heads_by_pos_draws_one_row_per_head(toy_host: ModelHost) -> None:
    arguments = {**EIFFEL_TOY, "component": "heads_by_pos", "verify_top": 0}
    data, pngs = await drawn(build_server(toy_host), "attribution_patch", arguments)
    grid3 = np.array(data["grid"], dtype=float)
    n_layers, n_heads, n_positions = grid3.shape
    assert data["axes"] == ["layer", "head", "position"]
    (heatmap,) = model_of(AttributionPatchResult, data).heatmaps()
    # as patch_sweep draws it: rows L0H0, L0H1, ... (layer-major, as the grid nests), columns the positions
    assert heatmap.rows == [f"L{layer}H{head}" for layer in data["layers"] for head in data["heads"]]
    grid = grid3.reshape(n_layers * n_heads, n_positions)
    recovered = signed_values(pngs[0], heatmap, grid)
    assert_extreme_at(recovered, grid)
    layer, head, position = np.unravel_index(np.nanargmax(np.abs(recovered)), grid3.shape)
    top = data["top_cells"][0]
    assert (data["layers"][layer], data["heads"][head], data["positions"][position]) == (
        top["layer"],
        top["head"],
        top["position"],
    )


async def test_attribution_patch_dry_run_draws_nothing(toy_host: ModelHost) -> None:
    result = await call_tool(
        build_server(toy_host), "attribution_patch", {**EIFFEL_TOY, "dry_run": True, "image": True}, mode="legacy"
    )
    assert [block.type for block in result.content] == ["text", "text"]
    assert "nothing to draw" in result.content[1].text


async def test_head_attribution_by_source_adds_the_split(toy_host: ModelHost) -> None:
    arguments = {"prompt": "w1 w2 w3 w1 w2", "answer": " w3", "by_source": True, "layer": 1, "head": 2, "top_k": 4}
    data, pngs = await drawn(build_server(toy_host), "head_attribution", arguments)
    assert len(pngs) == 2  # the layer x head grid, then the split of L1H2
    heads_map, source_map = model_of(HeadAttribution, data).heatmaps()
    heads = np.array(data["heads"], dtype=float)
    assert_extreme_at(signed_values(pngs[0], heads_map, heads), heads)
    split = data["by_source"]
    sources = sorted(split["sources"], key=lambda part: part["position"])
    row = np.array([[part["contribution"] for part in sources]])
    assert source_map.shape == (1, len(sources)) == (1, 4)
    assert source_map.columns == [f"{part['position']} {part['token']!r}" for part in sources]
    recovered = signed_values(pngs[1], source_map, row)
    assert_extreme_at(recovered, row)
    # the planted induction head reads the token after the earlier 'w2': position 3 (' w3'), its largest part
    assert source_map.columns[int(np.abs(recovered).argmax())].startswith("3 ")
    assert source_map.annotations == [[f"a={part['attention']:.2f}" for part in sources]]


async def test_head_attribution_without_by_source_draws_one_map(toy_host: ModelHost) -> None:
    _, pngs = await drawn(build_server(toy_host), "head_attribution", {"prompt": "w1 w2 w3 w1 w2", "answer": " w3"})
    assert len(pngs) == 1


async def test_composition_image_puts_the_planted_pair_brightest(toy_host: ModelHost) -> None:
    data, pngs = await drawn(build_server(toy_host), "composition_scores", {"kind": "k", "top_k": 5})
    (heatmap,) = model_of(CompositionScores, data).heatmaps()
    senders = sorted({(p["sender_layer"], p["sender_head"]) for p in data["top_pairs"]})
    receivers = sorted({(p["receiver_layer"], p["receiver_head"]) for p in data["top_pairs"]})
    assert heatmap.shape == (len(senders), len(receivers))
    expected = np.full(heatmap.shape, np.nan)
    for pair in data["top_pairs"]:
        r = senders.index((pair["sender_layer"], pair["sender_head"]))
        c = receivers.index((pair["receiver_layer"], pair["receiver_head"]))
        expected[r, c] = pair["score"]
    colours = colours_of(pngs[0], heatmap)
    highest = float(np.nanmax(expected))
    recovered = invert_colours(colours, "viridis", Normalize(0.0, highest))
    listed = ~np.isnan(expected)
    assert (~listed).any()
    assert np.abs(recovered[listed] - expected[listed]).max() < 0.02 * highest
    assert hatched(colours[~listed])  # pairs not listed are hatched, not a low score
    # K-composition of the previous-token head L0H1 into the induction head L1H2: the brightest cell
    recovered[~listed] = -1.0
    r, c = np.unravel_index(recovered.argmax(), recovered.shape)
    assert (heatmap.rows[r], heatmap.columns[c]) == ("L0H1", "L1H2")


async def test_sae_features_image_is_position_by_feature(toy_host: ModelHost, tmp_path: Path) -> None:
    model = toy_host.model
    assert model is not None
    model.saes.clear()
    server = build_server(toy_host)
    try:
        result_data(await call_tool(server, "load_sae", {"spec": str(toy_sae_folder(tmp_path / "sae"))}))
        arguments = {"prompt": "w1 w2 w3 w4 w5 w1 w2 w3", "positions": [2, 5, -1], "top_k": 3}
        data, pngs = await drawn(server, "sae_features", arguments)
    finally:
        model.saes.clear()
    assert data["hook"] == HOOK
    (heatmap,) = model_of(SaeFeaturesResult, data).heatmaps()
    features = [int(label) for label in heatmap.columns]
    assert heatmap.shape == (3, len(features))
    expected = np.full(heatmap.shape, np.nan)
    for r, row in enumerate(data["positions"]):
        for entry in row["features"]:
            expected[r, features.index(entry["feature"])] = entry["activation"]
    highest = float(np.nanmax(expected))
    colours = colours_of(pngs[0], heatmap)
    recovered = invert_colours(colours, "viridis", Normalize(0.0, highest))
    listed = ~np.isnan(expected)
    assert (~listed).any()
    assert np.abs(recovered[listed] - expected[listed]).max() < 0.02 * highest
    assert hatched(colours[~listed])
    recovered[~listed] = -1.0
    assert np.unravel_index(recovered.argmax(), expected.shape) == np.unravel_index(
        np.nanargmax(expected), expected.shape
    )
    column_max = np.nanmax(expected, axis=0)
    assert (np.diff(column_max) <= 0).all() and column_max[0] == highest  # strongest feature first


# ---- path_patch ----------------------------------------------------------------------------------
# The key pair of the path-patching tests: in the corrupted prompt w64 follows w99, not w53, so only the
# previous-token head L0H1's write at position 5 tells the induction head L1H2 where to look.
KEY_PAIR = {
    "clean_prompt": "w20 w31 w42 w53 w64 w20 w31 w42 w53",
    "corrupted_prompt": "w20 w31 w42 w99 w64 w20 w31 w42 w53",
    "answer": " w64",
    "metric": "logprob",
}


async def test_path_patch_senders_into_the_induction_key(toy_host: ModelHost) -> None:
    arguments = {**KEY_PAIR, "receivers": [[1, 2]], "receiver_input": "k"}
    data, pngs = await drawn(build_server(toy_host), "path_patch", arguments)
    assert data["axes"] == ["sender_layer", "sender_head"]
    (heatmap,) = model_of(PathPatchResult, data).heatmaps()
    grid = np.array([[np.nan if v is None else v for v in row] for row in data["grid"]], dtype=float)
    assert heatmap.shape == grid.shape == (len(data["layers"]), len(data["heads"]))
    recovered = signed_values(pngs[0], heatmap, grid)
    assert_extreme_at(recovered, grid)
    r, c = np.unravel_index(np.nanargmax(np.abs(recovered)), grid.shape)
    assert (heatmap.rows[r], heatmap.columns[c]) == ("0", "1")  # the previous-token head is the sender that matters


async def test_path_patch_one_sender_into_all_heads(toy_host: ModelHost) -> None:
    arguments = {**KEY_PAIR, "senders": [[0, 1]], "receivers": "all_heads", "receiver_input": "k"}
    data, pngs = await drawn(build_server(toy_host), "path_patch", arguments)
    assert data["axes"] == ["receiver_layer", "receiver_head"]
    (heatmap,) = model_of(PathPatchResult, data).heatmaps()
    grid = np.array(data["grid"], dtype=float)
    assert heatmap.shape == grid.shape and heatmap.rows == [str(layer) for layer in data["layers"]]
    recovered = signed_values(pngs[0], heatmap, grid)
    r, c = np.unravel_index(np.nanargmax(np.abs(recovered)), grid.shape)
    assert (heatmap.rows[r], heatmap.columns[c]) == ("1", "2")  # it is read through the induction head's key


async def test_path_patch_several_senders_draw_one_row_per_sender_and_layer(toy_host: ModelHost) -> None:
    arguments = {**KEY_PAIR, "senders": [[0, 1], [0, 2]], "receivers": "all_heads", "receiver_input": "k"}
    data, pngs = await drawn(build_server(toy_host), "path_patch", arguments)
    assert data["axes"] == ["sender", "receiver_layer", "receiver_head"]
    (heatmap,) = model_of(PathPatchResult, data).heatmaps()
    grid3 = np.array(data["grid"], dtype=float)
    n_senders, n_layers, n_heads = grid3.shape
    assert heatmap.rows == [f"L{s[0]}H{s[1]} > L{layer}" for s in data["senders"] for layer in data["layers"]]
    grid = grid3.reshape(n_senders * n_layers, n_heads)
    assert_extreme_at(signed_values(pngs[0], heatmap, grid), grid)


async def test_dry_runs_draw_nothing(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    for tool, arguments in (
        ("path_patch", {**KEY_PAIR, "receivers": [[1, 2]], "receiver_input": "k"}),
        ("patch_sweep", EIFFEL_TOY),
    ):
        result = await call_tool(server, tool, {**arguments, "dry_run": True, "image": True}, mode="legacy")
        assert [block.type for block in result.content] == ["text", "text"], tool
        assert "nothing to draw" in result.content[1].text


async def test_patch_sweep_key_value_head_axis_is_labelled(toy_host: ModelHost) -> None:
    """Under grouped-query attention k/v sweeps have a kv_head axis (not on the toy model: relabel its grids)."""
    server = build_server(toy_host)
    keys = result_data(await call_tool(server, "patch_sweep", {**EIFFEL_TOY, "component": "k"}))
    assert keys["axes"] == ["layer", "head"]
    (heatmap,) = PatchSweepResult.model_validate({**keys, "axes": ["layer", "kv_head"]}).heatmaps()
    assert heatmap.column_axis == "key/value head" and heatmap.shape == (len(keys["layers"]), len(keys["heads"]))
    by_pos = result_data(await call_tool(server, "patch_sweep", {**EIFFEL_TOY, "component": "heads_by_pos"}))
    (heatmap,) = PatchSweepResult.model_validate({**by_pos, "axes": ["layer", "kv_head", "position"]}).heatmaps()
    assert heatmap.rows[:2] == ["L0KV0", "L0KV1"] and heatmap.row_axis == "layer, key/value head"
    assert heatmap.shape == (len(by_pos["layers"]) * len(by_pos["heads"]), len(by_pos["positions"]))
