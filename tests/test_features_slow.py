"""Features and steering on SmolLM2-135M with the builtin SAE smollm2-135m-resid: out of the box (no load_sae),
encoding against a hand computation, the SAE's quality, attribution against finite differences, generate
against a no-cache greedy loop under grouped-query attention, and feature_exemplars / search_features against a
brute-force encoding of a small corpus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lens_mcp.loading.specs import BUILTIN_DIR
from lens_mcp.model_host import count_hooks
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.features._corpus import read_corpus, token_store
from lens_mcp.tools.features._sae import BUILTIN_SAES
from lens_mcp.tools.features.feature_attribution import feature_attribution
from lens_mcp.tools.features.feature_exemplars import feature_exemplars
from lens_mcp.tools.features.generate import generate
from lens_mcp.tools.features.sae_features import sae_features
from lens_mcp.tools.features.search_features import search_features
from lens_mcp.tools.features.steering_vector import steering_vector
from lens_mcp.tools.model.model_info import model_info

pytestmark = pytest.mark.slow

HOOK = "blocks.15.hook_resid_pre"
EIFFEL = "The Eiffel Tower is in the city of"
DOCSTRING = (
    "Return a new list containing all items from the iterable in ascending order. A custom key function can be "
    "supplied to customize the sort order, and the reverse flag can be set to request the result in descending order."
)


@pytest.fixture
def smol_clean(smol: ToolContext) -> Iterator[ToolContext]:
    smol.model.saes.clear()
    smol.model.steering_vectors.clear()
    yield smol
    smol.model.saes.clear()
    smol.model.steering_vectors.clear()
    assert count_hooks(smol.model.bridge) == 0


def test_builtin_sae_out_of_the_box(smol_clean: ToolContext) -> None:
    tc = smol_clean
    result = sae_features(tc, EIFFEL, top_k=8)
    assert result.hook == HOOK and list(tc.model.saes) == [HOOK]
    assert any(entry.startswith(HOOK) for entry in model_info(tc).saes)
    sae = tc.model.saes[HOOK]
    assert sae.architecture == "topk" and sae.k is not None
    tokens = tc.model.bridge.to_tokens(EIFFEL)
    with torch.no_grad():
        _, cache = tc.model.bridge.run_with_cache(tokens, names_filter=[HOOK])
    x = cache[HOOK][0]
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    values, ids = pre.topk(sae.k, dim=-1)
    for row in result.positions:
        top = [(int(i), float(v)) for v, i in zip(values[row.position], ids[row.position], strict=True) if v > 0][:8]
        assert [f.feature for f in row.features] == [i for i, _ in top]
        assert [f.activation for f in row.features] == pytest.approx([v for _, v in top], rel=2e-3)
    quality = result.reconstruction
    assert quality.loss_spliced is not None and quality.loss_zero_ablated is not None
    assert quality.loss_spliced < quality.loss_zero_ablated
    # the numbers the training script wrote for this sentence (its own encoding of the HF copy's activations, its
    # own spliced forward pass) are what the tool measures here
    stats = json.loads((BUILTIN_DIR / BUILTIN_SAES["smollm2-135m-resid"][0] / "stats.json").read_text())
    eiffel = stats["held_out"]["eiffel"]
    assert quality.variance_explained == pytest.approx(eiffel["variance_explained"], abs=2e-3)
    assert quality.loss_clean == pytest.approx(eiffel["loss_clean"], abs=2e-3)
    assert quality.loss_spliced == pytest.approx(eiffel["loss_spliced"], abs=5e-3)
    assert quality.loss_zero_ablated == pytest.approx(eiffel["loss_zero_ablated"], abs=5e-3)
    # the held-out quality the README states on the corpora's held-out splits (modern English is weaker: see README)
    for source in ("kjv-bible", "python-stdlib"):
        assert stats["held_out"][source]["variance_explained"] >= 0.8
        assert stats["held_out"][source]["loss_recovered"] >= 0.9
    assert stats["dead_fraction"] <= 0.1
    assert stats["d_sae"] == sae.d_sae and stats["hook_name"] == HOOK


def test_attribution_against_finite_differences_on_smollm2(smol_clean: ToolContext) -> None:
    tc = smol_clean
    result = feature_attribution(tc, EIFFEL, answer=" Paris", wrong_answer=" Rome", top_k=2)
    sae = tc.model.saes[HOOK]
    tokens = tc.model.bridge.to_tokens(EIFFEL)
    with torch.no_grad():
        _, cache = tc.model.bridge.run_with_cache(tokens, names_filter=[HOOK])
    acts, _ = sae.encode(cache[HOOK][0])
    paris, rome = (tc.model.bridge.to_single_token(t) for t in (" Paris", " Rome"))

    def metric(feature: int, scale: float) -> float:
        def remove(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            activation[0, -1] -= scale * acts[-1, feature] * sae.W_dec[feature]
            return activation

        with torch.no_grad():
            logits = tc.model.bridge.run_with_hooks(tokens, fwd_hooks=[(HOOK, remove)])[0, -1]
        return float(logits[paris] - logits[rome])

    base = metric(0, 0.0)
    assert result.metric_value == pytest.approx(base, rel=1e-3)
    for entry in result.features[:2]:
        eps = 0.05
        assert entry.attribution == pytest.approx((base - metric(entry.feature, eps)) / eps, rel=0.1, abs=2e-3)
        assert entry.ablation_effect == pytest.approx(base - metric(entry.feature, 1.0), rel=1e-2, abs=1e-3)


def test_generate_on_smollm2_equals_no_cache_loop_and_steers(smol_clean: ToolContext) -> None:
    tc = smol_clean
    n = 3
    result = generate(tc, EIFFEL, max_new_tokens=n)
    tokens = tc.model.bridge.to_tokens(EIFFEL)
    for _ in range(n):
        with torch.no_grad():
            logits = tc.model.bridge(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert [tc.model.bridge.to_single_token(t.token) for t in result.baseline.tokens] == tokens[0, -n:].tolist()
    assert result.baseline.tokens[0].token == " Paris"

    steering_vector(tc, "rome", ["The Colosseum is in the city of"], [EIFFEL], layer=15)
    zero = generate(tc, EIFFEL, max_new_tokens=1, interventions=[{"steer": "rome", "alpha": 0}])
    assert zero.first_difference is None and zero.intervened is not None
    assert [t.logprob for t in zero.intervened.tokens] == [t.logprob for t in zero.baseline.tokens]
    pushed = generate(tc, EIFFEL, max_new_tokens=1, interventions=[{"steer": "rome", "alpha": 1.5}])
    assert pushed.intervened is not None
    # the steered run prefers its token more than the baseline model does
    assert pushed.intervened.tokens[0].logprob >= pushed.intervened.tokens[0].logprob_other


def test_feature_exemplars_and_search_on_the_builtin_sae(smol_clean: ToolContext, tmp_path: Path) -> None:
    """On a small prose file: the top contexts feature_exemplars reports for the builtin SAE's most active feature
    equal a brute-force encoding of every scanned row (run_with_cache + a hand TopK encoding), and search_features
    finds that feature on its own top context."""
    tc = smol_clean
    corpus = tmp_path / "prose.txt"
    corpus.write_text("\n\n".join([EIFFEL + " Paris.", DOCSTRING] * 6) + "\n", encoding="utf-8")
    body = 24
    store = token_store(tc.view.tokenizer, tc.view.d_vocab, read_corpus(str(corpus)))
    rows = store.rows(body, 10_000)
    ids = torch.stack([torch.from_numpy(store.context(int(r), body)) for r in rows])
    tokens = torch.cat([torch.full((len(rows), 1), tc.view.tokenizer.bos_token_id), ids], dim=1)
    sae_features(tc, EIFFEL, top_k=1)  # loads the builtin SAE
    sae = tc.model.saes[HOOK]
    with torch.no_grad():
        _, cache = tc.model.bridge.run_with_cache(tokens, names_filter=[HOOK], stop_at_layer=16)
    pre = (cache[HOOK][:, 1:] - sae.b_dec) @ sae.W_enc + sae.b_enc
    values, where = pre.topk(sae.k, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, where, values.relu()).reshape(-1, sae.d_sae)
    feature = int(acts.sum(dim=0).argmax())
    result = feature_exemplars(tc, feature=feature, corpus=str(corpus), context=body, tokens=10_000, top_k=3)
    assert result.tokens_read == acts.shape[0]
    expected = acts[:, feature].topk(3).values.tolist()
    assert [e.activation for e in result.top] == pytest.approx(expected, rel=2e-3)
    assert result.density == pytest.approx(float((acts[:, feature] > 0).float().mean()), abs=1e-4)
    assert result.promoted and result.suppressed
    top = result.top[0]
    text = tc.view.tokenizer.decode(store.context(top.row, body)[: top.position + 1].tolist())
    found = search_features(tc, text, position=-1, top_k=24, corpus=str(corpus))
    assert feature in [m.unit for m in found.matches]
