"""ModelView: the one typed interface between the tools and the engine that runs the model.

Tools read the model only through this class: its sizes, the architecture's capabilities (set here, in one
place, from the engine's config and modules), its hook points, its weights, and a forward pass with hooks.
Today the engine is TransformerLens's `TransformerBridge` in compatibility mode; docs/ARCHITECTURE.md says
what a second engine (nnsight, say) would implement to serve the same tools.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch

from lens_mcp.errors import LensError

HookFn = Callable[..., Any]
Hooks = Sequence[tuple[str | Callable[[str], bool], HookFn]]
NormKind = Literal["layernorm", "rmsnorm", "none"]


@dataclass(frozen=True)
class Capabilities:
    """What the architecture does that changes how a tool must read or patch it."""

    grouped_query: bool
    """Fewer key/value heads than query heads: k and v are computed per key/value head."""
    kv_heads_per_layer: tuple[int, ...] | None
    """Key/value head counts that differ by layer (a few hybrids), else None (every layer has n_kv_heads)."""
    post_sublayer_norms: bool
    """Norms applied to a sublayer's output before it joins the residual stream (Gemma 2's ln1_post/ln2_post)."""
    parallel_attn_mlp: bool
    """Attention and MLP read the same residual stream (GPT-J, NeoX, Phi)."""
    attn_only: bool
    gated_mlp: bool
    final_norm: NormKind
    final_norm_centres: bool
    """The final norm subtracts the mean (LayerNorm) rather than only scaling (RMSNorm)."""
    output_transform: bool
    """The architecture transforms the unembedding's output (soft cap, logit scale)."""
    encoder_decoder: bool
    residual_centred: bool = False
    """The residual stream is held centred (each vector's mean over d_model removed): compatibility mode centres
    the writing weights of LayerNorm models, which changes no output (every LayerNorm removes that mean) but
    shifts the stream an SAE trained on the Hugging Face model's residual reads."""


