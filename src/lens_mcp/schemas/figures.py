"""Heatmap (and line charts, layered graphs, text strips): the picture a result offers, as plain data (no
plotting library here).

A result model opts in to images by defining `heatmaps(self) -> list[Heatmap]` (or `figures(self)` for the
other kinds). The server adapter then gives
its tool an `image` argument and, when it is true, renders each Heatmap as a PNG (lens_mcp.server.images) beside
the unchanged structured JSON; `lens-mcp report` renders the same heatmaps from a record. Building a Heatmap
must not need the model: only the result's own fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heatmap:
    """A rows x columns grid of numbers with everything needed to draw it honestly."""

    name: str
    """Short identifier, used in file names: 'grid', 'induction', 'answer'."""
    title: str
    values: list[list[float | None]]
    """rows x columns; None (or NaN) = no value (drawn hatched grey, never confused with 0)."""
    rows: list[str]
    """One label per row, e.g. layers '0'..'29' or 'L3H2'."""
    columns: list[str]
    """One label per column, e.g. "5 ' Tower'" (position and token) or head numbers."""
    row_axis: str
    """What the rows are: 'layer', 'layer, head', 'query position'."""
    column_axis: str
    """What the columns are: 'position', 'head', 'source position'."""
    units: str
    """Colour bar label: what a cell's number is, e.g. 'fraction of clean restored'."""
    signed: bool
    """True: a diverging colour map centred at 0; false: a sequential one from the smallest value."""
    value_range: tuple[float, float] | None = None
    """Fixed colour limits (e.g. (0, 1) for probabilities); None: from the data (symmetric when signed)."""
    annotations: list[list[str]] | None = None
    """Optional text per cell (e.g. a token or a rank), drawn when the grid is small enough to read."""
    notes: list[str] = field(default_factory=list)
    """Caveats printed under the picture (e.g. 'grey: not in the top-k')."""

    def __post_init__(self) -> None:
        if len(self.values) != len(self.rows):
            raise ValueError(f"heatmap {self.name!r}: {len(self.values)} rows of values, {len(self.rows)} labels")
        for row in self.values:
            if len(row) != len(self.columns):
                raise ValueError(
                    f"heatmap {self.name!r}: a row has {len(row)} values, {len(self.columns)} column labels"
                )

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.columns)

    def finite_values(self) -> list[float]:
        return [v for row in self.values for v in row if v is not None and math.isfinite(v)]


def position_labels(positions: Sequence[int], tokens: Sequence[str | None] | None) -> list[str]:
    """ "5 ' Tower'" per position (just the number when the token is unknown)."""
    labels = []
    for position in positions:
        token = tokens[position] if tokens is not None and 0 <= position < len(tokens) else None
        labels.append(f"{position} {token!r}" if token is not None else str(position))
    return labels


def layer_labels(layers: Sequence[int | None]) -> list[str]:
    return ["embed" if layer is None else str(layer) for layer in layers]


@dataclass(frozen=True)
class LineChart:
    """Lines of y over shared x values, e.g. a faithfulness curve (recovered against circuit size)."""

    name: str
    title: str
    x: list[float]
    series: list[tuple[str, list[float | None]]]
    """(legend label, one y per x; None: no value) per line; the first is the main one."""
    x_axis: str
    y_axis: str
    log_x: bool = False
    target: tuple[float, str] | None = None
    """A horizontal reference line: (y, its label)."""
    mark: tuple[float, float, str] | None = None
    """One point of the first series singled out: (x, y, its label)."""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for label, values in self.series:
            if len(values) != len(self.x):
                raise ValueError(f"line chart {self.name!r}: {label!r} has {len(values)} values for {len(self.x)} x")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.series), len(self.x)


@dataclass(frozen=True)
class GraphEdge:
    writer: str
    """'embed', 'L<l>H<h>' or 'MLP<l>'."""
    reader: str
    """'logits', 'MLP<l>', 'L<l>H<h>.q|k|v' or 'L<l>.kv<g>.k|v'."""
    score: float


@dataclass(frozen=True)
class LayeredGraph:
    """A circuit as a graph of nodes placed by layer: edges writer -> reader, width by |score|, colour by sign."""

    name: str
    title: str
    edges: list[GraphEdge]
    """The edges drawn (already capped), highest |score| first."""
    total: int
    """How many edges the result lists (more than len(edges) when the picture is capped)."""
    units: str
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.edges), 1


def graph_node(name: str) -> tuple[float, str, str]:
    """(layer, node, input) of a writer or reader name: the layer ('embed' -1, 'logits' +inf), the node it belongs
    to ('L3H2', 'L3.kv0', 'MLP3', 'embed', 'logits') and the input read ('q', 'k', 'v' or '')."""
    text = name.strip()
    if text == "embed":
        return -1.0, "embed", ""
    if text == "logits":
        return math.inf, "logits", ""
    node, _, which = text.partition(".")
    if node.startswith("MLP"):
        return float(node[3:]), node, ""
    if which.startswith("kv"):
        group, _, which = which.partition(".")
        return float(node[1:]), f"{node}.{group}", which
    return float(node[1:].partition("H")[0]), node, which


def edge_parts(edge: str) -> tuple[str, str]:
    """'writer->reader' (an '@p' position suffix dropped) -> (writer, reader)."""
    writer, _, reader = edge.partition("->")
    return writer, reader.rpartition("@")[0] if "@" in reader else reader


@dataclass(frozen=True)
class TextStrip:
    """Contexts of tokens, each token's background coloured by a value (SAE-dashboard style): one line per context,
    its marked token (the max) outlined."""

    name: str
    title: str
    lines: list[list[tuple[str, float]]]
    """Per context: (token text, value) in order."""
    marked: list[int]
    """Per context: the index in its line of the marked token."""
    labels: list[str]
    """Per context: a short label drawn at the left (e.g. '#1 4.2')."""
    units: str
    """What the colour is, e.g. 'activation'."""
    value_range: tuple[float, float]
    """Colour limits: low is white, high the darkest shade."""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not len(self.lines) == len(self.marked) == len(self.labels):
            raise ValueError(
                f"text strip {self.name!r}: {len(self.lines)} lines, {len(self.marked)} marks, {len(self.labels)} labels"
            )
        for line, mark in zip(self.lines, self.marked, strict=True):
            if not 0 <= mark < len(line):
                raise ValueError(f"text strip {self.name!r}: mark {mark} outside a line of {len(line)} tokens")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.lines), max((len(line) for line in self.lines), default=0)


Figure = Heatmap | LineChart | LayeredGraph | TextStrip
