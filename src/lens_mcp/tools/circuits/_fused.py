"""Edge attribution's gradient pass without TransformerLens's per-head copies of the residual stream.

With `use_split_qkv_input`, TransformerLens repeats each layer's residual stream once per query and key/value
head, normalizes every copy and projects it through that head's slice of the weights, so that each head's input
is a hook point; the forward and backward passes then carry [rows, positions, heads, d_model] tensors at every
layer. The gradient at head h's query input is J_ln1(x)^T (W_Q[h]^T g_h), where g_h is the gradient at head h's
slice of the query projection's output and J_ln1(x) is the Jacobian of the layer's first norm at the residual
stream x. This pass runs the model's own forward pass, takes g at the q/k/v projections' outputs, multiplies by
each head's weight slice and applies the norm's vector-Jacobian product once for all the layer's heads (batched
over them). Head outputs are read from the output projection's input (z), times each head's slice of W_O.

It applies where a layer's attention is plain q, k, v and o linear projections behind one norm (the Llama,
Mistral, Qwen and GPT-NeoX families among others; not GPT-2's joint Conv1D projection), and `gradient_pass`
checks it once per model against the split pass on a probe batch; elsewhere the split pass runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lens_mcp.errors import LensError
from lens_mcp.tools.circuits._graph import Graph
from lens_mcp.tools.core.context import ToolContext


@dataclass(frozen=True)
class FusedLayer:
    norm: torch.nn.Module
    """The norm in front of the attention (what TransformerLens's split pass applies to every head's copy)."""
    w_q: torch.Tensor
    """[heads, d_head, d_model]: query head h's rows of the query projection."""
    w_k: torch.Tensor
    """[kv_heads, d_head, d_model]"""
    w_v: torch.Tensor
    """[kv_heads, d_head, d_model]"""
    w_o: torch.Tensor
    """[heads, d_head, d_model]: z_h @ w_o[h] is head h's output."""


def _head_rows(linear: Any, heads: int, d_head: int, d_model: int) -> torch.Tensor | None:
    """A q/k/v projection's weight as [heads, d_head, d_model], or None where it is not a plain linear map of
    that shape."""
    weight = getattr(linear, "weight", None)
    if not isinstance(linear, torch.nn.Linear) or weight is None or tuple(weight.shape) != (heads * d_head, d_model):
        return None
    return weight.detach().view(heads, d_head, d_model)


def fused_layers(tc: ToolContext, graph: Graph) -> list[FusedLayer] | None:
    """Every layer's norm and per-head weights, or None where some layer is not plain linear q/k/v/o behind a
    norm that TransformerLens's split pass reads (then only the split pass is exact)."""
    view = tc.view
    d_model, d_head = view.d_model, view.d_head
    layers = []
    for layer in range(graph.n_layers):
        block = view.block(layer)
        attn = getattr(block, "attn", None)
        norm = getattr(getattr(block, "ln1", None), "original_component", None)
        if attn is None or not isinstance(norm, torch.nn.Module) or not getattr(attn, "supports_split_qkv_fork", False):
            return None
        hf_attn = getattr(attn, "original_component", None)
        if getattr(hf_attn, "key_multiplier", None) is not None:
            return None
        parts = [getattr(getattr(attn, name, None), "original_component", None) for name in ("q", "k", "v", "o")]
        w_q = _head_rows(parts[0], graph.n_heads, d_head, d_model)
        w_k = _head_rows(parts[1], graph.n_kv, d_head, d_model)
        w_v = _head_rows(parts[2], graph.n_kv, d_head, d_model)
        o = parts[3]
        o_weight = getattr(o, "weight", None)
        if w_q is None or w_k is None or w_v is None or not isinstance(o, torch.nn.Linear) or o_weight is None:
            return None
        if tuple(o_weight.shape) != (d_model, graph.n_heads * d_head):
            return None
        w_o = o_weight.detach().T.reshape(graph.n_heads, d_head, d_model)
        names = [f"blocks.{layer}.attn.{p}.hook_out" for p in "qkv"] + [
            f"blocks.{layer}.attn.o.hook_in",
            f"blocks.{layer}.ln1.hook_in",
        ]
        if not all(name in view.hook_dict for name in names):
            return None
        layers.append(FusedLayer(norm, w_q, w_k, w_v, w_o))
    return layers


