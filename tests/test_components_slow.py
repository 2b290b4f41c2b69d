"""Component readers on SmolLM2-135M (grouped-query attention: 9 query heads on 3 key/value heads; gated MLP),
on the Eiffel Tower prompt, against TransformerLens's own computations and hand computations."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.utilities.matrix import composition_scores as tl_composition_scores

from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.head_output import head_output
from lens_mcp.tools.reading.mlp_neurons import mlp_neurons
from lens_mcp.tools.reading.neuron_attribution import neuron_attribution
from lens_mcp.tools.weights.composition_scores import composition_scores, one_thread
from tests.component_refs import (
    full_cache,
    hand_gated_activations,
    head_logits,
    neuron_reference,
    reference_grid,
    source_reference,
)

pytestmark = pytest.mark.slow
REL = 2e-3  # results are rounded to 4 significant digits

EIFFEL = "The Eiffel Tower is in the city of"
COLOSSEUM = "The Colosseum is in the city of"  # the same length: a baseline position by position
ABS = 2e-4


def test_smol_top_head_output_and_sources(smol: ToolContext) -> None:
    attribution = head_attribution(smol, EIFFEL, " Paris", " Rome", by_source=True, top_k=20)
    top = attribution.top_heads[0]
    split = attribution.by_source
    assert split is not None and (split.layer, split.head) == (top.layer, top.head)
    assert split.kv_head == top.head // 3
    reference = source_reference(smol, EIFFEL, " Paris", " Rome", top.layer, top.head)
    by_position = {part.position: part.contribution for part in split.sources}
    assert [by_position[s] for s in range(len(reference))] == pytest.approx(reference.tolist(), rel=5e-3, abs=ABS)
    assert float(reference.sum()) == pytest.approx(top.score, rel=5e-3, abs=ABS)

    output = head_output(smol, EIFFEL, top.layer, top.head, top_k=5)
    tokens, _, cache = full_cache(smol, EIFFEL)
    expected = head_logits(smol, cache, tokens.shape[-1] - 1, top.layer, top.head)
    assert [t.id for t in output.promoted] == expected.topk(5).indices.tolist()
    assert [t.logit for t in output.promoted] == pytest.approx(expected.topk(5).values.tolist(), rel=5e-3)
    # the head's direct effect on the answer, read off its token logits, is its cell of the grid
    paris, rome = (smol.model.bridge.to_tokens(t, prepend_bos=False)[0, 0] for t in (" Paris", " Rome"))
    assert float(expected[paris] - expected[rome]) == pytest.approx(top.score, rel=5e-3, abs=ABS)


def test_smol_baseline_separates_subject_heads(smol: ToolContext) -> None:
    result = head_attribution(smol, EIFFEL, " Paris", " Rome", baseline_prompt=COLOSSEUM, top_k=5)
    grid, actual = reference_grid(smol, EIFFEL, " Paris", " Rome")
    base_grid, base_actual = reference_grid(smol, COLOSSEUM, " Paris", " Rome")
    assert torch.tensor(result.heads) == pytest.approx(grid - base_grid, rel=5e-3, abs=ABS)
    assert result.actual == pytest.approx(actual - base_actual, rel=REL)
    assert result.explained
    assert result.baseline is not None
    for pair in result.baseline.top_heads:
        assert pair.prompt_score == pytest.approx(float(grid[pair.layer, pair.head]), rel=5e-3, abs=ABS)
        assert pair.baseline_score == pytest.approx(float(base_grid[pair.layer, pair.head]), rel=5e-3, abs=ABS)


def test_smol_neurons_against_full_resid_decomposition(smol: ToolContext) -> None:
    layers = [24, 25, 26, 27, 28, 29]
    result = neuron_attribution(smol, EIFFEL, " Paris", " Rome", layers=layers, top_k=10)
    values, labels = neuron_reference(smol, EIFFEL, " Paris", " Rome")
    rows = [i for i, label in enumerate(labels) if "N" in label and int(label[1:].split("N")[0]) in layers]
    neuron_values = values[rows]
    best = neuron_values.abs().argsort(descending=True)[:10]
    assert [f"L{n.layer}N{n.neuron}" for n in result.top_neurons] == [labels[rows[int(i)]] for i in best]
    assert [n.attribution for n in result.top_neurons] == pytest.approx(neuron_values[best].tolist(), rel=5e-3)
    hand = {layer: hand_gated_activations(smol, EIFFEL, layer) for layer in {n.layer for n in result.top_neurons}}
    for neuron in result.top_neurons:
        assert neuron.activation == pytest.approx(float(hand[neuron.layer][neuron.neuron]), rel=5e-3)

    active = mlp_neurons(smol, EIFFEL, 27, top_k=5)
    assert [n.neuron for n in active.neurons] == hand_gated_activations(smol, EIFFEL, 27).abs().argsort(
        descending=True
    )[:5].tolist()


def test_smol_composition_pairs_match_transformer_lens(smol: ToolContext) -> None:
    result = composition_scores(smol, "k", top_k=10, layers=[18])
    assert result.receiver_layers == [18] and result.n_pairs == 18 * 9 * 9
    with torch.no_grad(), one_thread():
        ov, qk = smol.model.bridge.OV, smol.model.bridge.QK  # grouped-query key/value heads expanded
        for pair in result.top_pairs:
            sender = ov[pair.sender_layer, pair.sender_head]
            receiver = qk[pair.receiver_layer, pair.receiver_head].T  # K-composition reads W_QK^T
            expected = float(tl_composition_scores(sender, receiver, broadcast_dims=False))
            assert pair.score == pytest.approx(expected, rel=REL)
    assert result.top_pairs[0].ratio > 2  # well above random matrices of these shapes


def test_smol_composition_in_sender_chunks(smol: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    from lens_mcp.tools.weights import composition_scores as module

    whole = module.all_scores(smol, "q", [12])[12]
    monkeypatch.setattr(module, "PRODUCT_FLOATS", 9 * 64 * 9 * 64 * 5)  # five sender layers per product
    assert module.all_scores(smol, "q", [12])[12] == pytest.approx(whole, abs=1e-6)
