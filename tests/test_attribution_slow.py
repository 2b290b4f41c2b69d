"""attribution_patch on SmolLM2-135M (rotary, RMSNorm, grouped-query attention): estimates against
TransformerLens's attribution patching (node granularity), verified cells against patch_sweep, both directions."""

from __future__ import annotations

import pytest
import torch

from lens_mcp.tools.causal.attribution_patch import attribution_patch
from lens_mcp.tools.causal.patch_sweep import run_sweep
from lens_mcp.tools.core.context import ToolContext
from tests import test_attribution as fast

pytestmark = pytest.mark.slow

CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"
ANSWER, WRONG = " Paris", " Rome"


@pytest.fixture(autouse=True)
def _smol_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "ANSWER", ANSWER)
    monkeypatch.setattr(fast, "WRONG", WRONG)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_estimates_equal_transformer_lens_attribution_patch(smol: ToolContext, direction: str) -> None:
    tokens = smol.model.bridge.to_tokens([CLEAN, CORRUPTED])
    source, receiver = (tokens[:1], tokens[1:]) if direction == "denoise" else (tokens[1:], tokens[:1])
    scores = fast.tl_node_scores(smol, source, receiver)
    for component, kind in (("heads_by_pos", "attn_head_out"), ("mlp_out", "mlp_out")):
        values, cells, _ = fast.raw_estimates(smol, component, direction, CLEAN, CORRUPTED)
        expected = torch.tensor([scores[(kind, layer, head, position)] for layer, head, position in cells])
        assert torch.allclose(values, expected, atol=fast.TOL, rtol=0), float((values - expected).abs().max())
        assert float(values.abs().max()) > 0.05


def test_verified_cells_equal_patch_sweep(smol: ToolContext) -> None:
    result = attribution_patch(smol, CLEAN, CORRUPTED, ANSWER, WRONG, "heads", verify_top=10)
    layers = sorted({cell.layer for cell in result.verified})  # the sweep only where it is needed
    sweep = run_sweep(smol, CLEAN, CORRUPTED, ANSWER, WRONG, "heads", layers=layers)
    span = sweep.clean_metric - sweep.corrupted_metric
    exact = {
        cell: (float(v) - sweep.corrupted_metric) / span for cell, v in zip(sweep.cells, sweep.values, strict=True)
    }
    assert len(result.verified) == 10 and result.agreement is not None
    for cell in result.verified:
        reference = exact[(cell.layer, cell.head, cell.position)]
        assert abs(cell.exact - reference) <= 1e-5 / abs(span) + abs(reference) * 1e-3, (cell, reference)
    # The estimate's ranking of the verified cells is reported against the exact one, sign errors flagged.
    flagged = [c for c in result.verified if c.problem == "sign"]
    assert all(c.estimate * c.exact < 0 for c in flagged)
    assert result.agreement.sign_wrong == len(flagged)


@pytest.mark.parametrize("component", ["resid_pre", "resid_mid", "attn_out"])
def test_residual_estimates_equal_transformer_lens_backward_hook_gradients(smol: ToolContext, component: str) -> None:
    values, cells, tokens = fast.raw_estimates(smol, component, "denoise", CLEAN, CORRUPTED)
    names = [f"blocks.{layer}.hook_{component}" for layer in range(smol.model.cfg.n_layers)]
    with torch.enable_grad():
        corrupted = fast.cache_activation_and_gradient(
            smol.model.bridge, tokens[1:], fast.tl_metric_fn(smol), names_filter=names
        )
    with torch.no_grad():
        _, clean_cache = smol.model.bridge.run_with_cache(tokens[:1], names_filter=names)
    expected = []
    for layer, _, position in cells:
        name = f"blocks.{layer}.hook_{component}"
        grad = corrupted.gradients[name]
        assert grad is not None
        expected.append(float((grad * (clean_cache[name] - corrupted.activations[name]))[0, position].sum()))
    assert torch.allclose(values, torch.tensor(expected), atol=fast.TOL, rtol=0)
