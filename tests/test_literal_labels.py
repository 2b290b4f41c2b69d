"""Tokens are drawn literally: `$$`, ` $$`, `$\\alpha$` and `$\\frac{1}{2}$` are tokens of real vocabularies,
and matplotlib would parse them as math text (and raise, or draw something else). One bad figure never stops
a report either."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from lens_mcp.cli import report
from lens_mcp.schemas.figures import Heatmap
from lens_mcp.server import images, registry

MATH_TOKENS = ["3 '$$'", "4 ' $$'", "$\\alpha$", "$\\frac{1}{2}$", "a $ b", "$"]


def _heatmap(labels: list[str]) -> Heatmap:
    return Heatmap(
        name="grid",
        title="logit lens of '$\\frac{1}{2}$'",
        values=[[0.5, -0.25] for _ in labels],
        rows=labels,
        columns=["$x$", "$$"],
        row_axis="position $",
        column_axis="head $$",
        units="$ units",
        signed=True,
        annotations=[["$a$", "$$"] for _ in labels],
        notes=["note with $math$"],
    )


def test_math_text_in_every_label_renders_literally() -> None:
    rendered = images.render_heatmap(_heatmap(MATH_TOKENS))
    assert rendered.png.startswith(b"\x89PNG") and rendered.width > 0


def test_a_figure_that_cannot_be_drawn_leaves_the_rest_of_the_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Drawn(BaseModel):
        value: float

        def heatmaps(self) -> list[Heatmap]:
            return [_heatmap(["a"]), _heatmap(["b"])]

    calls: list[str] = []
    real = images.render_heatmap

    def first_breaks(heatmap: Heatmap, max_bytes: int = images.MAX_PNG_BYTES) -> images.RenderedImage:
        calls.append(heatmap.rows[0])
        if heatmap.rows[0] == "a":
            raise ValueError("cannot draw this one")
        return real(heatmap, max_bytes)

    monkeypatch.setattr(registry, "result_models", lambda: {"drawn": Drawn})
    monkeypatch.setattr(images, "render_heatmap", first_breaks)
    html = report.figures("drawn", {"value": 1.0})
    assert calls == ["a", "b"]  # the second picture is still drawn
    assert "not drawn" in html and "ValueError" in html and "data:image/png;base64," in html
