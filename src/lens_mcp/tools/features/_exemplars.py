"""Exemplars of a unit (an SAE feature, an MLP neuron, an attention head) over a corpus: the streaming scan with a
running top-k and a uniform sample of active tokens per unit, merged block by block, and the contexts read back.
Shared by feature_exemplars, the exemplar index and search_features. Private to tools/features/.

A scan reads contexts ("rows") of `body` corpus tokens, each after a BOS token when the tokenizer has one (BOS is
never scored). A token is named by its global index `row * body + position`. Per unit it keeps:
- the top-k activations and where they are (`torch.topk` over a [tokens, units] block, merged with the running
  top-k: exact, whatever the block size);
- the number of active tokens (> 0; heads: max attention to a non-BOS token > 0.5);
- a uniform sample of the active tokens: those of smallest priority, a fixed pseudo-random number per token, so
  the sample does not depend on the block size or the order of the rows (a bottom-k sketch, merged like the top-k).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from lens_mcp.errors import LensError
from lens_mcp.schemas.features import Exemplar, Histogram
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import rows_for_time
from lens_mcp.tools.core.tokens import token_strings
from lens_mcp.tools.features._corpus import TokenStore
from lens_mcp.tools.features._sae import flat
from lens_mcp.tools.features._sae_format import SAE

HEAD_ACTIVE = 0.5
"""A head counts as active at a query when it puts more than this on one non-BOS token."""
QUANTILE_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
HISTOGRAM_BINS = 10
BLOCK_CELLS = 1 << 24
"""Rows of one block are limited so that a [tokens, units] block holds about this many floats."""
_GATED_WARNING = r".*gated-off hook name"


@dataclass(frozen=True)
class Unit:
    """A group of units read at one hook: an SAE's features, one MLP layer's neurons, one layer's heads."""

    kind: Literal["sae", "neuron", "head"]
    hook: str
    layer: int
    width: int
    sae: SAE | None = None

    def label(self, index: int) -> str:
        if self.kind == "sae":
            return f"sae {self.hook} feature {index}"
        if self.kind == "neuron":
            return f"L{self.layer} neuron {index}"
        return f"L{self.layer}H{index}"

    @property
    def threshold(self) -> float:
        return HEAD_ACTIVE if self.kind == "head" else 0.0

    def activations(self, activation: torch.Tensor, start: int) -> torch.Tensor:
        """[batch, positions - start, width] from the hook's activation, BOS (the first `start` positions) dropped."""
        if self.kind == "sae":
            assert self.sae is not None
            acts, _ = self.sae.encode(flat(activation, self.hook).float())
            return acts[:, start:]
        if self.kind == "neuron":
            return activation[:, start:].float()
        # pattern [batch, heads, query, key]: the most a query puts on one non-BOS key
        return activation[:, :, start:, start:].float().amax(dim=-1).permute(0, 2, 1)


def unit_group(tc: ToolContext, kind: str, layer: int, sae: SAE | None = None) -> Unit:
    if kind == "sae":
        assert sae is not None
        from lens_mcp.tools.core.hook_names import hook_layer

        found = hook_layer(sae.hook_name)
        return Unit("sae", sae.hook_name, tc.view.n_layers - 1 if found is None else found, sae.d_sae, sae)
    if kind == "neuron":
        hook = f"blocks.{layer}.mlp.hook_post"
        if tc.view.d_mlp is None or hook not in tc.view.hook_dict:
            raise LensError("this model has no MLP neurons (attention-only): pass feature=... or head=... instead.")
        return Unit("neuron", hook, layer, int(tc.view.d_mlp))
    hook = f"blocks.{layer}.attn.hook_pattern"
    if hook not in tc.view.hook_dict:
        raise LensError(f"this model has no hook {hook}: attention heads cannot be read here.")
    return Unit("head", hook, layer, tc.view.n_heads)


def bos_id(tc: ToolContext) -> int | None:
    bos = tc.view.tokenizer.bos_token_id
    return None if bos is None else int(bos)


def batch_tokens(tc: ToolContext, store: TokenStore, rows: np.ndarray, body: int) -> tuple[torch.Tensor, int]:
    """([len(rows), start + body] token ids on the model's device, start): BOS first when the tokenizer has one."""
    ids = np.stack([store.context(int(row), body) for row in rows]) if len(rows) else np.zeros((0, body), np.int64)
    tokens = torch.from_numpy(ids)
    bos = bos_id(tc)
    start = 0
    if bos is not None:
        tokens = torch.cat([torch.full((tokens.shape[0], 1), bos, dtype=torch.long), tokens], dim=1)
        start = 1
    return tokens.to(tc.view.device), start


def hook_activation(tc: ToolContext, unit: Unit, tokens: torch.Tensor) -> torch.Tensor:
    """The activation at the unit's hook, the forward pass stopped after its block."""
    kwargs: dict[str, Any] = {}
    if unit.layer + 1 < tc.view.n_layers:
        kwargs["stop_at_layer"] = unit.layer + 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GATED_WARNING)
        _, cache = tc.view.run_with_cache(tokens, names_filter=[unit.hook], **kwargs)
    return cache[unit.hook]