@dataclass
class FusedHooks:
    hooks: list[tuple[str, Callable[..., Any]]]
    """The forward hooks: head outputs into the writer store, the norms' inputs kept, zero leaves at the q/k/v
    projections' outputs and at the MLP and logits readers."""
    leaves: dict[str, torch.Tensor]
    norm_inputs: dict[int, torch.Tensor]


def fused_hooks(graph: Graph, layers: list[FusedLayer], store: torch.Tensor) -> FusedHooks:
    """Hooks for a fused gradient pass writing head outputs into store[rows, positions, writers, d_model]."""
    leaves: dict[str, torch.Tensor] = {}
    norm_inputs: dict[int, torch.Tensor] = {}

    def leaf_hook(name: str) -> Callable[..., torch.Tensor]:
        def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            leaf = torch.zeros_like(act, requires_grad=True)
            leaves[name] = leaf
            return act + leaf

        return hook

    def heads_hook(layer: int) -> Callable[..., None]:
        first, w_o = graph.writer_index(layer, 0), layers[layer].w_o

        def hook(act: torch.Tensor, hook: Any = None) -> None:
            with torch.no_grad():
                z = act.detach().view(*act.shape[:2], w_o.shape[0], w_o.shape[1])
                store[:, :, first : first + w_o.shape[0]] = torch.einsum("bshe,hed->bshd", z, w_o).to(store.dtype)

        return hook

    def norm_hook(layer: int) -> Callable[..., None]:
        def hook(act: torch.Tensor, hook: Any = None) -> None:
            norm_inputs[layer] = act.detach()

        return hook

    hooks: list[tuple[str, Callable[..., Any]]] = []
    for layer in range(graph.n_layers):
        hooks.append((f"blocks.{layer}.ln1.hook_in", norm_hook(layer)))
        hooks += [(f"blocks.{layer}.attn.{p}.hook_out", leaf_hook(f"{layer}.{p}")) for p in "qkv"]
        hooks.append((f"blocks.{layer}.attn.o.hook_in", heads_hook(layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_in", leaf_hook(f"{layer}.mlp")))
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", leaf_hook("logits")))
    return FusedHooks(hooks, leaves, norm_inputs)


def reader_gradients(
    graph: Graph, layers: list[FusedLayer], state: FusedHooks, found: dict[str, torch.Tensor | None], out: torch.Tensor
) -> None:
    """Every reader's input gradient into out[readers, rows, positions, d_model], from the gradients `found` at
    the leaves: the q/k/v projections' gradients mapped back through each head's weight slice and the norm."""
    rows, n_pos, d_model = int(out.shape[1]), int(out.shape[2]), int(out.shape[3])

    def at(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in state.leaves:
            raise LensError(f"edge attribution's fused gradient pass: the hook point of {name} did not fire")
        grad = found.get(name)  # None: the metric does not depend on that reader
        return torch.zeros(shape, device=out.device) if grad is None else grad.reshape(shape)

    for layer, weights in enumerate(layers):
        base = graph.reader_base(layer)
        heads, d_head = int(weights.w_q.shape[0]), int(weights.w_q.shape[1])
        kv = int(weights.w_k.shape[0])
        # [heads + 2 kv, rows * positions, d_model]: each head's projection gradient times its weight slice
        cotangents = torch.empty(heads + 2 * kv, rows * n_pos, d_model, device=out.device, dtype=weights.w_q.dtype)
        for name, weight, first in (("q", weights.w_q, 0), ("k", weights.w_k, heads), ("v", weights.w_v, heads + kv)):
            count = int(weight.shape[0])
            grad = at(f"{layer}.{name}", (rows * n_pos, count, d_head)).to(weight.dtype).transpose(0, 1)
            torch.bmm(grad, weight, out=cotangents[first : first + count])
        cotangents = cotangents.view(heads + 2 * kv, rows, n_pos, d_model)
        x = state.norm_inputs[layer].detach().requires_grad_(True)
        with torch.enable_grad():
            y = weights.norm(x)
            (through,) = torch.autograd.grad(y, x, cotangents.to(y.dtype), is_grads_batched=True)
        out[base : base + heads + 2 * kv] = through
        out[base + graph.readers_per_layer - 1] = at(f"{layer}.mlp", (rows, n_pos, d_model))
    out[len(graph.readers) - 1] = at("logits", (rows, n_pos, d_model))
