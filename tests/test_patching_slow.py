"""patch_sweep and ablate_heads on SmolLM2-135M (rotary, RMSNorm, grouped-query attention) against
TransformerLens's patching functions, on a few layers each (TransformerLens's loop takes about 0.3 s a cell)."""

from __future__ import annotations

import pytest
import torch

from lens_mcp.tools.causal.ablate_heads import ablate_heads
from lens_mcp.tools.causal.patch_sweep import patch_sweep, run_sweep
from lens_mcp.tools.core.context import ToolContext
from tests.shared import TL_FUNCTIONS, TOL, hand_ablation, hand_logits, loss, tl_head_values, transformer_lens_values

pytestmark = pytest.mark.slow

CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"
ANSWER, WRONG = " Paris", " Rome"

# (layers, positions) per component: first, middle and last layers; every position except where noted.
SUBSETS: dict[str, tuple[list[int], list[int] | None]] = {
    "resid_pre": ([0, 14, 29], None),
    "resid_mid": ([2, 27], None),
    "resid_post": ([5, 29], None),
    "attn_out": ([1, 28], None),
    "mlp_out": ([0, 29], None),
    "heads": ([0, 15, 29], None),
    "heads_by_pos": ([21], [2, 4, -1]),
}


@pytest.mark.parametrize("component", [*TL_FUNCTIONS, "resid_post"])
def test_every_component_equals_transformer_lens(smol: ToolContext, component: str) -> None:
    layers, positions = SUBSETS[component]
    sweep = run_sweep(smol, CLEAN, CORRUPTED, ANSWER, WRONG, component, layers=layers, positions=positions)
    reference = transformer_lens_values(
        smol, component, sweep.cells, clean=CLEAN, corrupted=CORRUPTED, answer=ANSWER, wrong=WRONG
    )
    assert float((sweep.values - reference).abs().max()) <= TOL
    assert sweep.engine.stats.method == "driven"


def test_prob_metric_equals_transformer_lens(smol: ToolContext) -> None:
    sweep = run_sweep(smol, CLEAN, CORRUPTED, ANSWER, None, "resid_pre", layers=[10, 20], metric="prob")
    reference = transformer_lens_values(
        smol, "resid_pre", sweep.cells, metric="prob", clean=CLEAN, corrupted=CORRUPTED, answer=ANSWER, wrong=WRONG
    )
    assert float((sweep.values - reference).abs().max()) <= TOL