def priorities(index: torch.Tensor) -> torch.Tensor:
    """A fixed pseudo-random number in [0, 1) per global token index (Knuth's multiplicative hash)."""
    return ((index * 2654435761) % (1 << 32)).double() / float(1 << 32)


@dataclass
class RunningStats:
    """Per unit: the top-k activations and their token indices, the count of active tokens, and a uniform sample
    of active tokens (values, token indices); merged block by block."""

    k: int
    n_samples: int
    width: int
    threshold: float = 0.0
    top_values: torch.Tensor = field(init=False)
    top_index: torch.Tensor = field(init=False)
    sample_keys: torch.Tensor = field(init=False)
    sample_values: torch.Tensor = field(init=False)
    sample_index: torch.Tensor = field(init=False)
    n_active: torch.Tensor = field(init=False)
    n_tokens: int = 0

    def __post_init__(self) -> None:
        self.top_values = torch.empty(0, self.width)
        self.top_index = torch.empty(0, self.width, dtype=torch.long)
        self.sample_keys = torch.empty(0, self.width, dtype=torch.float64)
        self.sample_values = torch.empty(0, self.width)
        self.sample_index = torch.empty(0, self.width, dtype=torch.long)
        self.n_active = torch.zeros(self.width, dtype=torch.long)

    def update(self, acts: torch.Tensor, index: torch.Tensor) -> None:
        """acts [tokens, width] (float, CPU), index [tokens] their global token indices, ascending."""
        acts = acts.float().cpu()
        index = index.cpu()
        n = int(acts.shape[0])
        if n == 0:
            return
        self.n_tokens += n
        self.n_active += (acts > self.threshold).sum(dim=0)
        block_index = index[:, None].expand(-1, self.width)
        values, where, _ = top_k_lowest_index(acts, block_index, self.k)
        self.top_values, self.top_index, _ = top_k_lowest_index(
            torch.cat([self.top_values, values]), torch.cat([self.top_index, where]), self.k, sort_index=True
        )
        keys = torch.where(acts > 0, -priorities(index)[:, None], torch.tensor(-np.inf, dtype=torch.float64))
        key_values, key_index, rows = top_k_lowest_index(keys, block_index, self.n_samples)
        self.sample_keys, self.sample_index, picked = top_k_lowest_index(
            torch.cat([self.sample_keys, key_values]),
            torch.cat([self.sample_index, key_index]),
            self.n_samples,
            sort_index=True,
        )
        self.sample_values = torch.cat([self.sample_values, acts.gather(0, rows)]).gather(0, picked)

    def column(self, unit: int) -> ColumnStats:
        valid = torch.isfinite(self.sample_keys[:, unit])
        return ColumnStats(
            top_values=self.top_values[:, unit].tolist(),
            top_index=self.top_index[:, unit].tolist(),
            sample_values=self.sample_values[valid, unit].tolist(),
            sample_index=self.sample_index[valid, unit].tolist(),
            n_active=int(self.n_active[unit]),
            n_tokens=self.n_tokens,
        )


