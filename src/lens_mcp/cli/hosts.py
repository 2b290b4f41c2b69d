"""The model host a command-line run serves, built from its flags: the limits and the load policy."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lens_mcp.limits import Limits

if TYPE_CHECKING:
    from lens_mcp.model_host import ModelHost

LIMIT_FLAGS = {
    "max_prompt_tokens": "tokens per prompt",
    "max_sweep_cells": "patched cells per patch_sweep",
    "max_batch_sequences": "sequences per forward batch",
    "max_batch_tokens": "tokens per forward batch",
    "max_induction_tokens": "tokens in one induction_scores call",
    "max_work_units": "token-layers of work in one call (tokens x blocks over every row it runs)",
    "max_call_seconds": "estimated seconds one call may hold the model (measured throughput)",
    "max_batch_seconds": "target seconds of one batch (progress and cancellation every few seconds)",
    "max_pairs": "items in one pairs=[...] prompt dataset",
    "max_top_k": "largest top_k",
    "max_response_chars": "characters of JSON per tool result",
}


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits.from_env(**{name: getattr(args, name) for name in LIMIT_FLAGS})


def make_host(args: argparse.Namespace) -> ModelHost:
    from lens_mcp.loading.policy import LoadPolicy
    from lens_mcp.model_host import ModelHost

    return ModelHost(
        limits_from_args(args),
        trust_remote_code=args.trust_remote_code,
        device_map=args.device_map,
        n_devices=args.n_devices,
        load_policy=LoadPolicy.for_transport(getattr(args, "transport", "stdio"), args.load_root, args.allow_hub),
    )
