"""Finding the first NaN or infinity in a result, so it is refused with a message naming where it is.

JSON has no NaN or Infinity: such a result would fail to serialize with a message that says nothing useful
("Out of range float values are not JSON compliant"). A non-finite number in a result almost always means a
broken model (corrupted weights, an overflowing dtype), so the message says where it first appears and what
labels that place (layer, head, position, token, ...)."""

from __future__ import annotations

import math
from typing import Any

from lens_mcp.errors import LensError

_LABEL_LISTS = ("rows", "layers", "labels", "positions", "heads", "hooks", "tokens")
_LABELS = ("layer", "head", "position", "pos", "token", "component", "label", "name", "hook_name")


def _labels(node: dict[str, Any]) -> list[str]:
    return [f"{key}={node[key]!r}" for key in _LABELS if key in node and not isinstance(node[key], (dict, list))]


def find_non_finite(data: Any) -> tuple[str, float, list[str]] | None:
    """(path such as 'top[2][0].prob', the value, labels of the place) of the first non-finite float in
    depth-first order, or None. Labels come from enclosing objects (layer=3, token='x') and from label lists
    beside the indexed list (rows[2]='final' for top[2])."""
    stack: list[tuple[Any, str, list[str], dict[str, list[Any]]]] = [(data, "", [], {})]
    while stack:
        node, path, labels, beside = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                return path or "(the result)", node, labels
        elif isinstance(node, dict):
            here = labels + _labels(node)
            lists = {key: node[key] for key in _LABEL_LISTS if isinstance(node.get(key), list)}
            for key, value in reversed(node.items()):
                stack.append((value, f"{path}.{key}" if path else str(key), here, lists if key not in lists else {}))
        elif isinstance(node, (list, tuple)):
            for index, value in reversed(list(enumerate(node))):
                named = [f"{key}[{index}]={names[index]!r}" for key, names in beside.items() if len(names) == len(node)]
                stack.append((value, f"{path}[{index}]", labels + named, {}))
    return None


def check_finite(data: Any, what: str = "the result") -> None:
    """Raise a LensError naming the first NaN/Inf in `data` (a JSON-shaped value)."""
    found = find_non_finite(data)
    if found is None:
        return
    path, value, labels = found
    kind = "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
    where = f" ({', '.join(labels)})" if labels else ""
    raise LensError(
        f"{what} holds a non-finite number: {kind} at {path}{where}, where it first appears. The model produced it "
        "(corrupted weights, or a dtype that overflows): reload the model, or load it in float32."
    )
