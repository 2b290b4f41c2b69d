"""Index validation shared by every tool: layers, heads, positions, top_k. Errors name the argument,
the valid range, and the fix. Negative positions count from the end, as in Python."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lens_mcp.errors import LensError


def check_int(value: object, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise LensError(f"{arg}: expected an integer, got {value!r:.80}.")
    return value


def resolve_layer(layer: int, n_layers: int, arg: str = "layer") -> int:
    layer = check_int(layer, arg)
    if not -n_layers <= layer < n_layers:
        raise LensError(
            f"{arg}={layer} is out of range: the model has {n_layers} layers, so use 0..{n_layers - 1} "
            f"(or -1 for the last)."
        )
    return layer % n_layers


def resolve_head(head: int, n_heads: int, arg: str = "head") -> int:
    head = check_int(head, arg)
    if not -n_heads <= head < n_heads:
        raise LensError(f"{arg}={head} is out of range: each layer has {n_heads} heads, so use 0..{n_heads - 1}.")
    return head % n_heads


def resolve_position(position: int, n_tokens: int, arg: str = "position") -> int:
    position = check_int(position, arg)
    if not -n_tokens <= position < n_tokens:
        raise LensError(
            f"{arg}={position} is out of range for a prompt of {n_tokens} tokens (BOS included): "
            f"use 0..{n_tokens - 1}, or -1 for the last token. Call tokenize to see the positions."
        )
    return position % n_tokens


def resolve_many(values: Sequence[int] | None, size: int, arg: str, resolve: object) -> list[int]:
    """Resolve an optional list of indices (None = all), deduplicated, in the order given."""
    if values is None:
        return list(range(size))
    if not isinstance(values, (list, tuple)):
        raise LensError(f"{arg}: expected a list of integers (e.g. {arg}=[0, -1]) or null for all, got {values!r:.80}.")
    if len(values) == 0:
        raise LensError(f"{arg}: got an empty list; omit {arg} (null) to use all of them.")
    resolved: list[int] = []
    for value in values:
        index = resolve(value, size, arg)  # type: ignore[operator]
        if index not in resolved:
            resolved.append(index)
    return resolved


def resolve_layers(layers: Sequence[int] | None, n_layers: int, arg: str = "layers") -> list[int]:
    return resolve_many(layers, n_layers, arg, resolve_layer)


def resolve_positions(positions: Sequence[int] | None, n_tokens: int, arg: str = "positions") -> list[int]:
    return resolve_many(positions, n_tokens, arg, resolve_position)


def check_top_k(top_k: int, cap: int, arg: str = "top_k") -> int:
    top_k = check_int(top_k, arg)
    if not 1 <= top_k <= cap:
        raise LensError(f"{arg}={top_k} is out of range: use 1..{cap}.")
    return top_k


def check_range(value: int, low: int, high: int, arg: str, hint: str = "") -> int:
    value = check_int(value, arg)
    if not low <= value <= high:
        raise LensError(f"{arg}={value} is out of range: use {low}..{high}.{(' ' + hint) if hint else ''}")
    return value


def resolve_head_pairs(pairs: object, n_layers: int, n_heads: int, arg: str = "heads") -> list[tuple[int, int]]:
    """[[layer, head], ...] checked against the model, deduplicated, in the order given (negative indices count
    from the end)."""
    example = f"e.g. {arg}=[[1, 2], [0, 3]]"
    if not isinstance(pairs, (list, tuple)) or len(pairs) == 0:
        raise LensError(f"{arg}: expected a non-empty list of [layer, head] pairs, {example}.")
    resolved: list[tuple[int, int]] = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise LensError(f"{arg}[{index}]={pair!r:.80}: each entry must be a [layer, head] pair, {example}.")
        layer = resolve_layer(pair[0], n_layers, f"{arg}[{index}][0] (layer)")
        head = resolve_head(pair[1], n_heads, f"{arg}[{index}][1] (head)")
        if (layer, head) not in resolved:
            resolved.append((layer, head))
    return resolved


def check_positions(positions: object) -> list[int] | None:
    """positions as a list of integers (or None), checked before anything reads them."""
    if positions is None:
        return None
    if not isinstance(positions, (list, tuple)):
        raise LensError(
            f"positions: expected a list of integers (e.g. positions=[0, -1]) or null for all, got {positions!r:.80}."
        )
    return [check_int(p, "positions") for p in positions]
