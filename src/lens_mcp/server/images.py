"""Heatmaps (and line charts, layered graphs) as PNG images: rendering (matplotlib, Agg, no pyplot state) and the
MCP image blocks.

A result model that defines `heatmaps() -> list[Heatmap]` or `figures() -> list[Figure]` (lens_mcp.schemas.figures)
gets an `image` argument on its tool (see adapter.add_model_tool). With image=true the response keeps its structured JSON and its JSON
text block unchanged and adds, per heatmap, an ImageContent block (PNG) and a one-line text block naming the
picture and its size. Diverging colour map centred at 0 for signed values, a colour bar labelled with the units,
axes labelled with layers/heads/tokens, at most about MAX_PNG_BYTES per picture.
"""

from __future__ import annotations

import base64
import inspect
import io
import logging
import math
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field

from lens_mcp.schemas.figures import Figure, Heatmap, LayeredGraph, LineChart, TextStrip, graph_node

log = logging.getLogger(__name__)

IMAGE_ARGUMENT = "image"
MAX_PNG_BYTES = 100_000
MAX_IMAGES = 6
MAX_TICKS = 40
ANNOTATE_CELLS = 200
_DPIS = (100, 80, 64, 50)
MISSING_COLOUR = "#e6e6e6"
MISSING_HATCH_COLOUR = "#8c8c8c"
MAX_TITLE_CHARS = 400
MAX_ASPECT = 1.4
"""The most a picture's height may exceed its width, before notes and title lines."""

IMAGE_PARAMETER = inspect.Parameter(
    IMAGE_ARGUMENT,
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[
        bool,
        Field(
            description="Also return the result as PNG heatmap image(s) (labelled axes, colour bar with units, "
            "about 20-100 KB each) beside the unchanged JSON"
        ),
    ],
)


def supports_images(result_model: Any) -> bool:
    return isinstance(result_model, type) and any(
        callable(getattr(result_model, name, None)) for name in ("heatmaps", "figures")
    )


def heatmaps_of(result: BaseModel) -> list[Figure]:
    """The result's pictures that have something in them (a dry run's empty grids draw nothing): its heatmaps,
    then its other figures."""
    maps: list[Figure] = []
    for name in ("heatmaps", "figures"):
        method: Callable[[], Iterable[Figure]] | None = getattr(result, name, None)
        maps += list(method()) if callable(method) else []
    return [figure for figure in maps if figure.shape[0] and figure.shape[1]]


def render_figure(figure: Figure, max_bytes: int = MAX_PNG_BYTES) -> RenderedImage:
    """Any figure as a PNG (labels drawn literally, as in render_heatmap)."""
    if isinstance(figure, Heatmap):
        return render_heatmap(figure, max_bytes)
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        if isinstance(figure, LineChart):
            return _fit(lambda dpi: _draw_chart(figure, dpi), max_bytes)
        if isinstance(figure, TextStrip):
            return _fit(lambda dpi: _draw_strip(figure, dpi), max_bytes)
        return _fit(lambda dpi: _draw_graph(figure, dpi), max_bytes)


def caption(figure: Figure) -> str:
    """What a picture shows, in a few words, for the text block beside it."""
    if isinstance(figure, Heatmap):
        rows, columns = figure.shape
        return (
            f"{figure.title} ({rows} x {columns} {figure.row_axis or 'rows'} x {figure.column_axis}; colour: "
            f"{figure.units})"
        )
    if isinstance(figure, LineChart):
        return f"{figure.title} ({figure.y_axis} against {figure.x_axis}, {len(figure.x)} points)"
    if isinstance(figure, TextStrip):
        return (
            f"{figure.title} ({len(figure.lines)} contexts, one per line; background: {figure.units}, white = "
            f"{figure.value_range[0]:.3g}, darkest = {figure.value_range[1]:.3g}; the max token outlined)"
        )
    capped = f", the top {len(figure.edges)} of {figure.total}" if figure.total > len(figure.edges) else ""
    return f"{figure.title} ({len(figure.edges)} edges drawn{capped}; width: |{figure.units}|, red +, blue -)"


