"""Corpora for exemplars: local .txt/.jsonl files and the builtins tokenized once per tokenizer into a memory-mapped
token store (checked against the tokenizer called here by hand), reused when intact and rebuilt when damaged, a
10 % held-out split, and bad input (empty, not UTF-8, outside the load roots, a Hub dataset id offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lens_mcp.errors import LensError
from lens_mcp.loading.policy import LoadPolicy
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.features._corpus import HELD_OUT_EVERY, read_corpus, token_store

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big", "red"]


def write_txt(folder: Path, paragraphs: int = 25) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 15)))) for _ in range(paragraphs)]
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return path, texts


def expected_tokens(tc: ToolContext, texts: list[str]) -> tuple[list[int], list[int]]:
    train: list[int] = []
    held: list[int] = []
    for index, text in enumerate(texts):
        ids = tc.view.tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]
        (held if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).extend(ids)
    return train, held


def test_txt_store_equals_the_tokenizer_and_holds_out_every_tenth_document(toy: ToolContext, tmp_path: Path) -> None:
    path, texts = write_txt(tmp_path)
    store = token_store(toy.view.tokenizer, toy.view.d_vocab, read_corpus(str(path)))
    train, held = expected_tokens(toy, texts)
    assert store.train.tolist() == train
    assert store.held_out.tolist() == held
    assert isinstance(store.tokens, np.memmap)
    again = token_store(toy.view.tokenizer, toy.view.d_vocab, read_corpus(str(path)))
    assert again.folder == store.folder and again.rebuilt_because is None


def test_a_damaged_store_is_detected_and_rebuilt(toy: ToolContext, tmp_path: Path) -> None:
    path, texts = write_txt(tmp_path, paragraphs=12)
    folder = token_store(toy.view.tokenizer, toy.view.d_vocab, read_corpus(str(path))).folder
    data = bytearray((folder / "tokens.bin").read_bytes())
    data[0] ^= 0xFF
    (folder / "tokens.bin").write_bytes(bytes(data))
    rebuilt = token_store(toy.view.tokenizer, toy.view.d_vocab, read_corpus(str(path)))
    assert rebuilt.rebuilt_because is not None and "tokens.bin" in rebuilt.rebuilt_because
    assert rebuilt.train.tolist() == expected_tokens(toy, texts)[0]


def test_a_different_corpus_or_tokenizer_gets_its_own_store(toy: ToolContext, tmp_path: Path) -> None:
    path, _ = write_txt(tmp_path, paragraphs=12)
    first = token_store(toy.view.tokenizer, toy.view.d_vocab, read_corpus(str(path)))
    path.write_text(path.read_text() + "\n\nred dog\n", encoding="utf-8")
    second = token_store(toy.view.tokenizer, toy.view.d_vocab, read_corpus(str(path)))
    assert first.key != second.key and first.folder != second.folder


def test_jsonl_reads_the_text_field(toy: ToolContext, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"the cat {w}"}) for w in WORDS) + "\n", encoding="utf-8")
    documents = read_corpus(str(path))
    assert documents.texts == [f"the cat {w}" for w in WORDS]
    store = token_store(toy.view.tokenizer, toy.view.d_vocab, documents)
    assert store.n_train == sum(
        len(toy.view.tokenizer(f"the cat {w}", add_special_tokens=False)["input_ids"])
        for i, w in enumerate(WORDS)
        if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1
    )


def test_python_stdlib_is_always_there(toy: ToolContext) -> None:
    documents = read_corpus("python-stdlib")
    assert len(documents.texts) > 50 and any("def " in text for text in documents.texts)


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "is empty"), (b"\n\n  \n", "is empty"), (b"caf\xe9 au lait\n", "not UTF-8")],
)
def test_bad_files_are_refused_clearly(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(LensError, match=needle):
        read_corpus(str(path))


def test_bad_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{oops\n', encoding="utf-8")
    with pytest.raises(LensError, match="line 2 is not JSON"):
        read_corpus(str(path))


def test_load_policy_and_offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = write_txt(tmp_path)
    elsewhere = tmp_path / "root"
    elsewhere.mkdir()
    policy = LoadPolicy(roots=(elsewhere.resolve(),), paths=True, hub=False)
    with pytest.raises(LensError, match="not allowed"):
        read_corpus(str(path), policy)
    with pytest.raises(LensError, match="not allowed"):
        read_corpus(str(tmp_path / "missing.txt"), policy)  # the same refusal, existing or not
    assert read_corpus("python-stdlib", policy).name == "python-stdlib"
    with pytest.raises(LensError, match="dataset ids are off"):
        read_corpus("NeelNanda/pile-10k", policy)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LensError, match="cannot be reached"):
        read_corpus("NeelNanda/pile-10k")
    with pytest.raises(LensError, match="not a builtin corpus"):
        read_corpus("no-such-corpus")


def test_the_store_key_ignores_the_tokenizers_truncation_and_padding_state(toy: ToolContext, tmp_path: Path) -> None:
    path, _ = write_txt(tmp_path, paragraphs=12)
    first = token_store(toy.view.tokenizer, toy.view.d_vocab, read_corpus(str(path)))
    toy.view.tokenizer(["w1 w2", "w3"], padding=True, truncation=True, max_length=8)  # changes the backend's state
    again = token_store(toy.view.tokenizer, toy.view.d_vocab, read_corpus(str(path)))
    assert again.key == first.key and again.rebuilt_because is None
