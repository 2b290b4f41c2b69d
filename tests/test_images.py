"""Heatmap images: the PNG decodes, has the grid's shape, puts each value (and the extreme cell) in the right place,
stays small, and reaches a legacy (Claude Code-style) client as an image block beside the unchanged JSON."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import Normalize, TwoSlopeNorm

from lens_mcp.model_host import ModelHost
from lens_mcp.schemas.figures import Heatmap
from lens_mcp.server.app import build_server
from lens_mcp.server.images import MAX_PNG_BYTES, RenderedImage, render_heatmap, tick_positions, title_text
from tests.image_refs import EIFFEL_TOY, decode, invert_colours, read_cells
from tests.mcp_client import call_tool, error_text, result_data
from tests.shared import untimed

DRAWING_TOOLS = {
    "patch_sweep",
    "head_attribution",
    "run_with_cache",
    "logit_lens",
    "attention_pattern",
    "induction_scores",
    "attribution_patch",
    "composition_scores",
    "sae_features",
    "path_patch",
}


def test_signed_png_has_the_grid_shape_and_values_in_place() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-0.5, 0.5, size=(7, 11))
    values[4, 8] = 2.0  # the extreme cell
    values[1, 2] = -1.2
    heatmap = Heatmap(
        name="grid",
        title="test",
        values=values.tolist(),
        rows=[str(i) for i in range(7)],
        columns=[f"{i} 'tok{i}'" for i in range(11)],
        row_axis="layer",
        column_axis="position",
        units="fraction of clean restored",
        signed=True,
    )
    rendered = render_heatmap(heatmap)
    assert isinstance(rendered, RenderedImage)
    assert len(rendered.png) <= MAX_PNG_BYTES
    pixels = decode(rendered.png)
    assert pixels.shape[:2] == (rendered.height, rendered.width)
    colours = read_cells(pixels, rendered.axes_box, (7, 11))
    recovered = invert_colours(colours, "RdBu_r", TwoSlopeNorm(vcenter=0.0, vmin=-2.0, vmax=2.0))
    # every cell in its place, to the colour map's resolution (4/255 of the range per step)
    assert np.abs(recovered - values).max() < 0.05
    assert np.unravel_index(recovered.argmax(), recovered.shape) == (4, 8)
    assert np.unravel_index(recovered.argmin(), recovered.shape) == (1, 2)
    # diverging and centred at 0: positive cells are red, negative blue, a zero cell white
    red, blue = colours[4, 8], colours[1, 2]
    assert red[0] > 2 * red[2] and blue[2] > 2 * blue[0]
    assert np.allclose(colormaps["RdBu_r"](0.5)[:3], 0.97, atol=0.03)  # the colour map's centre is near white


def test_unsigned_png_uses_the_fixed_range_and_marks_missing_cells() -> None:
    values: list[list[float | None]] = [[0.1, None, 0.9], [0.5, 0.0, 1.0]]
    heatmap = Heatmap(
        name="p",
        title="probabilities",
        values=values,
        rows=["a", "b"],
        columns=["x", "y", "z"],
        row_axis="row",
        column_axis="column",
        units="probability",
        signed=False,
        value_range=(0.0, 1.0),
    )
    rendered = render_heatmap(heatmap)
    colours = read_cells(decode(rendered.png), rendered.axes_box, (2, 3))
    recovered = invert_colours(colours, "viridis", Normalize(0.0, 1.0))
    for (r, c), expected in {(0, 0): 0.1, (0, 2): 0.9, (1, 0): 0.5, (1, 1): 0.0, (1, 2): 1.0}.items():
        assert abs(recovered[r, c] - expected) < 0.02
    # no value: hatched grey (two shades inside the cell), never a flat colour that reads as a value such as 0
    left, top, right, bottom = rendered.axes_box
    width, height = (right - left) / 3, (bottom - top) / 2
    pixels = decode(rendered.png)

    def cell(r: int, c: int) -> np.ndarray:
        x0, y0 = int(left + c * width + 3), int(top + r * height + 3)
        return pixels[y0 : int(y0 + height - 6), x0 : int(x0 + width - 6)].reshape(-1, 3)

    def hatch_share(pixels: np.ndarray) -> float:
        return float((np.abs(pixels - 0x8C / 255).max(axis=1) < 0.08).mean())

    missing, zero = cell(0, 1), cell(1, 1)
    assert hatch_share(missing) > 0.05 and (np.abs(missing - 0xE6 / 255).max(axis=1) < 0.03).mean() > 0.4
    assert hatch_share(zero) < 0.01  # a value (even 0) is its colour, with no hatching


def test_a_long_title_is_wrapped_whole_not_cut() -> None:
    title = "path_patch into L20H0, L20H1 (q input): " + " ".join(f"word{i}" for i in range(40)) + " uses induction"
    wrapped = title_text(title, 4.5)
    assert " ".join(wrapped.split()) == title and "…" not in wrapped
    assert max(len(line) for line in wrapped.splitlines()) <= 4.5 * 11


def test_large_grid_stays_under_the_size_cap() -> None:
    values = np.random.default_rng(1).normal(size=(270, 40)).tolist()  # heads_by_pos on a 30-layer, 9-head model
    heatmap = Heatmap(
        name="big",
        title="big",
        values=values,
        rows=[f"L{i // 9}H{i % 9}" for i in range(270)],
        columns=[str(i) for i in range(40)],
        row_axis="layer, head",
        column_axis="position",
        units="u",
        signed=True,
    )
    rendered = render_heatmap(heatmap)
    assert len(rendered.png) <= MAX_PNG_BYTES * 1.1
    decode(rendered.png)


async def test_tools_list_offers_image_on_drawing_tools_only(toy_host: ModelHost) -> None:
    from mcp import Client

    async with Client(build_server(toy_host)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    with_image = {name for name, tool in tools.items() if "image" in (tool.input_schema or {}).get("properties", {})}
    assert DRAWING_TOOLS <= with_image
    assert not with_image & {"tokenize", "model_info", "load_model", "ablate_heads"}
    assert tools["patch_sweep"].input_schema["properties"]["image"]["default"] is False


async def test_legacy_client_gets_the_image_beside_unchanged_json(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    plain = await call_tool(server, "patch_sweep", EIFFEL_TOY, mode="legacy")
    drawn = await call_tool(server, "patch_sweep", {**EIFFEL_TOY, "image": True}, mode="legacy")
    plain_data, drawn_data = result_data(plain), result_data(drawn)
    assert len(plain.content) == 1

    assert untimed(drawn_data) == untimed(plain_data)  # the JSON (and its text) is unchanged
    kinds = [block.type for block in drawn.content]
    assert kinds == ["text", "image", "text"]
    image, note = drawn.content[1], drawn.content[2]
    assert image.mime_type == "image/png"
    png = base64.b64decode(image.data)
    assert f"{len(png) / 1000:.1f} KB" in note.text and "px" in note.text
    # the grid drawn is the grid returned: every cell in its place
    grid = np.array(drawn_data["grid"], dtype=float)  # skipped cells (null) become NaN and are drawn blank
    drawn_cells = np.isfinite(grid)
    pixels = decode(png)
    height, width = pixels.shape[:2]
    assert f"{width}x{height} px" in note.text
    box = _axes_box_of(drawn_data)
    colours = read_cells(pixels, box, grid.shape)
    bound = np.nanmax(np.abs(grid))
    recovered = invert_colours(colours, "RdBu_r", TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound))
    assert np.abs(recovered - grid)[drawn_cells].max() < 0.03 * bound
    recovered_drawn = np.where(drawn_cells, np.abs(recovered), -1.0)
    assert np.unravel_index(recovered_drawn.argmax(), grid.shape) == np.unravel_index(
        np.nanargmax(np.abs(grid)), grid.shape
    )


def _axes_box_of(data: dict) -> tuple[float, float, float, float]:
    """Render the result's heatmap again here to learn where the grid sits in the picture."""
    from lens_mcp.schemas.patching import PatchSweepResult

    return render_heatmap(PatchSweepResult.model_validate(data).heatmaps()[0]).axes_box