def test_the_eiffel_tower_sweep_finds_the_subject_tokens(smol: ToolContext) -> None:
    result = patch_sweep(smol, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre")
    assert result.clean_metric > 0 > result.corrupted_metric  # Paris wins on the clean prompt, Rome on the other
    assert len(result.grid) == 30 and len(result.grid[0]) == 10
    # Up to the middle layers the subject tokens carry the answer; late layers, the last position does.
    assert all(max(row[2:5]) > 0.5 for row in result.grid[:20])
    assert all(max(row[2:5]) < 0.1 and row[9] > 0.5 for row in result.grid[-5:])
    assert result.grid is not None
    assert all(value is None for row in result.grid for value in row[:2])  # BOS and 'The' are the same in both
    top = result.top_cells[0]
    assert (top.position, top.clean_token, top.corrupted_token) == (3, "iffel", "osse")
    assert result.method == "driven" and result.forward_passes < 30
    # The whole residual stream at the end of the last layer, last position, is the clean run's.
    last = patch_sweep(smol, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_post", layers=[-1], positions=[-1])
    assert last.grid == [[1.0]]


def test_ablate_heads_equals_hand_written_hooks(smol: ToolContext) -> None:
    heads = [(20, 3), (25, 0)]
    a, b = smol.model.bridge.to_single_token(ANSWER), smol.model.bridge.to_single_token(WRONG)
    result = ablate_heads(smol, CLEAN, [list(h) for h in heads], ANSWER, WRONG, mode="mean", individually=True)
    together = hand_ablation(smol, CLEAN, heads, "mean")
    assert result.metric_after == pytest.approx(float(together[a] - together[b]), rel=1e-3, abs=1e-4)
    assert result.individual is not None
    for effect in result.individual:
        alone = hand_ablation(smol, CLEAN, [(effect.layer, effect.head)], "mean")
        assert effect.metric == pytest.approx(float(alone[a] - alone[b]), rel=1e-3, abs=1e-4)
    with torch.no_grad():
        logits = smol.model.bridge(smol.model.bridge.to_tokens(CLEAN))[0, -1]
    assert result.metric_before == pytest.approx(float(logits[a] - logits[b]), rel=1e-3)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("component", ["q", "k", "v", "pattern"])
def test_head_inputs_equal_transformer_lens(smol: ToolContext, component: str, direction: str) -> None:
    """Under grouped-query attention k and v are patched per key/value head (3 per layer, not 9)."""
    sweep = run_sweep(smol, CLEAN, CORRUPTED, ANSWER, WRONG, component, layers=[0, 13, 29], direction=direction)
    assert sweep.heads == list(range(3 if component in ("k", "v") else 9))
    reference = tl_head_values(smol, component, sweep.cells, direction, CLEAN, CORRUPTED, ANSWER, WRONG)
    assert float((sweep.values - reference).abs().max()) <= TOL
    assert sweep.engine.stats.method == "driven"


def test_key_value_heads_are_labelled_under_grouped_query_attention(smol: ToolContext) -> None:
    result = patch_sweep(smol, CLEAN, CORRUPTED, ANSWER, WRONG, "v", layers=[20, 29])
    assert result.axes == ["layer", "kv_head"] and result.heads == [0, 1, 2]
    assert any("grouped-query attention" in note and "3 query heads" in note for note in result.notes)


LANDMARK_PAIRS = [
    ("The Eiffel Tower is in the city of", "The Colosseum is in the city of", " Paris", " Rome"),
    ("The Colosseum is in the city of", "The Brandenburg Gate is in the city of", " Rome", " Berlin"),
    ("The Space Needle is in the city of", "The Forbidden City is in the city of", " Seattle", " Beijing"),
]
SHORTER_PAIR = ("The Kremlin is in the city of", "The Louvre is in the city of", " Moscow", " Paris")  # 9 tokens


def test_pairs_mean_equals_the_mean_of_single_sweeps(smol: ToolContext) -> None:
    from lens_mcp.tools.causal.patch_sweep import run_sweeps
    from lens_mcp.tools.core.pairs import PromptPair

    items: list[tuple[str, str, str, str]] = [*LANDMARK_PAIRS, SHORTER_PAIR]
    for component, positions in (("resid_pre", [-1, -3, -5]), ("heads", None)):
        together = run_sweeps(
            smol,
            [
                PromptPair(**dict(zip(("clean_prompt", "corrupted_prompt", "answer", "wrong_answer"), p, strict=True)))
                for p in items
            ],
            component,
            layers=[0, 14, 29],
            positions=positions,
        )
        for sweep, item in zip(together, items, strict=True):
            single = run_sweep(smol, *item, component, layers=[0, 14, 29], positions=positions)
            assert float((sweep.values - single.values).abs().max()) <= TOL
            assert sweep.skipped == single.skipped
        result = patch_sweep(
            smol,
            pairs=[
                dict(zip(("clean_prompt", "corrupted_prompt", "answer", "wrong_answer"), p, strict=True)) for p in items
            ],
            component=component,
            layers=[0, 14, 29],
            positions=positions,
        )
        # Pooled over the dataset: (mean patched - mean corrupted) / (mean clean - mean corrupted).
        mean_clean = sum(s.clean_metric for s in together) / len(together)
        mean_corrupted = sum(s.corrupted_metric for s in together) / len(together)
        mean_patched = torch.stack([s.values.double() for s in together]).mean(0)
        normalized = (mean_patched - mean_corrupted) / (mean_clean - mean_corrupted)
        assert result.grid is not None
        flat = [v for row in result.grid for v in row]
        for value, expected, skipped in zip(
            flat, normalized.tolist(), zip(*(s.skipped for s in together), strict=True), strict=True
        ):
            if all(skipped):
                assert value is None
            else:
                assert value == pytest.approx(expected, rel=2e-3, abs=1e-4)
    assert result.pairs is not None and result.pairs[0].clean_metric > 0 > result.pairs[0].corrupted_metric


def test_ablate_heads_resample_and_loss_equal_hand_written_hooks(smol: ToolContext) -> None:
    heads = [(21, 3), (25, 0)]
    a, b = smol.model.bridge.to_single_token(ANSWER), smol.model.bridge.to_single_token(WRONG)
    result = ablate_heads(
        smol, CLEAN, [list(h) for h in heads], ANSWER, WRONG, mode="resample", corrupted_prompt=CORRUPTED
    )
    logits = hand_logits(smol, CLEAN, heads, "resample", CORRUPTED)[-1]
    assert result.metric_after == pytest.approx(float(logits[a] - logits[b]), rel=1e-3, abs=1e-4)
    text = "The cat sat on the mat and the dog sat on the rug. The cat sat on the mat and the dog sat on the rug."
    n = smol.model.bridge.to_tokens(text).shape[-1]
    second = list(range(n // 2 + 2, n))
    ablated = ablate_heads(smol, text, [list(h) for h in heads], metric="loss", positions=second)
    logits = hand_logits(smol, text, heads, "zero", None)
    assert ablated.metric_after == pytest.approx(loss(smol, logits, text, second), rel=1e-3, abs=1e-4)
