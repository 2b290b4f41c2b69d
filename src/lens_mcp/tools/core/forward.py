"""Forward passes that keep only what a tool asked for.

`cached_forward`: TransformerLens's `run_with_cache` with an explicit list of hook names (never the whole
cache), optionally sliced to a few positions and stopped early, under `torch.no_grad()`.
`summarizing_forward`: one forward pass whose hooks reduce each requested activation to a small summary as
it is produced, so memory holds one activation at a time whatever was asked for.
Both attach hooks only through TransformerLens context managers, so nothing outlives the call.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from lens_mcp.tools.core.context import ToolContext

_GATED_WARNING = r".*gated-off hook name"


def cached_forward(
    tc: ToolContext,
    tokens: torch.Tensor,
    names: Iterable[str],
    *,
    positions: Sequence[int] | None = None,
    stop_at_layer: int | None = None,
) -> tuple[torch.Tensor | None, Any]:
    """(logits, ActivationCache) for `tokens`, caching exactly `names`.

    positions: keep only these positions of each cached activation (query positions for patterns);
    the logits stay whole. stop_at_layer: run blocks < stop_at_layer only; logits are then None."""
    name_list = list(dict.fromkeys(names))
    kwargs: dict[str, Any] = {}
    if positions is not None:
        kwargs["pos_slice"] = list(positions)
    if stop_at_layer is not None and stop_at_layer < int(tc.cfg.n_layers):
        kwargs["stop_at_layer"] = stop_at_layer
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GATED_WARNING)
        output, cache = tc.bridge.run_with_cache(tokens, names_filter=name_list, **kwargs)
    return (None if "stop_at_layer" in kwargs else output), cache


def summarizing_forward(
    tc: ToolContext, tokens: torch.Tensor, names: Iterable[str], summarize: Callable[[str, torch.Tensor], None]
) -> torch.Tensor:
    """Run the model once with a hook on each of `names` that calls `summarize(name, activation)`;
    returns the logits. The activation is the tensor run_with_cache would store (first element of a tuple)."""

    def make_hook(name: str) -> Callable[..., Any]:
        def hook(activation: Any, hook: Any) -> Any:
            tensor = activation[0] if isinstance(activation, tuple) else activation
            if isinstance(tensor, torch.Tensor):
                summarize(name, tensor.detach())
            return activation

        return hook

    fwd_hooks = [(name, make_hook(name)) for name in dict.fromkeys(names)]
    with torch.no_grad(), tc.bridge.hooks(fwd_hooks=fwd_hooks):
        return tc.bridge(tokens)


def unembed(tc: ToolContext, normalized: torch.Tensor) -> torch.Tensor:
    """Logits from vectors that already went through the final norm: `x @ W_U + b_U`, then the
    adapter's output transform (e.g. logit soft-capping) as TransformerLens's logit_readout applies it."""
    bridge = tc.bridge
    weight = bridge.W_U
    logits = normalized.to(device=weight.device, dtype=weight.dtype) @ weight
    bias = getattr(bridge, "b_U", None)
    if bias is not None:
        logits = logits + bias
    transform = getattr(getattr(bridge, "adapter", None), "apply_output_logits_transform", None)
    return transform(logits) if callable(transform) else logits


def final_norm(tc: ToolContext, vectors: torch.Tensor) -> torch.Tensor:
    """The model's own final norm applied to each row of `vectors` (n, d_model), statistics recomputed per row."""
    ln_final = getattr(tc.bridge, "ln_final", None)
    if ln_final is None:
        return vectors
    return ln_final(vectors.unsqueeze(0)).squeeze(0)