class ModelView:
    """A loaded model as the tools see it. Construct it around a TransformerLens bridge in compatibility mode."""

    def __init__(self, bridge: Any) -> None:
        self._bridge = bridge
        self._cfg = bridge.cfg

    # Sizes ---------------------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self._cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self._cfg.n_heads)

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads per layer: n_heads without grouped-query attention. A model whose layers have
        different key/value head counts is refused here, so that no tool maps heads to groups wrongly."""
        per_layer = getattr(self._cfg, "per_layer_num_key_value_heads", None)
        if per_layer and len(set(per_layer)) > 1:
            raise LensError(
                "this model has a different number of key/value heads per layer; reading or patching "
                "key/value heads is not supported on it (query heads, q inputs and head outputs are)."
            )
        return int(getattr(self._cfg, "n_key_value_heads", None) or self._cfg.n_heads)

    def kv_head_of(self, head: int) -> int:
        """The key/value head a query head reads under grouped-query attention (the head itself otherwise)."""
        return head // (self.n_heads // self.n_kv_heads)

    def query_heads_of(self, kv_head: int) -> list[int]:
        group = self.n_heads // self.n_kv_heads
        return list(range(kv_head * group, (kv_head + 1) * group))

    @property
    def d_model(self) -> int:
        return int(self._cfg.d_model)

    @property
    def d_head(self) -> int:
        return int(self._cfg.d_head)

    @property
    def d_mlp(self) -> int | None:
        """MLP width (None for attention-only models)."""
        if bool(getattr(self._cfg, "attn_only", False)):
            return None
        value = getattr(self._cfg, "d_mlp", None)
        return int(value) if value else None

    @property
    def d_vocab(self) -> int:
        return int(self._cfg.d_vocab)

    @property
    def n_ctx(self) -> int:
        return int(self._cfg.n_ctx)

    @property
    def device(self) -> torch.device:
        return torch.device(self._cfg.device)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self._bridge.parameters())).dtype

    @property
    def normalization_type(self) -> str | None:
        return self._cfg.normalization_type

    @property
    def architecture(self) -> str:
        return str(getattr(self._cfg, "architecture", None) or type(self._bridge.original_model).__name__)

    # Capabilities --------------------------------------------------------------------------------------------
    @cached_property
    def capabilities(self) -> Capabilities:
        cfg, bridge = self._cfg, self._bridge
        per_layer = getattr(cfg, "per_layer_num_key_value_heads", None)
        norm = cfg.normalization_type
        final: NormKind = "layernorm" if norm in ("LN", "LNPre") else "rmsnorm" if norm in ("RMS", "RMSPre") else "none"
        if final == "layernorm" and getattr(cfg, "final_rms", False):
            final = "rmsnorm"
        if "ln_final.hook_scale" not in self.hook_dict:
            final = "none"
        transform = getattr(getattr(bridge, "adapter", None), "apply_output_logits_transform", None)
        return Capabilities(
            grouped_query=self.n_kv_heads != self.n_heads,
            kv_heads_per_layer=tuple(int(n) for n in per_layer) if per_layer else None,
            post_sublayer_norms="blocks.0.ln1_post.hook_scale" in self.hook_dict
            or "blocks.0.ln2_post.hook_scale" in self.hook_dict,
            parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
            attn_only=bool(getattr(cfg, "attn_only", False)),
            gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
            final_norm=final,
            final_norm_centres=norm in ("LN", "LNPre") and not getattr(cfg, "final_rms", False),
            output_transform=callable(transform),
            encoder_decoder=any(hasattr(bridge, name) for name in ("encoder_blocks", "decoder_blocks")),
            residual_centred=norm in ("LN", "LNPre"),
        )

    def direct_path_obstruction(self, sender_layers: Sequence[int]) -> str | None:
        """Why a head's residual write is not `z @ W_O` into the next blocks' inputs (no attention in a block,
        post-norm, scaled-residual or parallel blocks), as TransformerLens's direct path patching refuses;
        None when direct paths are exact here."""
        from transformer_lens.patching import _check_direct_path_support  # private, version-pinned

        try:
            _check_direct_path_support(self._bridge, list(sender_layers), "q")
        except ValueError as exc:
            return str(exc)
        return None

    def residual_write_obstruction(self) -> str | None:
        """Why a head's or MLP's output is not what joins the residual stream (a norm after the sublayer, a
        scaled residual add, a parallel mixer), as TransformerLens's edge attribution refuses; None when the
        residual stream is a plain sum of the embedding, head and MLP writes."""
        from transformer_lens.tools.analysis.attribution_patching import (  # private, version-pinned
            _attention_write_obstruction,
        )

        detail = _attention_write_obstruction(self._bridge)
        if detail is None and self.capabilities.post_sublayer_norms:
            detail = "a norm after each sublayer"
        return detail

    @contextlib.contextmanager
    def per_head_hooks(self, inputs: bool = True, split: bool = True) -> Iterator[None]:
        """Switch on the per-head hook points (attn.hook_result per head, attn.hook_{q,k,v}_input per query or
        key/value head, hook_mlp_in) for the block, restoring the model's own settings afterwards. Memory: every
        per-head tensor is [batch, pos, heads, d_model] while they are on. inputs=False: only the outputs
        (attn.hook_result), for passes that read what heads write and not what they read (a cheaper forward).
        split=False: only hook_mlp_in (with `inputs`), no per-head tensors, for passes that read the heads through
        their own q/k/v/o projections' hook points."""
        bridge, cfg = self._bridge, self._cfg
        saved = (
            cfg.use_attn_result,
            cfg.use_split_qkv_input,
            cfg.use_hook_mlp_in,
            bool(getattr(cfg, "use_attn_in", False)),
        )
        try:
            if saved[3]:
                bridge.set_use_attn_in(False)
            bridge.set_use_attn_result(split)
            bridge.set_use_split_qkv_input(inputs and split)
            bridge.set_use_hook_mlp_in(inputs)
            yield
        finally:
            bridge.set_use_attn_result(saved[0])
            bridge.set_use_split_qkv_input(saved[1])
            bridge.set_use_hook_mlp_in(saved[2])
            if saved[3]:
                bridge.set_use_attn_in(True)

    @property
    def per_head_hooks_on(self) -> bool:
        return bool(self._cfg.use_split_qkv_input)

    def has_post_norm(self, layer: int, sublayer: Literal["ln1", "ln2"]) -> bool:
        return f"blocks.{layer}.{sublayer}_post.hook_scale" in self.hook_dict

    def post_norm(self, layer: int, sublayer: Literal["ln1", "ln2"]) -> Any:
        """The norm applied to a sublayer's output before the residual add, or None."""
        if not self.has_post_norm(layer, sublayer):
            return None
        return getattr(self.block(layer), f"{sublayer}_post", None)

    # Tokenizer -----------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self._bridge.tokenizer

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True, truncate: bool = True) -> torch.Tensor:
        tokens = self._bridge.to_tokens(text, prepend_bos=prepend_bos, truncate=truncate)
        assert isinstance(tokens, torch.Tensor)
        return tokens

    # Hook points ---------------------------------------------------------------------------------------------
    @property
    def hook_dict(self) -> Mapping[str, Any]:
        return self._bridge.hook_dict

    def fireable(self, name: str) -> bool:
        """False for hook points the engine gates off (attn.hook_result, hook_*_input...): they never fire."""
        gated = getattr(self._bridge, "_gated_hook_reason", None)
        point = self.hook_dict.get(name)
        if point is None:
            return False
        return gated is None or gated(getattr(point, "name", None) or name) is None

    # Modules and weights -------------------------------------------------------------------------------------
    @property
    def blocks(self) -> Sequence[Any]:
        return self._bridge.blocks

    def block(self, layer: int) -> Any:
        return self._bridge.blocks[layer]

    def residual_multiplier(self, layer: int) -> float:
        """What a block multiplies its sublayers' writes by before adding them to the stream (Granite), else 1."""
        return float(getattr(self.block(layer), "residual_contribution_scale", 1.0) or 1.0)

    @property
    def ln_final(self) -> Any:
        """The final norm module (None when the model has none)."""
        return getattr(self._bridge, "ln_final", None)

    @property
    def W_U(self) -> torch.Tensor:
        return self._bridge.W_U

    @property
    def b_U(self) -> torch.Tensor | None:
        bias = getattr(self._bridge, "b_U", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @property
    def W_O(self) -> torch.Tensor:
        return self._bridge.W_O

    def stacked_weight(self, name: str) -> torch.Tensor | None:
        """A per-layer weight stacked over layers (W_Q, b_O, ...), or None where the model has none."""
        try:
            value = getattr(self._bridge, name)
        except (AttributeError, NotImplementedError, RuntimeError):
            return None
        return value if isinstance(value, torch.Tensor) else None

    def attention_circuits(self) -> tuple[list[int], Any, Any]:
        """(attention layer indices, OV circuits, QK circuits) as FactoredMatrix stacks [layer, head, ...]."""
        indices, ov = self._bridge.OV_for_attn_layers()
        _, qk = self._bridge.QK_for_attn_layers()
        return list(indices), ov, qk

    def output_transform(self, logits: torch.Tensor) -> torch.Tensor:
        """The architecture's elementwise transform of the unembedding's output (identity when none)."""
        transform = getattr(getattr(self._bridge, "adapter", None), "apply_output_logits_transform", None)
        if not callable(transform):
            return logits
        transformed = transform(logits)
        assert isinstance(transformed, torch.Tensor)
        return transformed

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self._bridge.parameters()

    def named_modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        return self._bridge.named_modules()

    @property
    def training(self) -> bool:
        return bool(self._bridge.training)

    # Running -------------------------------------------------------------------------------------------------
    def __call__(self, tokens: torch.Tensor, **kwargs: Any) -> Any:
        """A forward pass (logits by default; TransformerLens's keyword arguments such as stop_at_layer)."""
        return self._bridge(tokens, **kwargs)

    def hooks(self, fwd_hooks: Hooks = (), bwd_hooks: Hooks = ()) -> contextlib.AbstractContextManager[Any]:
        """Hooks attached for the duration of a `with` block, removed on exit even when the block raises."""
        return self._bridge.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks))

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: Hooks = (), **kwargs: Any) -> Any:
        return self._bridge.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks), **kwargs)

    def run_with_cache(self, tokens: torch.Tensor, **kwargs: Any) -> tuple[Any, Any]:
        """(logits, ActivationCache); always pass names_filter: an unfiltered cache holds every alias."""
        return self._bridge.run_with_cache(tokens, **kwargs)
