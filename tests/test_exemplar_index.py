"""build_exemplar_index on the toy model: the index's top-k of every SAE feature equals a brute-force scan of the same
tokens (a hand-written hook and a hand encoding), building twice or in interrupted pieces gives identical files,
feature_exemplars reads it, an index for another SAE is refused naming both, and a damaged one is detected and
rebuilt; `lens-mcp index`; search_features against a hand encoding, with summaries from the index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.features import _index
from lens_mcp.tools.features._corpus import read_corpus, token_store
from lens_mcp.tools.features.build_exemplar_index import INDEX_TOP_K, build_exemplar_index
from lens_mcp.tools.features.feature_exemplars import feature_exemplars
from lens_mcp.tools.features.load_sae import load_sae
from lens_mcp.tools.features.search_features import search_features
from tests.sae_refs import HOOK, toy_corpus, toy_sae_folder

BODY = 20


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own cache folder: an index another test built must not answer for a scan here."""
    monkeypatch.setenv("LENS_MCP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> ModelHost:
    host = ModelHost(Limits())
    host.load("toy-induction", device="cpu")
    return host


@pytest.fixture
def tc(host: ModelHost, tmp_path: Path) -> Iterator[ToolContext]:
    with host.use() as model:
        model.saes.clear()
        tc = ToolContext(model, host.limits)
        load_sae(tc, str(toy_sae_folder(tmp_path / "sae")))
        yield tc
        model.saes.clear()


def brute_force(tc: ToolContext, corpus: Path) -> torch.Tensor:
    """[tokens, d_sae] activations of every training-split token, BOS + BODY per row, by a hand-written hook."""
    store = token_store(tc.view.tokenizer, tc.view.d_vocab, read_corpus(str(corpus)))
    n_rows = store.n_rows(BODY)
    ids = torch.from_numpy(np.asarray(store.train[: n_rows * BODY], dtype=np.int64)).reshape(n_rows, BODY)
    tokens = torch.cat([torch.full((n_rows, 1), tc.view.tokenizer.bos_token_id), ids], dim=1)
    captured: list[torch.Tensor] = []

    def keep(activation: torch.Tensor, hook: Any = None) -> None:
        captured.append(activation[:, 1:].detach().clone())

    with torch.no_grad(), tc.view.hooks(fwd_hooks=[(HOOK, keep)]):
        tc.view(tokens)
    sae = tc.model.saes[HOOK]
    x = captured[0].reshape(-1, sae.d_in).float()
    return ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()


def arrays(folder: Path) -> dict[str, np.ndarray]:
    return {name: np.load(folder / f"{name}.npy") for name in _index.ARRAYS}


def test_index_top_k_equals_brute_force_and_is_reproducible(tc: ToolContext, tmp_path: Path) -> None:
    corpus = toy_corpus(tmp_path)
    first = build_exemplar_index(tc, corpus=str(corpus), context=BODY)
    assert first.complete and first.contexts_done == first.contexts_total
    acts = brute_force(tc, corpus)
    assert first.tokens_indexed == acts.shape[0]
    saved = arrays(Path(first.folder))
    values = acts.topk(INDEX_TOP_K, dim=0).values
    assert np.allclose(saved["top_values"], values.numpy(), rtol=1e-5, atol=1e-6)
    # where they are: the brute-force values at the saved tokens (tokens that tie, e.g. the same token right after
    # BOS in two rows, may come in either order)
    columns = np.arange(acts.shape[1])[None, :]
    assert np.allclose(acts.numpy()[saved["top_index"], columns], values.numpy(), rtol=1e-5, atol=1e-6)
    assert all(len(set(column)) == INDEX_TOP_K for column in saved["top_index"].T.tolist())
    assert (saved["n_active"] == (acts > 0).sum(dim=0).numpy()).all()
    # the sample: active tokens only, their values the brute-force values at those tokens
    keys = saved["sample_keys"]
    valid = np.isfinite(keys)
    cols = np.nonzero(valid)[1]
    assert np.allclose(saved["sample_values"][valid], acts.numpy()[saved["sample_index"][valid], cols], atol=1e-5)
    assert (saved["sample_values"][valid] > 0).all()
    # built twice: the same files
    again = build_exemplar_index(tc, corpus=str(corpus), context=BODY, rebuild=True)
    assert again.complete
    rebuilt = arrays(Path(again.folder))
    for name in _index.ARRAYS:
        assert np.array_equal(saved[name], rebuilt[name]), name
    # feature_exemplars reads it: the same top contexts as the index, source "index"
    result = feature_exemplars(tc, feature=7, corpus=str(corpus), context=BODY, top_k=5)
    assert result.source == "index" and "exemplar index" in result.note
    assert [e.activation for e in result.top] == pytest.approx(values[:5, 7].tolist(), rel=1e-3)
    assert [e.row * BODY + e.position for e in result.top] == saved["top_index"][:5, 7].tolist()
    assert result.density == pytest.approx(float((acts[:, 7] > 0).float().mean()), abs=1e-4)


def test_a_build_cut_into_pieces_resumes_to_the_same_index(
    tc: ToolContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = toy_corpus(tmp_path, paragraphs=30)
    whole = build_exemplar_index(tc, corpus=str(corpus), context=BODY)
    expected = arrays(Path(whole.folder))
    # every batch is past the deadline: each call does one batch, saves a checkpoint, and stops
    monkeypatch.setattr(_index, "time", SimpleNamespace(monotonic=lambda: 1e12))
    small = ToolContext(tc.model, Limits(max_batch_seconds=0.001))
    first = build_exemplar_index(small, corpus=str(corpus), context=BODY, rebuild=True)
    assert not first.complete and 0 < first.contexts_done < first.contexts_total
    calls = 1
    result = first
    while not result.complete:
        result = build_exemplar_index(small, corpus=str(corpus), context=BODY)
        calls += 1
        assert calls < 500
    assert calls > 2 and result.resumed_from > 0
    got = arrays(Path(result.folder))
    for name in _index.ARRAYS:
        assert np.array_equal(expected[name], got[name]), name


def test_another_sae_is_refused_naming_both_and_damage_is_rebuilt(tc: ToolContext, tmp_path: Path) -> None:
    corpus = toy_corpus(tmp_path)
    built = build_exemplar_index(tc, corpus=str(corpus), context=BODY)
    load_sae(tc, str(toy_sae_folder(tmp_path / "other", seed=1)))
    for call in (
        lambda: build_exemplar_index(tc, corpus=str(corpus), context=BODY),
        lambda: feature_exemplars(tc, feature=1, corpus=str(corpus), context=BODY),
    ):
        with pytest.raises(LensError) as caught:
            call()
        message = str(caught.value)
        assert "not for" in message and message.count("SAE ") >= 2 and "rebuild" in message
    rebuilt = build_exemplar_index(tc, corpus=str(corpus), context=BODY, rebuild=True)
    assert rebuilt.complete
    # damage a complete index: feature_exemplars notices and scans instead; a build rebuilds it
    folder = Path(built.folder)
    data = bytearray((folder / "top_values.npy").read_bytes())
    data[-1] ^= 0xFF
    (folder / "top_values.npy").write_bytes(bytes(data))
    result = feature_exemplars(tc, feature=1, corpus=str(corpus), context=BODY, top_k=2)
    assert result.source == "scan" and "damaged" in result.note
    again = build_exemplar_index(tc, corpus=str(corpus), context=BODY)
    assert again.complete and "damaged" in again.note
    assert feature_exemplars(tc, feature=1, corpus=str(corpus), context=BODY, top_k=2).source == "index"


def test_mlp_layer_index_and_bad_input(tc: ToolContext, tmp_path: Path) -> None:
    corpus = toy_corpus(tmp_path)
    result = build_exemplar_index(tc, layer=0, corpus=str(corpus), context=BODY, dry_run=True)
    assert result.dry_run and not result.complete and result.cost is not None
    with pytest.raises(LensError, match="layer=7"):
        build_exemplar_index(tc, layer=7, corpus=str(corpus))
    with pytest.raises(LensError, match="context=1"):
        build_exemplar_index(tc, corpus=str(corpus), context=1)


@pytest.mark.subprocess
def test_lens_mcp_index_command(tmp_path: Path) -> None:
    """`lens-mcp index` builds the index to the end (stdout: the last result), finds it complete the second time,
    and refuses an index built for another SAE naming both (exit 1, the message on stderr)."""
    corpus = toy_corpus(tmp_path)
    env = {**os.environ, "LENS_MCP_CACHE_DIR": str(tmp_path / "cache")}
    base = [sys.executable, "-m", "lens_mcp", "index", "--model", "toy-induction", "--corpus", str(corpus)]
    base += ["--context", str(BODY)]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *extra], capture_output=True, text=True, env=env, timeout=180)

    first = run("--sae", str(toy_sae_folder(tmp_path / "sae")))
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["complete"] and result["contexts_done"] == result["contexts_total"] > 0
    second = run("--sae", str(toy_sae_folder(tmp_path / "sae")))
    assert second.returncode == 0 and json.loads(second.stdout)["meaning"] == "the index is already complete."
    other = run("--sae", str(toy_sae_folder(tmp_path / "other", seed=3)))
    assert other.returncode == 1 and other.stdout == ""
    assert "not for" in other.stderr and "--rebuild" in other.stderr