def top_k_lowest_index(
    values: torch.Tensor, index: torch.Tensor, k: int, sort_index: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column of values [n, width]: the k largest, equal values resolved to the smaller token index, ordered by
    value (descending) then index, as (values, indices, their rows in the input). The same set and order whatever
    the block split, so a build cut into pieces or resumed equals one in a single pass. `index` [n, width] must be
    ascending down each column unless sort_index."""
    n = int(values.shape[0])
    k = min(k, n)
    rows_in = torch.arange(n)[:, None].expand(-1, values.shape[1])
    if sort_index:  # small candidate sets (merges): put each column in index order first
        order = index.argsort(dim=0, stable=True)
        values, index, rows_in = values.gather(0, order), index.gather(0, order), rows_in.gather(0, order)
    if k == 0:
        return values[:0], index[:0], rows_in[:0]
    kth = values.topk(k, dim=0).values[-1]
    greater = values > kth
    equal = values == kth
    chosen = greater | (equal & (equal.long().cumsum(dim=0) <= (k - greater.sum(dim=0))))
    rows = chosen.to(torch.float32).topk(k, dim=0).indices  # exactly k chosen per column: all of them
    picked_values, picked_index, picked_rows = values.gather(0, rows), index.gather(0, rows), rows_in.gather(0, rows)
    by_index = picked_index.argsort(dim=0, stable=True)
    picked_values, picked_index, picked_rows = (
        t.gather(0, by_index) for t in (picked_values, picked_index, picked_rows)
    )
    by_value = picked_values.argsort(dim=0, descending=True, stable=True)
    return tuple(t.gather(0, by_value) for t in (picked_values, picked_index, picked_rows))  # type: ignore[return-value]


@dataclass
class ColumnStats:
    """One unit's statistics (from a scan or an index)."""

    top_values: list[float]
    top_index: list[int]
    sample_values: list[float]
    sample_index: list[int]
    n_active: int
    n_tokens: int


def scan(
    tc: ToolContext,
    unit: Unit,
    store: TokenStore,
    rows: np.ndarray,
    body: int,
    k: int,
    n_samples: int,
    stats: RunningStats | None = None,
    label: str = "scanned",
    on_batch: Any = None,
    columns: list[int] | None = None,
) -> RunningStats:
    """Stream `rows` of the store through the model (batches sized by time and by memory), updating `stats`. After
    each batch: `on_batch(stats, rows_done)` (the index saves a checkpoint there), then progress (which raises
    when the call was cancelled). `columns`: keep statistics for these units only (stats column i = columns[i])."""
    width = unit.width if columns is None else len(columns)
    stats = stats or RunningStats(k, n_samples, width, unit.threshold)
    per_pass = max(1, min(rows_for_time(tc, body + 1, unit.layer + 1), BLOCK_CELLS // max(1, body * unit.width)))
    total = len(rows)
    done = 0
    while done < total:
        chunk = rows[done : done + per_pass]
        tokens, start = batch_tokens(tc, store, chunk, body)
        with torch.no_grad():
            acts = unit.activations(hook_activation(tc, unit, tokens), start)  # [b, body, width]
            if columns is not None:
                acts = acts[..., columns]
            index = torch.from_numpy(chunk)[:, None] * body + torch.arange(body)[None, :]
            stats.update(acts.reshape(-1, width), index.reshape(-1))
        done += len(chunk)
        if on_batch is not None:
            on_batch(stats, done)
        tc.progress(done, total, f"{label} {done * body:,}/{total * body:,} corpus tokens")
    return stats


# ---- reading contexts back ------------------------------------------------------------------------------------------


def read_contexts(
    tc: ToolContext,
    unit: Unit,
    column: int,
    store: TokenStore,
    body: int,
    picks: list[tuple[int, float, float | None]],
    before: int,
    after: int,
) -> list[Exemplar]:
    """Exemplars for `picks` = (global token index, activation, quantile level or None): each context's rows run
    again (one batch), a window of tokens around the token with every token's activation."""
    if not picks:
        return []
    rows = np.array(sorted({index // body for index, _, _ in picks}), dtype=np.int64)
    tokens, start = batch_tokens(tc, store, rows, body)
    with torch.no_grad():
        activation = hook_activation(tc, unit, tokens)
        if unit.kind == "head":
            pattern = activation[:, column, start:, start:].float().cpu()  # [rows, query, key]
            per_token = None
        else:
            per_token = unit.activations(activation, start)[..., column].cpu()  # [rows, body]
            pattern = None
    where = {int(row): i for i, row in enumerate(rows)}
    exemplars = []
    for index, value, level in picks:
        row, position = divmod(int(index), body)
        lo, hi = max(0, position - before), min(body, position + after + 1)
        ids = tokens[where[row], start + lo : start + hi]
        strings = token_strings(tc, ids)
        attends_to = source_token = None
        if pattern is not None:
            values = pattern[where[row], position, lo:hi].tolist()
            attends_to = int(pattern[where[row], position, : position + 1].argmax())
            source_token = token_strings(tc, tokens[where[row], start + attends_to : start + attends_to + 1])[0]
        else:
            assert per_token is not None
            values = per_token[where[row], lo:hi].tolist()
        exemplars.append(
            Exemplar(
                activation=value,
                level=level,
                row=row,
                position=position,
                marked=position - lo,
                attends_to=attends_to,
                attends_to_token=source_token,
                tokens=list(strings),
                activations=list(values),
            )
        )
    return exemplars


def quantile_picks(stats: ColumnStats, used: set[int]) -> list[tuple[int, float, float | None]]:
    """From the active-token sample, the token closest to each level x max (10 %-90 %), each token once."""
    if not stats.top_values or stats.top_values[0] <= 0 or not stats.sample_values:
        return []
    peak = stats.top_values[0]
    picks: list[tuple[int, float, float | None]] = []
    taken = set(used)
    for level in QUANTILE_LEVELS:
        target = level * peak
        best = None
        for value, index in zip(stats.sample_values, stats.sample_index, strict=True):
            if index in taken or value <= 0:
                continue
            if best is None or abs(value - target) < abs(best[1] - target):
                best = (index, value)
        if best is not None and abs(best[1] - target) <= 0.1 * peak:
            taken.add(best[0])
            picks.append((best[0], best[1], level))
    return picks


def histogram(stats: ColumnStats) -> Histogram | None:
    """Bins over (0, max] of the sampled active tokens (every active token when there are no more than the
    sample holds)."""
    values = [v for v in stats.sample_values if v > 0]
    if not values or not stats.top_values or stats.top_values[0] <= 0:
        return None
    edges = np.linspace(0.0, stats.top_values[0], HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(np.clip(values, 0, stats.top_values[0]), bins=edges)
    return Histogram(edges=edges.tolist(), counts=[int(c) for c in counts.tolist()], sampled=len(values))
