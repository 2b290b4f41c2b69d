"""Memory before compute: a model that would not fit is refused before its weights are read (naming the dtype
and the size that would fit), every estimate states the memory a call needs, and a call that cannot fit in the
free memory is refused before its first forward pass."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.loading import footprint
from lens_mcp.loading.specs import resolve_spec
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.causal.attribution_patch import attribution_patch
from lens_mcp.tools.causal.patch_sweep import patch_sweep
from lens_mcp.tools.core import batching
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import row_memory
from tests.architectures import FAMILIES, build

CLEAN, CORRUPTED, ANSWER, WRONG = "w1 w2 w3 w4 w5 w1 w2 w3 w4", "w1 w2 w3 w9 w5 w1 w2 w3 w4", " w5", " w6"


def test_parameter_count_is_read_without_loading(tmp_path: Path) -> None:
    """The count from the config (built on the meta device) equals the parameters of the model saved there."""
    folder = tmp_path / "llama"
    model = build(FAMILIES["llama"], folder)
    assert footprint.parameter_count(resolve_spec(str(folder))) == sum(p.numel() for p in model.parameters())


def test_toy_parameter_count_matches_its_weights_file() -> None:
    spec = resolve_spec("toy-induction")
    files = list(Path(spec.location).glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as weights:
        stored = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    assert footprint.parameter_count(spec) == stored


def test_a_model_that_cannot_fit_is_refused_naming_what_would(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = resolve_spec("toy-induction")
    count = footprint.parameter_count(spec)
    assert count is not None
    free = int(count * 3 * footprint.LOAD_PEAK_FACTOR)  # between the bfloat16 (2 bytes) and float32 (4) peaks
    monkeypatch.setattr(footprint, "available_memory_bytes", lambda device: free)
    host = ModelHost(Limits())
    with pytest.raises(LensError) as refused:
        host.load("toy-induction", device="cpu")
    text = str(refused.value)
    assert "refused before loading" in text and "dtype='bfloat16'" in text and "float32" in text
    assert f"{count / 1e6:,.0f} M parameters" in text
    assert host.model is None
    footprint.check_fits(spec, torch.bfloat16, "cpu")  # the dtype it names does fit
    monkeypatch.setattr(footprint, "available_memory_bytes", lambda device: 10)
    with pytest.raises(LensError, match="No dtype makes it fit"):
        footprint.check_fits(spec, torch.bfloat16, "cpu")


def test_row_memory_bounds_what_a_backward_pass_saves(toy: ToolContext) -> None:
    """The backward row estimate covers the tensors autograd really saves for one row (counted with
    saved_tensors_hooks), without overstating them more than 4x; a forward row needs less than a backward one."""
    tokens = torch.randint(0, toy.view.d_vocab, (1, 48))
    weights = {parameter.untyped_storage().data_ptr() for parameter in toy.view.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # activations, each storage once (views share one)
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    embeds: list[torch.Tensor] = []

    def grad_from_embed(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.detach().requires_grad_(True)
        embeds.append(act)
        return act

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = toy.view.run_with_hooks(tokens, fwd_hooks=[("hook_embed", grad_from_embed)])
        logits[0, -1, 0].backward()
    estimated = row_memory(toy, 48, backward=True)
    assert sum(saved.values()) <= estimated <= 4 * sum(saved.values())
    assert row_memory(toy, 48) < estimated
    assert row_memory(toy, 96, backward=True) > row_memory(toy, 48, backward=True)


def test_estimates_state_memory_and_refuse_what_cannot_fit(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = patch_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component="resid_pre", dry_run=True)
    gradient = attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component="resid_pre", dry_run=True)
    assert sweep.cost.memory_mb > 0 and gradient.cost.memory_mb > 0
    n_tokens = len(toy.view.to_tokens(CLEAN)[0])
    assert sweep.cost.memory_mb >= 0.999 * row_memory(toy, n_tokens) / 2**20  # one row at the least (rounded)
    assert gradient.cost.memory_mb >= 0.999 * row_memory(toy, n_tokens, backward=True) / 2**20

    passes: list[int] = []
    forward = toy.model.bridge.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        passes.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(toy.model.bridge, "forward", counted)
    free = int(gradient.cost.memory_mb * 2**20 / 2)
    monkeypatch.setattr(batching, "available_memory_bytes", lambda device: free)
    with pytest.raises(LensError) as refused:
        attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component="resid_pre")
    assert "refused before computing" in str(refused.value) and "MB free" in str(refused.value)
    assert "shorter prompts" in str(refused.value)
    assert passes == []
    monkeypatch.setattr(batching, "available_memory_bytes", lambda device: 2**40)
    attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component="resid_pre")
    assert passes  # the counter does see the passes a call runs
