"""Independent references for the component readers' tests (TransformerLens's own functions and hand
computations), shared by the fast and the slow tests."""

from __future__ import annotations

from typing import Any

import torch

from lens_mcp.tools.core.context import ToolContext
from tests.shared import reference_direction, reference_head_grid, reference_run, token_id


def full_cache(tc: ToolContext, prompt: str) -> tuple[torch.Tensor, torch.Tensor, Any]:
    bridge = tc.model.bridge
    tokens = bridge.to_tokens(prompt)
    suffixes = ("hook_z", "hook_v", "hook_pattern", "hook_scale", "hook_post", "hook_mlp_out", "hook_embed")
    suffixes += ("hook_pos_embed", "hook_resid_pre", "hook_resid_post")
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith(suffixes))
    return tokens, logits, cache


def head_logits(tc: ToolContext, cache: Any, pos: int, layer: int, head: int) -> torch.Tensor:
    """TransformerLens: the head's output (stack_head_results), apply_ln_to_stack at pos, then W_U."""
    with torch.no_grad():
        stack = cache.stack_head_results(layer=-1, pos_slice=pos)
        stack = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=pos)
        return stack[layer * tc.model.cfg.n_heads + head, 0] @ tc.model.bridge.W_U.detach()


def ln_logits(cache: Any, vector: torch.Tensor, pos: int, W_U: torch.Tensor) -> torch.Tensor:
    """Any residual-stream vector through TransformerLens's apply_ln_to_stack at pos, then W_U."""
    with torch.no_grad():
        normed = cache.apply_ln_to_stack(vector[None, None, None, :], layer=-1, pos_slice=pos)
        return normed[0, 0, 0] @ W_U


def source_reference(tc: ToolContext, prompt: str, answer: str, wrong: str, layer: int, head: int) -> torch.Tensor:
    """Each source's part by hand: pattern x value (the head's kv group) @ W_O, through apply_ln_to_stack at the
    last position, projected on W_U[:, answer] - W_U[:, wrong]."""
    tokens, _, cache = full_cache(tc, prompt)
    pos = tokens.shape[-1] - 1
    n_kv = int(getattr(tc.model.cfg, "n_key_value_heads", None) or tc.model.cfg.n_heads)
    kv = head // (tc.model.cfg.n_heads // n_kv)
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head, pos]  # (sources,)
    values = cache[f"blocks.{layer}.attn.hook_v"][0, :, kv]  # (sources, d_head)
    writes = pattern[:, None] * (values @ tc.model.bridge.blocks[layer].attn.W_O[head].detach())  # (sources, d_model)
    with torch.no_grad():
        normed = cache.apply_ln_to_stack(writes[:, None, None, :], layer=-1, pos_slice=pos)[:, 0, 0]
    return normed @ reference_direction(tc, answer, wrong)


def reference_grid(tc: ToolContext, prompt: str, answer: str, wrong: str) -> tuple[torch.Tensor, float]:
    tokens, logits, cache = reference_run(tc, prompt)
    pos = tokens.shape[-1] - 1
    grid = reference_head_grid(tc, cache, pos, reference_direction(tc, answer, wrong))
    actual = float(logits[0, pos, token_id(tc, answer)] - logits[0, pos, token_id(tc, wrong)])
    return grid, actual


def neuron_reference(tc: ToolContext, prompt: str, answer: str, wrong: str | None) -> tuple[torch.Tensor, list[str]]:
    """TransformerLens's get_full_resid_decomposition(expand_neurons=True, apply_ln=True) at the last position,
    projected on the answer direction: one value per neuron (labels 'L{l}N{n}') and per other component."""
    tokens, _, cache = full_cache(tc, prompt)
    pos = tokens.shape[-1] - 1
    with torch.no_grad():
        stack, labels = cache.get_full_resid_decomposition(
            expand_neurons=True, apply_ln=True, pos_slice=pos, return_labels=True
        )
        values = (stack @ reference_direction(tc, answer, wrong)).reshape(len(labels))
    return values, labels


def hand_gated_activations(tc: ToolContext, prompt: str, layer: int) -> torch.Tensor:
    """silu(x @ W_gate) * (x @ W_in) by hand, from the MLP's input x at the last position (not hook_post)."""
    name = f"blocks.{layer}.mlp.hook_in"
    with torch.no_grad():
        _, cache = tc.model.bridge.run_with_cache(tc.model.bridge.to_tokens(prompt), names_filter=[name])
        x = cache[name][0, -1]
        mlp = tc.model.bridge.blocks[layer].mlp
        return torch.nn.functional.silu(x @ mlp.W_gate) * (x @ mlp.W_in)
