"""Forward passes that keep only what a tool asked for.

`cached_forward`: TransformerLens's `run_with_cache` with an explicit list of hook names (never the whole
cache), optionally sliced to a few positions and stopped early, under `torch.no_grad()`.
`summarizing_forward`: one forward pass whose hooks reduce each requested activation to a small summary as
it is produced, so memory holds one activation at a time whatever was asked for.
Both attach hooks only through TransformerLens context managers, so nothing outlives the call.
`readout` (final norm -> unembedding -> the architecture's output transform) is the one way every tool turns
a residual-stream vector into logits; `final_norm`, `unembed` and `output_transform` are its steps.
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
    if stop_at_layer is not None and stop_at_layer < tc.view.n_layers:
        kwargs["stop_at_layer"] = stop_at_layer
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GATED_WARNING)
        output, cache = tc.view.run_with_cache(tokens, names_filter=name_list, **kwargs)
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
    with torch.no_grad(), tc.view.hooks(fwd_hooks=fwd_hooks):
        logits = tc.view(tokens)
    assert isinstance(logits, torch.Tensor)
    return logits


class _StopAtFinalResidual(Exception):
    """Raised by the last block's hook_resid_post hook: the residual is kept, the final norm and the full
    unembedding (every position's logits) are never computed."""


def final_residual(
    tc: ToolContext, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = ()
) -> torch.Tensor:
    """The residual stream after the last block [rows, positions, d_model] (what `readout` turns into logits),
    with `fwd_hooks` attached; the pass stops there. Gradients flow through it where they are enabled, so a
    metric read at one position with `readout` differentiates without the unembedding of every position."""
    kept: list[torch.Tensor] = []

    def keep(resid: torch.Tensor, hook: Any = None) -> None:
        kept.append(resid)
        raise _StopAtFinalResidual

    name = f"blocks.{tc.view.n_layers - 1}.hook_resid_post"
    try:
        with tc.view.hooks(fwd_hooks=[*fwd_hooks, (name, keep)]):  # after the caller's hooks at the same point
            tc.view(tokens)
    except _StopAtFinalResidual:
        pass
    if not kept:
        raise RuntimeError(f"the forward pass never reached {name}")
    return kept[0]


def output_transform(tc: ToolContext, logits: torch.Tensor) -> torch.Tensor:
    """The architecture's transform of the unembedding's output (Gemma's soft cap, Cohere's logit scale,
    Granite's logits scaling, ...): the adapter's `apply_output_logits_transform`, exactly what
    TransformerLens's `logit_readout` applies. Every transform TransformerLens 4.3 declares is elementwise,
    so it may be applied to a subset of the vocabulary's columns."""
    return tc.view.output_transform(logits)


def output_slope(tc: ToolContext) -> tuple[float, bool]:
    """(slope at 0, linear) of the output transform: a pure logit scale s gives (s, True); a soft cap
    c * tanh(s * x / c) gives (s, False). Linear parts of the readout commute with attribution; the
    non-linear part (the cap) does not, so attributions read the pre-cap logits `slope * raw`."""
    h = 1e-3
    probe = torch.tensor([-h, h, 1.0, -2.0, 7.0], dtype=torch.float64)
    out = output_transform(tc, probe.clone()).to(torch.float64)
    slope = float((out[1] - out[0]) / (2 * h))
    linear = bool(torch.allclose(out, slope * probe, rtol=1e-6, atol=1e-9))
    return slope, linear


def unembed(
    tc: ToolContext, normalized: torch.Tensor, ids: Sequence[int] | None = None, *, transform: bool = True
) -> torch.Tensor:
    """Logits from vectors (..., d_model) that already went through the final norm: `x @ W_U + b_U`, then
    the output transform (unless transform=False). ids: only these vocabulary columns, in that order."""
    view = tc.view
    weight = view.W_U if ids is None else view.W_U[:, list(ids)]
    logits = normalized.to(device=weight.device, dtype=weight.dtype) @ weight
    bias = view.b_U
    if bias is not None:
        logits = logits + (bias if ids is None else bias[list(ids)])
    return output_transform(tc, logits) if transform else logits


def final_norm(tc: ToolContext, vectors: torch.Tensor) -> torch.Tensor:
    """The model's own final norm applied to each vector (..., d_model), statistics recomputed per vector."""
    ln_final = tc.view.ln_final
    if ln_final is None:
        return vectors
    shape = vectors.shape
    return ln_final(vectors.reshape(1, -1, shape[-1])).reshape(shape)


def readout(
    tc: ToolContext, resid: torch.Tensor, ids: Sequence[int] | None = None, *, transform: bool = True
) -> torch.Tensor:
    """The one readout path: residual stream after the last block (..., d_model) -> final norm ->
    unembedding -> the architecture's output transform, i.e. the model's logits (only columns `ids` if
    given). The same computation as TransformerLens's `logit_readout`, without its full-vocabulary
    softmax per call, so that a metric reading two columns costs two columns."""
    return unembed(tc, final_norm(tc, resid), ids, transform=transform)