def test_search_features_equals_a_hand_encoding_and_summarizes_from_the_index(tc: ToolContext, tmp_path: Path) -> None:
    text = "w12 w87 w33 w140 w5 w61 w12 w87 w33"
    tokens = tc.view.to_tokens(text)
    captured: list[torch.Tensor] = []

    def keep(activation: torch.Tensor, hook: Any = None) -> None:
        captured.append(activation[0].detach().clone())

    with torch.no_grad(), tc.view.hooks(fwd_hooks=[(HOOK, keep)]):
        tc.view(tokens)
    sae = tc.model.saes[HOOK]
    acts = ((captured[0].float() - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()  # [positions, d_sae]
    corpus = toy_corpus(tmp_path)
    # without an index: activations only, and a note saying how to get summaries
    at_last = search_features(tc, text, position=-1, corpus=str(corpus), top_k=4)
    values, units = acts[-1].topk(4)
    assert [m.unit for m in at_last.matches] == units.tolist()
    assert [m.activation for m in at_last.matches] == pytest.approx(values.tolist(), rel=1e-3, abs=1e-5)
    assert all(m.summary is None for m in at_last.matches) and "build_exemplar_index" in at_last.note
    # anywhere: each unit at its own max over the non-BOS positions
    build_exemplar_index(tc, corpus=str(corpus), context=BODY)  # another context length: not the one searched
    anywhere = search_features(tc, text, corpus=str(corpus), top_k=3)
    best, where = acts[1:].max(dim=0)
    values, units = best.topk(3)
    assert [m.unit for m in anywhere.matches] == units.tolist()
    assert [m.position for m in anywhere.matches] == [int(where[u]) + 1 for u in units]
    assert anywhere.index is None
    # with the index at the searched context length: a summary naming the max token of the index
    built = build_exemplar_index(tc, corpus=str(corpus))
    indexed = search_features(tc, text, corpus=str(corpus), top_k=3)
    assert indexed.index == built.folder
    saved = arrays(Path(built.folder))
    store = token_store(tc.view.tokenizer, tc.view.d_vocab, read_corpus(str(corpus)))
    for match in indexed.matches:
        row, pos = divmod(int(saved["top_index"][0, match.unit]), built.context)
        token = tc.view.tokenizer.convert_ids_to_tokens(int(store.context(row, built.context)[pos]))
        assert match.summary is not None and f"[[{token}]]" in match.summary
        assert f"max {float(saved['top_values'][0, match.unit]):.3g}" in match.summary


def test_search_features_bad_input(tc: ToolContext) -> None:
    for arguments, needle in [
        ({"position": 40}, "position=40"),
        ({"layer": 9}, "layer=9"),
        ({"top_k": 0}, "top_k=0"),
        ({"hook": "blocks.0.hook_resid_post"}, "no SAE is loaded on that hook"),
    ]:
        with pytest.raises(LensError, match=needle):
            search_features(tc, "w1 w2 w3", **arguments)
    with pytest.raises(LensError, match="text is empty"):
        search_features(tc, "")