async def test_induction_image_shows_the_planted_induction_head(toy_host: ModelHost) -> None:
    """toy-induction's planted induction head is L1H2: the brightest cell of the induction picture."""
    result = await call_tool(build_server(toy_host), "induction_scores", {"seq_len": 10, "image": True}, mode="legacy")
    data = result_data(result)
    images = [block for block in result.content if block.type == "image"]
    assert len(images) == 3  # induction, previous-token, duplicate-token
    grid = np.array(data["induction"])
    from lens_mcp.schemas.induction import InductionScores

    box = render_heatmap(InductionScores.model_validate(data).heatmaps()[0]).axes_box
    colours = read_cells(decode(base64.b64decode(images[0].data)), box, grid.shape)
    recovered = invert_colours(colours, "viridis", Normalize(0.0, 1.0))
    assert np.unravel_index(recovered.argmax(), grid.shape) == (1, 2)
    assert np.abs(recovered - grid).max() < 0.02


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("head_attribution", {"prompt": "w1 w2 w3 w1 w2", "answer": " w3"}),
        ("logit_lens", {"prompt": "w1 w2 w3 w1 w2", "answer": " w3"}),
        ("attention_pattern", {"prompt": "w1 w2 w3 w1 w2", "layer": 1, "head": 2}),
        ("run_with_cache", {"prompt": "w1 w2 w3 w1 w2", "hooks": ["resid_post", "pattern"]}),
        ("patch_sweep", {**EIFFEL_TOY, "component": "heads_by_pos"}),
    ],
)
async def test_every_drawing_tool_returns_decodable_pngs(toy_host: ModelHost, tool: str, arguments: dict) -> None:
    result = await call_tool(build_server(toy_host), tool, {**arguments, "image": True}, mode="legacy")
    data = result_data(result)
    assert json.loads(result.content[0].text) == data
    pngs = [base64.b64decode(block.data) for block in result.content if block.type == "image"]
    assert pngs and all(len(png) <= MAX_PNG_BYTES for png in pngs)
    for png in pngs:
        assert decode(png).shape[0] > 100


async def test_bad_image_value_is_a_readable_error(toy_host: ModelHost) -> None:
    result = await call_tool(build_server(toy_host), "logit_lens", {"prompt": "w1 w2", "image": [1]})
    text = error_text(result)
    assert "image" in text and "true or false" in text


def test_one_sender_to_every_head_is_not_a_tall_strip_and_labels_every_layer() -> None:
    """path_patch from a layer-1 head into all heads of a 30-layer, 9-head model: 28 receiver layers x 9 heads."""
    values: list[list[float | None]] = [[0.01 * (r - c) for c in range(9)] for r in range(28)]
    heatmap = Heatmap(
        name="grid", title="path_patch from L1H0 into all_heads", values=values, rows=[str(r) for r in range(2, 30)],
        columns=[str(c) for c in range(9)], row_axis="receiver layer", column_axis="receiver head", units="x",
        signed=True, notes=["hatched: no path"],
    )  # fmt: skip
    rendered = render_heatmap(heatmap)
    assert rendered.height / rendered.width <= 1.6
    ticks, labels = tick_positions(heatmap.rows)
    assert labels == heatmap.rows and ticks == list(range(28))
