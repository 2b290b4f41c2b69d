"""Heatmaps as PNG images: rendering (matplotlib, Agg, no pyplot state) and the MCP image blocks.

A result model that defines `heatmaps() -> list[Heatmap]` (lens_mcp.schemas.figures) gets an `image` argument
on its tool (see adapter.add_model_tool). With image=true the response keeps its structured JSON and its JSON
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

from lens_mcp.schemas.figures import Heatmap

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
    return isinstance(result_model, type) and callable(getattr(result_model, "heatmaps", None))


def heatmaps_of(result: BaseModel) -> list[Heatmap]:
    """The result's heatmaps that have cells (a dry run's empty grids draw nothing)."""
    method: Callable[[], Iterable[Heatmap]] | None = getattr(result, "heatmaps", None)
    maps = list(method()) if callable(method) else []
    return [heatmap for heatmap in maps if heatmap.shape[0] and heatmap.shape[1]]


@dataclass(frozen=True)
class RenderedImage:
    png: bytes
    width: int
    height: int
    axes_box: tuple[float, float, float, float]
    """The grid's pixel box (left, top, right, bottom), origin at the image's top-left corner."""

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

    last: RenderedImage | None = None
    for dpi in _DPIS:
        figure = Figure(figsize=(width, height), dpi=dpi)
        canvas = FigureCanvasAgg(figure)
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
        canvas.draw()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi)
        png = buffer.getvalue()
        pixel_width, pixel_height = canvas.get_width_height()
        box = axes.get_window_extent()
        last = RenderedImage(
            png, pixel_width, pixel_height, (box.x0, pixel_height - box.y1, box.x1, pixel_height - box.y0)
        )
        if len(png) <= max_bytes:
            break
    assert last is not None
    return last


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
        for index, heatmap in enumerate(maps[:MAX_IMAGES], start=1):
            rendered = render_heatmap(heatmap)
            data = base64.b64encode(rendered.png).decode("ascii")
            blocks.append(ImageContent(type="image", data=data, mime_type="image/png"))
            rows, columns = heatmap.shape
            blocks.append(
                TextContent(
                    type="text",
                    text=f"image {index}/{min(len(maps), MAX_IMAGES)}: {heatmap.title} ({rows} x {columns} "
                    f"{heatmap.row_axis or 'rows'} x {heatmap.column_axis}; colour: {heatmap.units}); PNG "
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
