"""The exemplar index: the streaming scan of _exemplars.py over a whole corpus for every unit of an SAE or an MLP
layer, saved on disk, resumable, and found again by feature_exemplars. Private to tools/features/.

An index is the folder `<cache>/index/<model>-<unit>-<corpus>-<corpus key>-c<context>/`: the running statistics as .npy files
and `meta.json`, which names what it was built for: the model (and its weights fingerprint), the SAE (and a hash
of its weights and settings), the corpus's token store key and the context length. A build saves a checkpoint
every CHECKPOINT_SECONDS (statistics first, then meta.json with the rows done), so a build that was cancelled or
killed resumes where its last checkpoint left off, with the same result as an uninterrupted build (the running
top-k and the active-token sample do not depend on how the rows are split). A complete index gets a completion
marker holding the SHA-256 of every file, checked when it is read: a damaged index is reported and rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from lens_mcp.errors import LensError
from lens_mcp.loading.fingerprint import fingerprint
from lens_mcp.loading.gguf_cache import cache_root
from lens_mcp.loading.integrity import verify, write_marker
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.features._corpus import TokenStore
from lens_mcp.tools.features._exemplars import ColumnStats, RunningStats, Unit
from lens_mcp.tools.features._sae_format import SAE

INDEX_FORMAT = 1
MARKER = "lens-mcp-complete"
CHECKPOINT_SECONDS = 20.0
ARRAYS = ("top_values", "top_index", "sample_keys", "sample_values", "sample_index", "n_active")


def sae_hash(sae: SAE) -> str:
    """A hash of the SAE's weights and the settings that change its activations."""
    digest = xxhash.xxh3_128()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "finetuning_scale"):
        tensor = getattr(sae, name)
        if tensor is None:
            continue
        digest.update(f"{name}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().float().cpu().contiguous().reshape(-1).numpy().tobytes())
    settings = (sae.architecture, sae.hook_name, sae.k, sae.apply_b_dec_to_input, sae.normalize_activations)
    digest.update(repr((settings, sae.norm_scaling_factor, sae.rescale_acts_by_decoder_norm)).encode())
    return "xxh3-128:" + digest.hexdigest()


def unit_slug(unit: Unit) -> str:
    return f"sae-{unit.hook}" if unit.kind == "sae" else f"mlp-{unit.layer}"


def identity(tc: ToolContext, unit: Unit, store: TokenStore, body: int) -> dict[str, Any]:
    """What an index was built for; an index whose identity differs is not this one."""
    return {
        "format": INDEX_FORMAT,
        "model": tc.model.spec.name,
        "weights": fingerprint(tc.model),
        "unit": unit_slug(unit),
        "sae": None if unit.sae is None else {"source": unit.sae.source, "hash": sae_hash(unit.sae)},
        "corpus": store.name,
        "corpus_key": store.key,
        "context": body,
    }


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:150]


def index_folder(tc: ToolContext, unit: Unit, store: TokenStore, body: int) -> Path:
    return (
        cache_root() / "index" / _safe(f"{tc.model.spec.name}-{unit_slug(unit)}-{store.name}-{store.key[:12]}-c{body}")
    )


def any_index(tc: ToolContext, unit: Unit) -> bool:
    """Whether any index was built for these units of this model (before tokenizing a corpus to find one)."""
    prefix = _safe(f"{tc.model.spec.name}-{unit_slug(unit)}-")
    folder = cache_root() / "index"
    return folder.is_dir() and any(entry.name.startswith(prefix) for entry in folder.iterdir())


def describe_identity(meta: dict[str, Any]) -> str:
    sae = meta.get("sae")
    sae_text = f", SAE {sae.get('source')} ({str(sae.get('hash'))[:17]})" if isinstance(sae, dict) else ""
    return (
        f"model {meta.get('model')} (weights {str(meta.get('weights'))[:17]}){sae_text}, corpus {meta.get('corpus')} "
        f"({str(meta.get('corpus_key'))[:12]}), context {meta.get('context')}"
    )