@dataclass(frozen=True)
class RenderedImage:
    png: bytes
    width: int
    height: int
    axes_box: tuple[float, float, float, float]
    """The grid's pixel box (left, top, right, bottom), origin at the image's top-left corner."""
    drawn: int = 0
    """Line charts: points drawn; layered graphs: edges drawn."""

    @property
    def kilobytes(self) -> float:
        return len(self.png) / 1000


def tick_positions(labels: list[str]) -> tuple[list[int], list[str]]:
    step = max(1, math.ceil(len(labels) / MAX_TICKS))
    indices = list(range(0, len(labels), step))
    return indices, [_short(labels[i]) for i in indices]


def _short(label: str, limit: int = 18) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def render_heatmap(heatmap: Heatmap, max_bytes: int = MAX_PNG_BYTES) -> RenderedImage:
    """The heatmap as a PNG of at most about max_bytes (the resolution drops until it fits). Every label is drawn
    literally: tokens such as '$$' or '$\\alpha$' are text, never matplotlib math."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _render(heatmap, max_bytes)


def _render(heatmap: Heatmap, max_bytes: int) -> RenderedImage:
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize, TwoSlopeNorm
    from matplotlib.figure import Figure

    n_rows, n_cols = heatmap.shape
    data = np.array([[np.nan if v is None else float(v) for v in row] for row in heatmap.values], dtype=float).reshape(
        n_rows, n_cols
    )
    values = np.ma.masked_invalid(data)
    finite = data[np.isfinite(data)]
    if heatmap.value_range is not None:
        low, high = heatmap.value_range
    elif finite.size:
        low, high = float(finite.min()), float(finite.max())
    else:
        low, high = 0.0, 1.0
    if heatmap.signed:
        bound = max(abs(low), abs(high), 1e-12)
        norm: Normalize = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
        cmap = colormaps["RdBu_r"].with_extremes(bad=(0, 0, 0, 0))
    else:
        if high <= low:
            high = low + 1e-12
        norm = Normalize(vmin=low, vmax=high)
        cmap = colormaps["viridis"].with_extremes(bad=(0, 0, 0, 0))

    longest_column = max((len(_short(c)) for c in heatmap.columns), default=1)
    longest_row = max((len(_short(r)) for r in heatmap.rows), default=1)
    width = min(13.0, max(4.5, 1.8 + 0.06 * longest_row + 0.32 * min(n_cols, MAX_TICKS * 2)))
    height = min(10.0, max(2.6, 1.6 + 0.055 * longest_column + 0.2 * min(n_rows, MAX_TICKS * 2)))
    width = max(width, min(13.0, height / MAX_ASPECT))  # a grid of many rows and few columns is not a tall strip
    notes = list(heatmap.notes)
    height += 0.18 * len(notes)
    title = title_text(heatmap.title, width)
    height += 0.16 * max(0, title.count("\n") - 1)

    def draw(dpi: int) -> tuple[Any, Any, int]:
        figure = Figure(figsize=(width, height), dpi=dpi)
        FigureCanvasAgg(figure)  # tight_layout measures text with this canvas's renderer
        axes = figure.add_subplot(1, 1, 1)
        if values.mask.any():  # cells with no value show the hatched background, never a colour of the scale
            axes.add_patch(_missing_background(n_rows, n_cols))
        image = axes.imshow(values, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        colorbar = figure.colorbar(image, ax=axes, fraction=0.05, pad=0.02)
        colorbar.set_label(heatmap.units)
        x_ticks, x_labels = tick_positions(heatmap.columns)
        y_ticks, y_labels = tick_positions(heatmap.rows)
        rotate = 90 if longest_column > 3 else 0
        axes.set_xticks(x_ticks, x_labels, rotation=rotate, fontsize=7)
        axes.set_yticks(y_ticks, y_labels, fontsize=7)
        axes.set_xlabel(heatmap.column_axis)
        axes.set_ylabel(heatmap.row_axis)
        axes.set_title(title, fontsize=9)
        if n_rows * n_cols <= ANNOTATE_CELLS:
            _annotate(axes, heatmap, data, norm, cmap)
        if notes:
            figure.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom", ha="left")
        figure.tight_layout(rect=(0, 0.04 * len(notes) / max(height / 4, 1), 1, 1))
        return figure, axes, 0

    return _fit(draw, max_bytes)


def title_text(title: str, width_inches: float) -> str:
    """The whole title (up to MAX_TITLE_CHARS), wrapped to the figure's width at the title's font size."""
    return textwrap.fill(_short(title, MAX_TITLE_CHARS), max(30, int(width_inches * 11)))


def _missing_background(n_rows: int, n_cols: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle(
        (-0.5, -0.5), n_cols, n_rows, facecolor=MISSING_COLOUR, edgecolor=MISSING_HATCH_COLOUR, hatch="///",
        linewidth=0, zorder=0,
    )  # fmt: skip


def _annotate(axes: Any, heatmap: Heatmap, data: Any, norm: Any, cmap: Any) -> None:
    """Cell text: the heatmap's annotations, else the value with 2 significant digits."""
    import numpy as np

    n_rows, n_cols = data.shape
    size = 7 if n_rows * n_cols <= 60 else 6
    for r in range(n_rows):
        for c in range(n_cols):
            value = data[r, c]
            if heatmap.annotations is not None:
                text = heatmap.annotations[r][c]
            elif np.isfinite(value):
                text = f"{value + 0.0:.2g}"  # + 0.0: no '-0'
            else:
                continue
            if not text:
                continue
            shade = cmap(norm(value)) if np.isfinite(value) else (0.9, 0.9, 0.9, 1)
            luminance = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2]
            axes.text(
                c, r, _short(text, 8), ha="center", va="center", fontsize=size,
                color="black" if luminance > 0.55 else "white",
            )  # fmt: skip


