"""Head ablation shared by the tools that ablate heads (ablate_heads, generate, induction_scores): the modes,
the head list check and the hooks that replace a head's output z."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.validation import resolve_head_pairs

MODES = ("zero", "mean")
"""Modes that need only the prompt itself (what generate's head ablation offers)."""
ALL_MODES = ("zero", "mean", "resample", "corrupted_mean")


def resolve_heads(tc: ToolContext, heads: object, arg: str = "heads") -> list[tuple[int, int]]:
    """[[layer, head], ...] checked against the loaded model, deduplicated, in the order given."""
    return resolve_head_pairs(heads, tc.view.n_layers, tc.view.n_heads, arg)


def ablation_hooks(
    rows: Sequence[Sequence[tuple[int, int]]],
    replacement: Callable[..., Any],
    row_keys: Sequence[Any] | None = None,
) -> list[tuple[str, Callable[..., torch.Tensor]]]:
    """Hooks on hook_z that, in batch row r, replace each head in rows[r] by its replacement at every position:
    replacement(layer, head) (0 or a [d_head] mean), or with `row_keys`, replacement(row_keys[r], layer, head)
    (0, a [d_head] mean or a [pos, d_head] activation for that row's prompt)."""
    by_layer: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row, heads in enumerate(rows):
        for layer, head in heads:
            by_layer[layer].append((row, head))

    def make(layer: int, entries: list[tuple[int, int]]) -> Callable[..., torch.Tensor]:
        def hook(z: torch.Tensor, hook: Any = None) -> torch.Tensor:
            for row, head in entries:
                if row_keys is None:
                    z[row, :, head] = replacement(layer, head)
                else:
                    z[row, :, head] = replacement(row_keys[row], layer, head)
            return z

        return hook

    return [(hook_name("z", layer), make(layer, entries)) for layer, entries in by_layer.items()]
