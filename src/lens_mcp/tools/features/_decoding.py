"""Token-by-token decoding of several rows at once, each under its own hooks, without a KV cache.

TransformerBridge.generate() with its default KV cache gives wrong tokens on TransformerLens 4.3, so every step
here is a full forward pass over the whole sequence: exact, and cheap enough for the short continuations
generate allows (its cost is estimated and capped before the first step). All rows grow by one token per step,
so they stay the same length and run as one batch. Sampling (temperature > 0) shares its random numbers across
rows (Gumbel noise drawn once per step from `seed`), so rows differ only where their logits differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lens_mcp.tools.core.context import ToolContext

HooksFor = Callable[[int], list[tuple[str, Callable[..., Any]]]]
"""hooks_for(prompt_length) -> fwd_hooks for one batched forward pass (they may depend on the prompt length)."""


@dataclass
class Decoded:
    tokens: torch.Tensor  # [rows, prompt + new] token ids
    logprobs: torch.Tensor  # [rows, new] log-prob of each chosen token under its own row's run
    n_new: int


def next_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy (temperature 0) or sampled next tokens for a [rows, vocab] batch of logits."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    uniform = torch.rand(logits.shape[-1], generator=generator, dtype=torch.float64).clamp_(1e-20, 1.0)
    gumbel = (-(-uniform.log()).log()).to(device=logits.device, dtype=torch.float32)
    return (logits.float() / temperature + gumbel).argmax(dim=-1)


def decode(
    tc: ToolContext,
    prompt: torch.Tensor,
    n_rows: int,
    hooks: list[tuple[str, Callable[..., Any]]],
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    stop_token: int | None = None,
) -> Decoded:
    """Extend `prompt` [1, n] by up to max_new_tokens in each of n_rows rows under `hooks` (one batch). Stops
    early once every row has produced `stop_token`. Reports progress after each token (which raises when
    the call was cancelled; hooks are already detached then)."""
    generator = torch.Generator().manual_seed(int(seed)) if temperature > 0 else None
    sequence = prompt.expand(n_rows, -1).clone()
    logprobs: list[torch.Tensor] = []
    finished = torch.zeros(n_rows, dtype=torch.bool, device=prompt.device)
    for step in range(max_new_tokens):
        with torch.no_grad(), tc.view.hooks(fwd_hooks=hooks):
            logits = tc.view(sequence)[:, -1].float()
        chosen = next_tokens(logits, temperature, generator)
        logprobs.append(logits.log_softmax(dim=-1).gather(-1, chosen[:, None]).squeeze(-1))
        sequence = torch.cat([sequence, chosen[:, None]], dim=1)
        if stop_token is not None:
            finished |= chosen == stop_token
        tc.progress(step + 1, max_new_tokens, f"generated token {step + 1}/{max_new_tokens}")
        if stop_token is not None and bool(finished.all()):
            break
    return Decoded(sequence, torch.stack(logprobs, dim=1), len(logprobs))


def score(
    tc: ToolContext, sequences: torch.Tensor, n_prompt: int, hooks: list[tuple[str, Callable[..., Any]]]
) -> torch.Tensor:
    """Log-prob of each token after the prompt given its prefix, per row, under `hooks`: [rows, new]."""
    with torch.no_grad(), tc.view.hooks(fwd_hooks=hooks):
        logits = tc.view(sequences)[:, n_prompt - 1 : -1].float()
    return logits.log_softmax(dim=-1).gather(-1, sequences[:, n_prompt:, None]).squeeze(-1)