def image_blocks(result: BaseModel, tool: str) -> list[Any]:
    """ImageContent + a one-line TextContent per heatmap of `result` (at most MAX_IMAGES); a rendering failure
    becomes a text note, never a failed call."""
    from mcp.types import ImageContent, TextContent

    blocks: list[Any] = []
    try:
        maps = heatmaps_of(result)
        for index, figure in enumerate(maps[:MAX_IMAGES], start=1):
            rendered = render_figure(figure)
            data = base64.b64encode(rendered.png).decode("ascii")
            blocks.append(ImageContent(type="image", data=data, mime_type="image/png"))
            blocks.append(
                TextContent(
                    type="text",
                    text=f"image {index}/{min(len(maps), MAX_IMAGES)}: {caption(figure)}; PNG "
                    f"{rendered.width}x{rendered.height} px, {rendered.kilobytes:.1f} KB",
                )
            )
        if len(maps) > MAX_IMAGES:
            blocks.append(TextContent(type="text", text=f"{len(maps) - MAX_IMAGES} more heatmaps not drawn"))
        if not maps:
            blocks.append(TextContent(type="text", text=f"{tool}: this result has nothing to draw"))
    except Exception as exc:
        log.exception("rendering images for %s failed", tool)
        blocks.append(TextContent(type="text", text=f"images could not be drawn ({type(exc).__name__}: {exc})"))
    return blocks