def _matching_part(meta: dict[str, Any]) -> tuple[Any, ...]:
    sae = meta.get("sae")
    sae_hash_value = sae.get("hash") if isinstance(sae, dict) else None
    keys = ("format", "weights", "unit", "corpus_key", "context")
    return (*(meta.get(key) for key in keys), sae_hash_value)


def mismatch(found: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """None when `found` was built for `wanted` (the same weights, SAE weights, corpus text and context; names and
    paths may differ); else a sentence naming both."""
    if _matching_part(found) == _matching_part(wanted):
        return None
    return f"it was built for {describe_identity(found)}, not for {describe_identity(wanted)}"


@dataclass
class Index:
    folder: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def column(self, unit: int) -> ColumnStats:
        keys = self.arrays["sample_keys"][:, unit]
        valid = np.isfinite(keys)
        return ColumnStats(
            top_values=self.arrays["top_values"][:, unit].tolist(),
            top_index=self.arrays["top_index"][:, unit].tolist(),
            sample_values=self.arrays["sample_values"][valid, unit].tolist(),
            sample_index=self.arrays["sample_index"][valid, unit].tolist(),
            n_active=int(self.arrays["n_active"][unit]),
            n_tokens=int(self.meta["n_tokens"]),
        )

    def describe(self) -> str:
        return f"built over {self.meta['rows_done']:,} contexts, top {self.meta['k']} per unit, at {self.folder}"


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _load_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in ARRAYS}


def find_index(tc: ToolContext, unit: Unit, store: TokenStore, body: int) -> tuple[Index | None, str | None]:
    """(the complete index for this unit, model, corpus and context, or None; a note when one was found but is
    damaged). An index built for another model or SAE under the same name is refused, naming both."""
    if unit.kind == "head":
        return None, None
    folder = index_folder(tc, unit, store, body)
    if not (folder / MARKER).is_file():
        return None, None
    meta = _read_meta(folder)
    problem = verify(folder, MARKER)
    if meta is None or problem is not None:
        return None, f"the exemplar index at {folder} is damaged ({problem or 'meta.json unreadable'}); rebuild it."
    wrong = mismatch(meta, identity(tc, unit, store, body))
    if wrong is not None:
        raise LensError(
            f"the exemplar index at {folder} does not fit: {wrong}. Rebuild it for this one "
            "(build_exemplar_index with rebuild=true, or lens-mcp index --rebuild), or load the model and SAE it was "
            "built for."
        )
    try:
        return Index(folder, meta, _load_arrays(folder)), None
    except (OSError, ValueError) as exc:
        return None, f"the exemplar index at {folder} is unreadable ({type(exc).__name__}); rebuild it."


# ---- building ------------------------------------------------------------------------------------------------------


