"""feature_exemplars on the toy model: the top contexts, density, quantile samples and histogram of an SAE feature
and of an attention head equal a brute-force scan of the same corpus rows (a hand-written hook and a hand encoding
for the SAE, TransformerLens's attention pattern for the head), the bounded sample says so, bad input, progress
and cancellation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.features._corpus import read_corpus, token_store
from lens_mcp.tools.features._exemplars import HEAD_ACTIVE, QUANTILE_LEVELS
from lens_mcp.tools.features.feature_exemplars import feature_exemplars
from lens_mcp.tools.features.load_sae import load_sae
from tests.sae_refs import HOOK, toy_corpus, toy_sae_folder

BODY = 20


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own cache folder: an index another test built must not answer for a scan here."""
    monkeypatch.setenv("LENS_MCP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sae_host(tmp_path_factory: pytest.TempPathFactory) -> ModelHost:
    host = ModelHost(Limits())
    host.load("toy-induction", device="cpu")
    with host.use() as model:
        load_sae(ToolContext(model, host.limits), str(toy_sae_folder(tmp_path_factory.mktemp("sae"))))
    return host


@pytest.fixture
def tc(sae_host: ModelHost) -> Iterator[ToolContext]:
    with sae_host.use() as model:
        yield ToolContext(model, sae_host.limits)


def rows_of(tc: ToolContext, corpus: Path, n_rows: int) -> tuple[torch.Tensor, np.ndarray]:
    """The corpus rows the tool scans, rebuilt here: BOS + BODY tokens of the training split, evenly spread."""
    store = token_store(tc.view.tokenizer, tc.view.d_vocab, read_corpus(str(corpus)))
    rows = store.rows(BODY, n_rows)
    ids = np.stack([np.asarray(store.train[r * BODY : (r + 1) * BODY], dtype=np.int64) for r in rows])
    bos = tc.view.tokenizer.bos_token_id
    tokens = torch.cat([torch.full((len(rows), 1), bos), torch.from_numpy(ids)], dim=1)
    return tokens, rows


def brute_sae(tc: ToolContext, tokens: torch.Tensor, feature: int) -> torch.Tensor:
    """[rows, BODY] activations of `feature`: the residual captured by a hand-written hook, encoded by hand."""
    captured: list[torch.Tensor] = []

    def keep(activation: torch.Tensor, hook: Any = None) -> None:
        captured.append(activation.detach().clone())

    with torch.no_grad(), tc.view.hooks(fwd_hooks=[(HOOK, keep)]):
        tc.view(tokens)
    sae = tc.model.saes[HOOK]
    x = captured[0][:, 1:].float()
    pre = (x - sae.b_dec) @ sae.W_enc[:, feature] + sae.b_enc[feature]
    return pre.relu()


def brute_head(tc: ToolContext, tokens: torch.Tensor, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        _, cache = tc.view.run_with_cache(tokens, names_filter=[name])
    pattern = cache[name][:, head, 1:, 1:]
    return pattern.amax(dim=-1), pattern


def check_top(result: Any, acts: torch.Tensor, rows: np.ndarray, top_k: int) -> None:
    flat = acts.reshape(-1)
    values, order = flat.sort(descending=True)
    assert [e.activation for e in result.top] == pytest.approx(values[:top_k].tolist(), rel=1e-3, abs=1e-5)
    expected = [(int(rows[i // BODY]), int(i % BODY)) for i in order[:top_k].tolist()]
    assert [(e.row, e.position) for e in result.top] == expected
    for exemplar in result.top:
        row = int(np.flatnonzero(rows == exemplar.row)[0])
        shown = exemplar.activations
        assert len(shown) == len(exemplar.tokens)
        lo = exemplar.position - exemplar.marked
        assert shown == pytest.approx(acts[row, lo : lo + len(shown)].tolist(), rel=1e-3, abs=1e-4)


def test_sae_feature_exemplars_equal_a_brute_force_scan(tc: ToolContext, tmp_path: Path) -> None:
    corpus = toy_corpus(tmp_path)
    result = feature_exemplars(tc, feature=5, corpus=str(corpus), tokens=40 * BODY, context=BODY, top_k=4, window=3)
    tokens, rows = rows_of(tc, corpus, 40)
    acts = brute_sae(tc, tokens, 5)
    assert result.source == "scan" and "scanned a sample" in result.note
    assert result.tokens_read == acts.numel()
    check_top(result, acts, rows, 4)
    assert result.density == pytest.approx(float((acts > 0).float().mean()), abs=1e-4)
    assert result.max_activation == pytest.approx(float(acts.max()), rel=1e-3)
    # quantile samples: active tokens near level x max, their values the brute-force values at those tokens
    for exemplar in result.quantiles:
        assert exemplar.level in QUANTILE_LEVELS
        assert abs(exemplar.activation - exemplar.level * float(acts.max())) <= 0.1 * float(acts.max()) + 1e-4
        row = int(np.flatnonzero(rows == exemplar.row)[0])
        assert exemplar.activation == pytest.approx(float(acts[row, exemplar.position]), rel=1e-3, abs=1e-4)
    assert len(result.quantiles) >= 3
    # the histogram covers every active token (fewer than the sample holds) in 10 bins up to the max
    assert result.histogram is not None
    n_active = int((acts > 0).sum())
    assert result.histogram.sampled == min(n_active, 256)
    if n_active <= 256:
        expected, _ = np.histogram(acts[acts > 0].numpy(), bins=np.linspace(0, float(acts.max()), 11))
        assert result.histogram.counts == pytest.approx(expected.tolist(), abs=1)
    # promoted tokens: the decoder row through the final norm and unembedding
    assert len(result.promoted) == 8 and len(result.suppressed) == 8
    assert result.promoted[0].logit >= result.promoted[-1].logit > result.suppressed[-1].logit


def test_head_exemplars_equal_the_attention_pattern(tc: ToolContext, tmp_path: Path) -> None:
    corpus = toy_corpus(tmp_path)
    result = feature_exemplars(tc, layer=1, head=2, corpus=str(corpus), tokens=30 * BODY, context=BODY, top_k=3)
    tokens, rows = rows_of(tc, corpus, 30)
    acts, pattern = brute_head(tc, tokens, 1, 2)
    flat = acts.reshape(-1)
    assert [e.activation for e in result.top] == pytest.approx(flat.sort(descending=True).values[:3].tolist(), rel=1e-3)
    assert result.density == pytest.approx(float((acts > HEAD_ACTIVE).float().mean()), abs=1e-4)
    for exemplar in result.top:
        row = int(np.flatnonzero(rows == exemplar.row)[0])
        assert exemplar.attends_to == int(pattern[row, exemplar.position].argmax())
        # the planted induction head attends to the token after the previous occurrence of the query token
        ids = tokens[row, 1:]
        source = exemplar.attends_to
        assert source is not None and source >= 1 and int(ids[source - 1]) == int(ids[exemplar.position])
    assert result.promoted == [] and "OV circuit" in result.note


def test_default_sample_fits_the_caps_and_says_so(tc: ToolContext, tmp_path: Path) -> None:
    corpus = toy_corpus(tmp_path)
    dry = feature_exemplars(tc, feature=1, corpus=str(corpus), dry_run=True)
    assert dry.dry_run and dry.cost is not None and dry.top == []
    result = feature_exemplars(tc, feature=1, corpus=str(corpus), top_k=2)
    assert result.context == min(64, tc.view.n_ctx - 1)
    assert "no exemplar index" in result.note and result.tokens_read > 0


def test_bad_input(tc: ToolContext, tmp_path: Path) -> None:
    corpus = str(toy_corpus(tmp_path))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"feature": 48}, "features 0..47"),
        ({"feature": -1}, "features 0..47"),
        ({}, "say which unit"),
        ({"layer": 1}, "say which unit"),
        ({"layer": 1, "head": 1, "neuron": 2}, "say which unit"),
        ({"feature": 1, "layer": 1, "head": 1}, "not both"),
        ({"layer": 5, "head": 1}, "layer"),
        ({"layer": 1, "head": 9}, "head"),
        ({"layer": 0, "neuron": 4}, "neurons 0..3"),
        ({"feature": 1, "hook": "blocks.0.hook_resid_post"}, "no SAE is loaded on that hook"),
        ({"feature": 1, "top_k": 0}, "top_k=0"),
        ({"feature": 1, "context": 500}, "context=500"),
        ({"feature": 1, "tokens": 3}, "tokens=3"),
    ]
    for arguments, needle in cases:
        with pytest.raises(LensError, match=needle):
            feature_exemplars(tc, corpus=corpus, **arguments)
    over = Limits(max_work_units=1000)
    with pytest.raises(LensError, match="refused before computing"):
        feature_exemplars(ToolContext(tc.model, over), feature=1, corpus=corpus, tokens=2000)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(LensError, match="is empty"):
        feature_exemplars(tc, feature=1, corpus=str(empty))


def test_progress_and_cancel(sae_host: ModelHost, tmp_path: Path) -> None:
    corpus = str(toy_corpus(tmp_path, paragraphs=200))
    reports: list[tuple[float, float | None]] = []

    def cancel_after_first(done: float, total: float | None = None, message: str | None = None) -> None:
        reports.append((done, total))
        if message and "corpus tokens" in message:
            raise RuntimeError("cancelled")

    small = Limits(max_batch_seconds=0.001)
    with sae_host.use() as model:
        tc = ToolContext(model, small, progress=cancel_after_first)
        with pytest.raises(RuntimeError, match="cancelled"):
            feature_exemplars(tc, feature=1, corpus=corpus, tokens=100 * BODY, context=BODY)
        assert not any(point.hooks for point in model.bridge.hook_dict.values() if hasattr(point, "hooks"))
    assert reports and reports[-1][1] is not None and reports[-1][0] < reports[-1][1]