def _fit(draw: Callable[[int], tuple[Any, Any, int]], max_bytes: int) -> RenderedImage:
    """draw(dpi) -> (figure, axes, items drawn), at falling resolutions until the PNG fits max_bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    last: RenderedImage | None = None
    for dpi in _DPIS:
        figure, axes, drawn = draw(dpi)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi)
        png = buffer.getvalue()
        width, height = canvas.get_width_height()
        box = axes.get_window_extent()
        last = RenderedImage(png, width, height, (box.x0, height - box.y1, box.x1, height - box.y0), drawn)
        if len(png) <= max_bytes:
            break
    assert last is not None
    return last


CURVE_COLOURS = ("#1f4e9c", "#9c6b1f", "#4c9c1f")
TARGET_COLOUR = "#c0392b"
POSITIVE_COLOUR = "#c0392b"
NEGATIVE_COLOUR = "#2563b0"
POSITIVE_SHADES = ("#f1b6ae", "#e07b6d", "#cf4a3a", "#a8241a")
NEGATIVE_SHADES = ("#b3cbe9", "#7aa3d6", "#3f78c0", "#1d4f93")
INPUT_STYLES = {"q": "solid", "k": "dashed", "v": "dotted", "": "solid"}


def _draw_chart(chart: LineChart, dpi: int) -> tuple[Any, Any, int]:
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(6.4, 4.2 + 0.18 * len(chart.notes)), dpi=dpi)
    axes = figure.add_subplot(1, 1, 1)
    drawn = 0
    for index, (label, values) in enumerate(chart.series):
        points = [(x, y) for x, y in zip(chart.x, values, strict=True) if y is not None and math.isfinite(y)]
        drawn += len(points)
        axes.plot(
            [p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, label=label,
            color=CURVE_COLOURS[index % len(CURVE_COLOURS)], linewidth=2.0 if index == 0 else 1.2,
            linestyle="solid" if index == 0 else "dashed",
        )  # fmt: skip
    if chart.target is not None:
        axes.axhline(chart.target[0], color=TARGET_COLOUR, linestyle="dashed", linewidth=1, label=chart.target[1])
    if chart.mark is not None:
        x, y, label = chart.mark
        axes.plot([x], [y], marker="*", markersize=16, color=TARGET_COLOUR, linestyle="none", label=label)
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(8, -14), fontsize=8, color=TARGET_COLOUR)
    if chart.log_x and all(x > 0 for x in chart.x):
        axes.set_xscale("log")
        axes.minorticks_off()
    step = max(1, math.ceil(len(chart.x) / 12))
    axes.set_xticks(chart.x[::step], [f"{x:g}" for x in chart.x[::step]], fontsize=7)
    axes.set_xlabel(chart.x_axis)
    axes.set_ylabel(chart.y_axis)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    axes.set_title(textwrap.fill(_short(chart.title, 160), 70), fontsize=9)
    if chart.notes:
        figure.text(0.01, 0.01, "\n".join(chart.notes), fontsize=7, va="bottom", ha="left")
    figure.tight_layout(rect=(0, 0.05 * len(chart.notes), 1, 1))
    return figure, axes, drawn


def _draw_graph(graph: LayeredGraph, dpi: int) -> tuple[Any, Any, int]:
    """Columns: the layers that appear (embed first, logits last); in a column, the heads (query heads, then
    key/value groups), then the MLP. Edges are arrows from the writer to the node whose input it feeds; the
    input (q, k, v) is the line style and a letter at the arrow's head."""
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.lines import Line2D

    nodes: dict[str, float] = {}
    ends = []
    for edge in graph.edges:
        w_layer, w_node, _ = graph_node(edge.writer)
        r_layer, r_node, which = graph_node(edge.reader)
        nodes[w_node], nodes[r_node] = w_layer, r_layer
        ends.append((w_node, r_node, which, edge.score))
    layers = sorted(set(nodes.values()))
    column = {layer: index for index, layer in enumerate(layers)}

    def rank(node: str) -> tuple[int, int, str]:
        kind = 2 if node.startswith("MLP") else 1 if ".kv" in node else 0
        digits = "".join(c for c in node.rpartition("H" if kind == 0 else "v")[2] if c.isdigit())
        return kind, int(digits) if digits and kind != 2 else 0, node

    place: dict[str, tuple[float, float]] = {}
    tallest = 1
    for layer in layers:
        members = sorted((n for n, at in nodes.items() if at == layer), key=rank)
        tallest = max(tallest, len(members))
        for index, node in enumerate(members):
            place[node] = (float(column[layer]), -(index - (len(members) - 1) / 2))
    width = min(16.0, max(6.0, 1.1 * len(layers) + 1.5))
    height = min(11.0, max(3.5, 0.55 * tallest + 1.8)) + 0.18 * len(graph.notes)
    figure = MplFigure(figsize=(width, height), dpi=dpi)
    axes = figure.add_subplot(1, 1, 1)
    biggest = max((abs(e[3]) for e in ends), default=1.0) or 1.0
    for w_node, r_node, which, score in reversed(ends):  # the strongest drawn last, on top
        (x0, y0), (x1, y1) = place[w_node], place[r_node]
        strength = abs(score) / biggest
        shades = POSITIVE_SHADES if score >= 0 else NEGATIVE_SHADES
        colour = shades[min(len(shades) - 1, int(strength * len(shades)))]
        bend = 0.25 if x1 - x0 > 1 else 0.0
        axes.annotate(
            "", xy=(x1 - 0.12, y1), xytext=(x0 + 0.12, y0),
            arrowprops=dict(
                arrowstyle="-|>", color=colour, linewidth=0.5 + 5.5 * strength, antialiased=False,
                linestyle=INPUT_STYLES.get(which, "solid"), connectionstyle=f"arc3,rad={bend}", mutation_scale=9,
                shrinkA=0, shrinkB=0,
            ),
        )  # fmt: skip
        if which:
            axes.text(x1 - 0.2, y1 + 0.12, which, fontsize=7, color=colour, ha="right", va="bottom")
    for node, (x, y) in place.items():
        axes.text(
            x, y, node, ha="center", va="center", fontsize=7,
            bbox=dict(boxstyle="round,pad=0.25", facecolor="#f4f4f4", edgecolor="#555555", linewidth=0.6),
        )  # fmt: skip
    axes.set_xticks(
        range(len(layers)),
        ["embed" if at < 0 else "logits" if math.isinf(at) else f"L{int(at)}" for at in layers],
        fontsize=7,
    )
    axes.set_yticks([])
    axes.set_xlim(-0.6, len(layers) - 0.4)
    axes.set_ylim(-(tallest - 1) / 2 - 0.8, (tallest - 1) / 2 + 0.8)
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    axes.set_xlabel("layer")
    legend = [
        Line2D([0], [0], color=POSITIVE_COLOUR, linewidth=2, label="positive score"),
        Line2D([0], [0], color=NEGATIVE_COLOUR, linewidth=2, label="negative score"),
        Line2D([0], [0], color="#555555", linestyle="solid", label="into q (or MLP, logits)"),
        Line2D([0], [0], color="#555555", linestyle="dashed", label="into k"),
        Line2D([0], [0], color="#555555", linestyle="dotted", label="into v"),
    ]
    axes.legend(handles=legend, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    shown = f"{len(graph.edges)} edges drawn" + (
        f" (the top {len(graph.edges)} of {graph.total} by |score|)" if graph.total > len(graph.edges) else ""
    )
    axes.set_title(textwrap.fill(f"{_short(graph.title, 120)}: {shown}", int(width * 11)), fontsize=9)
    notes = [f"width: |{graph.units}|", *graph.notes]
    figure.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom", ha="left")
    figure.tight_layout(rect=(0, 0.04 * len(notes) / max(height / 4, 1), 1, 1))
    return figure, axes, len(ends)


STRIP_CHARS = 96
"""A text strip's line holds at most about this many characters, a window around its marked token."""
STRIP_FONT = 8.0
_MONO_ADVANCE = 0.602
"""DejaVu Sans Mono's advance width, in em."""
STRIP_LABEL_INCHES = 0.75
STRIP_LINE_INCHES = 0.24


def strip_text(token: str) -> str:
    """A token as drawn in a strip: newlines and tabs visible, other control characters as '?'."""
    text = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def strip_window(line: list[tuple[str, float]], marked: int, limit: int = STRIP_CHARS) -> tuple[int, int]:
    """[lo, hi) of the tokens drawn: the marked one, then neighbours added alternately (right first) while the
    characters fit in `limit`."""
    lo, hi = marked, marked + 1
    used = len(strip_text(line[marked][0]))
    grew = True
    while grew:
        grew = False
        if hi < len(line) and used + len(strip_text(line[hi][0])) <= limit:
            used += len(strip_text(line[hi][0]))
            hi += 1
            grew = True
        if lo > 0 and used + len(strip_text(line[lo - 1][0])) <= limit:
            used += len(strip_text(line[lo - 1][0]))
            lo -= 1
            grew = True
    return lo, hi


def _draw_strip(strip: TextStrip, dpi: int) -> tuple[Any, Any, int]:
    """One line per context, in a monospaced font so that every token's box is as wide as its characters; the
    background colour is the value (white at the low end of value_range, dark orange at the high end); the marked
    token has a black outline. Returns the tokens drawn as the item count."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.patches import Rectangle

    char = STRIP_FONT * _MONO_ADVANCE / 72  # inches per character
    low, high = strip.value_range
    norm = Normalize(vmin=low, vmax=high if high > low else low + 1e-12)
    cmap = colormaps["Oranges"]
    width = STRIP_LABEL_INCHES + STRIP_CHARS * char + 0.3
    title = textwrap.fill(_short(strip.title, 200), int(width * 11))
    top = 0.25 + 0.16 * (title.count("\n") + 1)
    body = STRIP_LINE_INCHES * max(1, len(strip.lines))
    height = top + body + 0.75 + 0.14 * len(strip.notes)
    figure = MplFigure(figsize=(width, height), dpi=dpi)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    axes.axis("off")
    axes.text(0.1, 0.12, title, fontsize=9, va="top", ha="left")
    drawn = 0
    for number, (line, mark, label) in enumerate(zip(strip.lines, strip.marked, strip.labels, strict=True)):
        y = top + number * STRIP_LINE_INCHES
        axes.text(0.1, y + STRIP_LINE_INCHES / 2, _short(label, 12), fontsize=7, va="center", ha="left")
        lo, hi = strip_window(line, mark)
        x = STRIP_LABEL_INCHES
        for index in range(lo, hi):
            token, value = line[index]
            text = strip_text(token)
            box_width = max(1, len(text)) * char
            marked = index == mark
            axes.add_patch(
                Rectangle(
                    (x, y + 0.02), box_width, STRIP_LINE_INCHES - 0.04, facecolor=cmap(norm(value)),
                    edgecolor="black" if marked else "none", linewidth=1.2 if marked else 0,
                )
            )  # fmt: skip
            shade = cmap(norm(value))
            luminance = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2]
            axes.text(
                x, y + STRIP_LINE_INCHES / 2, text, fontsize=STRIP_FONT, family="DejaVu Sans Mono", va="center",
                ha="left", fontweight="bold" if marked else "normal", color="black" if luminance > 0.5 else "white",
            )  # fmt: skip
            x += box_width
            drawn += 1
    bar = figure.add_axes((STRIP_LABEL_INCHES / width, (0.4 + 0.14 * len(strip.notes)) / height, 0.4, 0.1 / height))
    colorbar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar, orientation="horizontal")
    colorbar.set_label(strip.units, fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    if strip.notes:
        figure.text(0.01, 0.01, "\n".join(strip.notes), fontsize=7, va="bottom", ha="left")
    return figure, axes, drawn


def with_images(result: Any, model: BaseModel | None, tool: str) -> Any:
    """A CallToolResult with the image blocks of `model` appended (structured content untouched)."""
    if model is None or getattr(result, "is_error", False):
        return result
    return result.model_copy(update={"content": [*result.content, *image_blocks(model, tool)]})


def save_images(result: Any, directory: str | None, stem: str) -> list[tuple[str, str]]:
    """Write the PNG blocks of a CallToolResult to `directory` as <stem>-<k>.png (never overwriting a file);
    returns (path, the block's description) per image. No directory: nothing is written."""
    from pathlib import Path

    if directory is None:
        return []
    content = list(getattr(result, "content", []) or [])
    saved: list[tuple[str, str]] = []
    folder = Path(directory).expanduser()
    for index, block in enumerate(content):
        if getattr(block, "type", None) != "image":
            continue
        folder.mkdir(parents=True, exist_ok=True)
        number = len(saved) + 1
        path = folder / f"{stem}-{number}.png"
        suffix = 1
        while path.exists():
            suffix += 1
            path = folder / f"{stem}-{number}-{suffix}.png"
        path.write_bytes(base64.b64decode(block.data))
        following = content[index + 1] if index + 1 < len(content) else None
        about = getattr(following, "text", "") if getattr(following, "type", None) == "text" else ""
        saved.append((str(path), about))
    return saved


def count_images(result: Any) -> int:
    return sum(getattr(block, "type", None) == "image" for block in getattr(result, "content", []) or [])