def _save_checkpoint(folder: Path, stats: RunningStats, meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    arrays = {
        "top_values": stats.top_values.numpy(),
        "top_index": stats.top_index.numpy(),
        "sample_keys": stats.sample_keys.numpy(),
        "sample_values": stats.sample_values.numpy(),
        "sample_index": stats.sample_index.numpy(),
        "n_active": stats.n_active.numpy(),
    }
    for name, array in arrays.items():
        part = folder / f"{name}.npy.part"
        with open(part, "wb") as out:
            np.save(out, array, allow_pickle=False)
        os.replace(part, folder / f"{name}.npy")
    part = folder / "meta.json.part"
    part.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    os.replace(part, folder / "meta.json")


def _resume(folder: Path, wanted: dict[str, Any], k: int, n_samples: int, width: int, threshold: float) -> Any:
    """(stats, rows_done) from a checkpoint of the same build, else None."""
    meta = _read_meta(folder)
    if meta is None or mismatch(meta, wanted) is not None or meta.get("k") != k or meta.get("n_samples") != n_samples:
        return None
    try:
        arrays = _load_arrays(folder)
    except (OSError, ValueError):
        return None
    stats = RunningStats(k, n_samples, width, threshold)
    stats.top_values = torch.from_numpy(arrays["top_values"])
    stats.top_index = torch.from_numpy(arrays["top_index"])
    stats.sample_keys = torch.from_numpy(arrays["sample_keys"])
    stats.sample_values = torch.from_numpy(arrays["sample_values"])
    stats.sample_index = torch.from_numpy(arrays["sample_index"])
    stats.n_active = torch.from_numpy(arrays["n_active"])
    stats.n_tokens = int(meta.get("n_tokens", 0))
    return stats, meta


@dataclass
class BuildState:
    folder: Path
    stats: RunningStats
    meta: dict[str, Any]
    rows: np.ndarray
    resumed_from: int
    note: str


def prepare_build(
    tc: ToolContext,
    unit: Unit,
    store: TokenStore,
    body: int,
    n_rows: int,
    k: int,
    n_samples: int,
    rebuild: bool,
) -> BuildState:
    """Where the build of this index starts: a complete index (nothing to do), a checkpoint to resume, or
    nothing. An index or checkpoint for another model or SAE is refused, naming both, unless rebuild."""
    folder = index_folder(tc, unit, store, body)
    wanted = identity(tc, unit, store, body)
    rows = store.rows(body, n_rows)
    note = ""
    if rebuild:
        shutil.rmtree(folder, ignore_errors=True)
    meta = _read_meta(folder) if folder.exists() else None
    if meta is not None:
        wrong = mismatch(meta, wanted)
        if wrong is not None:
            raise LensError(
                f"an exemplar index already exists at {folder}: {wrong}. Pass rebuild=true (lens-mcp index --rebuild) "
                "to replace it."
            )
        if (folder / MARKER).is_file():
            problem = verify(folder, MARKER)
            if problem is not None:
                note = f"The index at {folder} was damaged ({problem}) and is rebuilt. "
                shutil.rmtree(folder, ignore_errors=True)
                meta = None
        if meta is not None and meta.get("n_rows") != len(rows):
            note += f"The index was built over {meta.get('n_rows')} contexts; rebuilt over {len(rows)}. "
            shutil.rmtree(folder, ignore_errors=True)
            meta = None
    elif folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    resumed = _resume(folder, wanted, k, n_samples, unit.width, unit.threshold) if meta is not None else None
    if resumed is not None:
        stats, meta = resumed
        return BuildState(folder, stats, meta, rows, int(meta["rows_done"]), note)
    meta = {
        **wanted,
        "k": k,
        "n_samples": n_samples,
        "n_rows": len(rows),
        "rows_done": 0,
        "n_tokens": 0,
        "complete": False,
    }
    return BuildState(folder, RunningStats(k, n_samples, unit.width, unit.threshold), meta, rows, 0, note)


class Checkpointer:
    """on_batch for the scan: saves a checkpoint every CHECKPOINT_SECONDS, and stops the call (StopBuild) when its
    time budget is spent."""

    def __init__(self, state: BuildState, first_row: int, deadline: float | None) -> None:
        self.state = state
        self.first_row = first_row
        self.deadline = deadline
        self.last = time.monotonic()

    def save(self, stats: RunningStats, rows_done: int) -> None:
        self.state.meta.update(rows_done=rows_done, n_tokens=stats.n_tokens)
        _save_checkpoint(self.state.folder, stats, self.state.meta)
        self.last = time.monotonic()

    def __call__(self, stats: RunningStats, done_in_call: int) -> None:
        now = time.monotonic()
        rows_done = self.first_row + done_in_call
        if self.deadline is not None and now >= self.deadline and rows_done < len(self.state.rows):
            self.save(stats, rows_done)
            raise StopBuild(rows_done)
        if now - self.last >= CHECKPOINT_SECONDS:
            self.save(stats, rows_done)


class StopBuild(Exception):
    """The call's time budget is spent; the checkpoint is saved."""

    def __init__(self, rows_done: int) -> None:
        super().__init__(rows_done)
        self.rows_done = rows_done


def finish(state: BuildState) -> None:
    state.meta.update(rows_done=len(state.rows), n_tokens=state.stats.n_tokens, complete=True)
    _save_checkpoint(state.folder, state.stats, state.meta)
    write_marker(state.folder, MARKER)
