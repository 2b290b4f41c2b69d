"""feature_exemplars with image=true on the toy model: beside the unchanged structured result, one PNG text strip
(SAE-dashboard style) with one line per top context, every shown token drawn, the max token in the darkest
shade; the window of a long context stays within the strip's width around its marked token."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import colormaps

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.schemas.features import FeatureExemplarsResult
from lens_mcp.schemas.figures import TextStrip
from lens_mcp.server import images
from lens_mcp.server.app import build_server
from tests.image_refs import decode
from tests.mcp_client import call_tool, result_data
from tests.sae_refs import toy_corpus, toy_sae_folder


def _untimed(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _untimed(v) for k, v in data.items() if k != "seconds"}
    if isinstance(data, list):
        return [_untimed(v) for v in data]
    return data


async def test_feature_exemplars_image_is_a_text_strip_beside_the_unchanged_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LENS_MCP_CACHE_DIR", str(tmp_path / "cache"))
    host = ModelHost(Limits())  # its own host: the SAE loaded here is not left on the shared toy model
    host.load("toy-induction", device="cpu")
    server = build_server(host)
    await call_tool(server, "load_sae", {"spec": str(toy_sae_folder(tmp_path / "sae"))}, mode="legacy")
    arguments = {"feature": 5, "corpus": str(toy_corpus(tmp_path)), "tokens": 800, "context": 20, "top_k": 5}
    plain = result_data(await call_tool(server, "feature_exemplars", {**arguments, "window": 3}, mode="legacy"))
    result = await call_tool(server, "feature_exemplars", {**arguments, "window": 3, "image": True}, mode="legacy")
    data = result_data(result)
    assert _untimed(data) == _untimed(plain)
    pngs = [base64.b64decode(block.data) for block in result.content if block.type == "image"]
    captions = " ".join(block.text for block in result.content[1:] if block.type == "text")
    assert len(pngs) == 1 and len(pngs[0]) <= images.MAX_PNG_BYTES
    assert "5 contexts, one per line" in captions

    model = FeatureExemplarsResult.model_validate(data)
    (strip,) = model.figures()
    assert isinstance(strip, TextStrip)
    assert len(strip.lines) == len(data["top"]) == 5
    assert strip.marked == [e["marked"] for e in data["top"]]
    assert [[token for token, _ in line] for line in strip.lines] == [e["tokens"] for e in data["top"]]
    assert [[value for _, value in line] for line in strip.lines] == [e["activations"] for e in data["top"]]
    peak = max(v for e in data["top"] for v in e["activations"])
    assert strip.value_range == (0.0, pytest.approx(max(peak, data["max_activation"])))
    rendered = images.render_figure(strip)
    assert rendered.png == pngs[0]
    # window=3: at most 7 tokens a context, all short enough to be drawn
    assert rendered.drawn == sum(len(e["tokens"]) for e in data["top"]) <= 5 * 7
    pixels = decode(rendered.png)
    assert pixels.shape[:2] == (rendered.height, rendered.width)
    assert 250 <= rendered.width <= 1000 and 100 <= rendered.height <= 600
    # the top context's max token is drawn in the darkest shade of the scale
    darkest = np.array(colormaps["Oranges"](1.0)[:3])
    assert data["top"][0]["activation"] == pytest.approx(strip.value_range[1], rel=1e-3)
    assert (np.abs(pixels - darkest).max(axis=-1) < 3 / 255).sum() >= 20
    # a larger top_k draws more lines, so a taller picture of the same width
    more = await call_tool(server, "feature_exemplars", {**arguments, "window": 3, "top_k": 10, "image": True})
    png = next(base64.b64decode(block.data) for block in more.content if block.type == "image")
    assert decode(png).shape[0] > pixels.shape[0] and decode(png).shape[1] == pixels.shape[1]


def test_strip_window_keeps_the_marked_token_within_the_width() -> None:
    line = [(f" tok{i:02d}", float(i)) for i in range(60)]  # 6 characters each, 360 in all
    lo, hi = images.strip_window(line, 50)
    assert lo <= 50 < hi and hi <= 60
    assert sum(len(images.strip_text(t)) for t, _ in line[lo:hi]) <= images.STRIP_CHARS
    assert hi - lo == images.STRIP_CHARS // 6
    assert images.strip_window(line[:5], 0) == (0, 5)  # a short context is drawn whole
    assert images.strip_text("a\nb\tc\x07") == "a\\nb\\tc?"
    with pytest.raises(ValueError, match="mark 3 outside"):
        TextStrip("s", "t", [[("a", 1.0)]], [3], ["#1"], "activation", (0.0, 1.0))
