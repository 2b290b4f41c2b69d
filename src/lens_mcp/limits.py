"""The caps that keep every call bounded: one configuration, from flags or environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

ENV_PREFIX = "LENS_MCP_"


@dataclass(frozen=True)
class Limits:
    """Caps on one tool call. Each field can be set by the env var LENS_MCP_<FIELD NAME IN CAPITALS>."""

    max_prompt_tokens: int = 2048
    """Tokens per prompt (the model's own context length caps it further)."""
    max_sweep_cells: int = 50_000
    """Patched cells in one patch_sweep (layers x positions, or layers x heads x positions)."""
    max_batch_sequences: int = 256
    """Sequences in one forward batch; the batch size actually used also follows free memory."""
    max_batch_tokens: int = 65_536
    """Tokens in one forward batch (sequences x length): bounds the activation memory of a batch."""
    max_induction_tokens: int = 65_536
    """n_seqs x (2 * seq_len + 1) tokens for induction_scores."""
    max_work_units: int = 50_000_000
    """Token-layers of work in one call (tokens x transformer blocks over every row it runs)."""
    max_call_seconds: int = 300
    """Estimated seconds one call may hold the model, from a throughput measured on the loaded model."""
    max_batch_seconds: int = 3
    """Target seconds of one batch, so progress arrives (and a cancel lands) every few seconds."""
    max_pairs: int = 64
    """Items in one `pairs=[...]` prompt dataset."""
    max_top_k: int = 100
    """Largest top_k any tool accepts."""
    max_response_chars: int = 40_000
    """Characters of JSON in one tool result (about 10k tokens, Claude Code's warning threshold)."""

    def prompt_cap(self, n_ctx: int) -> int:
        """The longest prompt accepted for a model whose context is n_ctx tokens."""
        return min(self.max_prompt_tokens, int(n_ctx))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: int | None) -> Limits:
        """Defaults, then environment variables, then explicit overrides (CLI flags) that are not None."""
        environ = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                try:
                    values[field.name] = int(raw)
                except ValueError as exc:
                    raise ValueError(f"{ENV_PREFIX}{field.name.upper()}={raw!r} is not an integer") from exc
        values.update({name: value for name, value in overrides.items() if value is not None})
        limits = replace(cls(), **values)
        for field in fields(limits):
            if getattr(limits, field.name) <= 0:
                raise ValueError(f"limit {field.name} must be positive, got {getattr(limits, field.name)}")
        return limits
