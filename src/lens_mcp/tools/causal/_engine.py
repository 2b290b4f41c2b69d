"""The machinery behind patch_sweep (and ablate_heads' batched runs): many patched copies of one prompt,
computed exactly but far faster than one hooked forward pass per cell.

A cell writes one clean activation into the corrupted run at a per-layer hook point (`Patch`). Three
facts make a sweep cheap:

1. A patch at layer L cannot change anything before block L. Each patched row therefore starts at block L
   from the corrupted run's cached `resid_pre[L]`: the engine calls the model's own blocks
   (`bridge.blocks[i]`, so every hook point fires as in a full forward pass) with the keyword arguments
   the model passed them in the corrupted run (attention mask, rotary embeddings, position ids).
2. Attention is causal. If the first position where the patched activation differs from the corrupted
   one is p, positions before p are identical to the corrupted run at every later layer. Rows only compute
   positions p.., and attend to the corrupted run's keys and values for positions < p, which the corrupted
   run recorded (the attention bridges are handed a `layer_past` cache object). Cells whose clean and
   corrupted activations are identical are no-ops and equal the corrupted metric without any computation.
3. The metric reads only the last position, so the final norm and the unembedding run on that position
   only (two columns of the unembedding for a logit difference).

Rows with the same p are batched (groups with different p are merged, computed from the smaller p, where
that saves more block calls than it adds arithmetic); rows that start at different layers join the batch as
it reaches their layer. Every batch carries a control row (an unpatched copy) whose result must reproduce the corrupted
run (batches of one sequence are checked by one whole driven pass instead). If a check fails (an
architecture whose blocks need something this engine does not pass), the engine falls back to batched
full forward passes with hooks, which is what TransformerLens's patching functions compute, one row per
cell instead of one forward pass per cell.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lens_mcp.schemas.patching import PatchMethod
from lens_mcp.tools.core.batching import (
    BatchPlan,
    ProgressCounter,
    is_out_of_memory,
    iter_batched,
    plan_rows,
    sequence_bytes,
)
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import observe, seconds_per_row
from lens_mcp.tools.core.forward import readout
from lens_mcp.tools.core.metrics import AnswerMetric

log = logging.getLogger(__name__)

_DROPPED_BLOCK_KWARGS = {
    "cache",
    "past_key_values",
    "layer_past",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "cache_position_offset",
}
_RELATIVE_TOLERANCE = 1e-3

MERGE_OFFSETS: bool | None = None
"""Rows whose first changed position differs can share a batch, all computed from the smaller position: more
arithmetic, fewer block calls. True: always merge; False: one batch group per position; None (default):
merge where the estimated cost is lower (`_CALL_COST_FLOPS`)."""

_CALL_COST_FLOPS = {"cpu": 1.5e9, "other": 1e12}
_PREFIX_ELEMENT_FLOPS = 220.0
"""What a suffix row pays per element of the recorded prefix keys and values it attends over (expanded to every
query head, per row and block), in floating-point operations of the same time: memory traffic, not arithmetic.
Measured on SmolLM2-135M on a 2-core CPU with rows of the last one or two positions of a 260-token pair, where
it is most of a row's time (without it those rows ran 2.2x their estimate)."""
"""What one block call costs beyond its arithmetic (Python, hooks, kernel launches, small-matrix
inefficiency), in floating-point operations of the same time: on a 2-core CPU about 200 token-blocks of
SmolLM2-135M (one group per position and one group for all were timed against each other on the 30 x 10
resid_pre sweep). On a GPU arithmetic is nearly free at these sizes, so groups are practically always merged."""


class EngineMismatch(RuntimeError):
    """The driven blocks did not reproduce the model's forward pass; use the hooked path instead."""


class Edit(Protocol):
    """One change a patched row makes at one hook point (a Patch is one)."""

    @property
    def hook(self) -> str: ...

    def apply(self, act: torch.Tensor, row: int, offset: int) -> None: ...


@dataclass(frozen=True)
class Patch:
    """Write `value` (a clean activation) into the hook point `hook` of block `layer`.

    `position` is an absolute position, or None for every position (value then has the position axis
    first); `head` indexes the head axis of per-head hook points: axis 2 of [batch, pos, head, ...] (q, k, v,
    z), or axis 1 of an attention pattern [batch, head, query, key] (`head_axis=1`; its position axis is the
    query axis). `first_diff` is the first position at which `value` differs from the corrupted activation
    (None: the patch changes nothing). `pair` is the prompt pair (engine row of pairs) the patch belongs to."""

    layer: int
    hook: str
    position: int | None
    head: int | None
    value: torch.Tensor
    first_diff: int | None
    head_axis: int = 2
    pair: int = 0
    add: bool = False
    """Add `value` to the activation instead of writing it (path patching adds a sender's clean-minus-corrupted
    write to a receiver's input)."""
    also: tuple[Edit, ...] = ()
    """Further edits made in the same row (at other hook points or heads); `layer` and `first_diff` must then
    be the earliest over all of them."""

    def edits(self) -> tuple[Edit, ...]:
        """Every edit this row makes, each applied at its own `hook` (a Patch whose `hook` is empty only carries
        `also`)."""
        return (self, *self.also) if self.hook else self.also

    def apply(self, act: torch.Tensor, row: int, offset: int) -> None:
        """Write into row `row` of an activation [batch, pos, ...] that starts at absolute position `offset`."""
        if self.head is not None and self.head_axis == 1:
            target = act[row, self.head]  # [query, key]: queries from `offset` on
            if self.position is None:
                target.copy_(self.value[offset : offset + target.shape[0]])
            else:
                target[self.position - offset] = self.value
        elif self.position is None:
            target = act[row, :, self.head] if self.head is not None else act[row]
            value = self.value[offset : offset + target.shape[0]]
            if self.add:
                target.add_(value)
            else:
                target.copy_(value)
        else:
            index = (row, self.position - offset) if self.head is None else (row, self.position - offset, self.head)
            if self.add:
                act[index] += self.value
            else:
                act[index] = self.value


def first_difference(clean: torch.Tensor, corrupted: torch.Tensor) -> int | None:
    """First index along dim 0 where two activations differ at all (None if they are identical)."""
    if clean.shape != corrupted.shape:
        return 0
    differs = (clean != corrupted).reshape(clean.shape[0], -1).any(dim=1)
    hits = torch.nonzero(differs)
    return int(hits[0, 0]) if len(hits) else None


def make_patch(
    layer: int,
    hook: str,
    clean_act: torch.Tensor,
    corrupted_act: torch.Tensor,
    position: int | None,
    head: int | None,
    *,
    head_axis: int = 2,
    pair: int = 0,
) -> Patch:
    """A patch from the clean and corrupted activations at `hook` (shape [1, pos, ...], batch removed here;
    for an attention pattern [1, head, query, key] with head_axis=1)."""
    clean, corrupted = clean_act[0], corrupted_act[0]
    if head is not None:
        clean, corrupted = clean.select(head_axis - 1, head), corrupted.select(head_axis - 1, head)
    if position is None:
        value, first = clean, first_difference(clean, corrupted)
    else:
        value = clean[position]
        first = None if torch.equal(value, corrupted[position]) else position
    return Patch(layer, hook, position, head, value, first, head_axis, pair)


class Readout:
    """The metric from the final residual stream at the last position, through the one readout path
    (`core.forward.readout`: final norm, unembedding, output transform), there only (two columns of the
    unembedding for a logit difference), or from full logits."""

    def __init__(self, tc: ToolContext, metric: AnswerMetric):
        self.tc = tc
        self.metric = metric
        self._ids: list[int] | None = None
        if metric.name == "logit_diff":
            self._ids = [metric.answer_id] + ([metric.wrong_id] if metric.wrong_id is not None else [])

    def from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.metric(logits)

    def from_resid(self, resid: torch.Tensor) -> torch.Tensor:
        """resid: [batch, d_model] residual stream after the last block, at the last position."""
        if self._ids is not None:
            logits = readout(self.tc, resid, self._ids).float()
            return logits[:, 0] - logits[:, 1] if logits.shape[-1] == 2 else logits[:, 0]
        return self.metric(readout(self.tc, resid))


class _PrefixKV:
    """Handed to the attention bridges as `layer_past`: records each layer's keys and values, or prepends
    the recorded keys/values of positions < `prefix` (the corrupted run's) to a batch of suffix rows."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.recording = True
        self.prefix = 0
        self.rows: torch.Tensor | None = None
        """The pair of each batch row (indexes the recorded runs); None: every row is pair 0."""

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if self.recording:
            self.keys[int(layer_idx)] = key.detach()
            self.values[int(layer_idx)] = value.detach()
            return key, value
        if self.prefix == 0:
            return key, value
        past_key = self.keys[int(layer_idx)][..., : self.prefix, :]
        past_value = self.values[int(layer_idx)][..., : self.prefix, :]
        batch = key.shape[0]
        if self.rows is not None and past_key.shape[0] > 1:
            past_key, past_value = past_key[self.rows], past_value[self.rows]
        else:
            past_key = past_key[:1].expand(batch, *past_key.shape[1:])
            past_value = past_value[:1].expand(batch, *past_value.shape[1:])
        return torch.cat([past_key, key], dim=-2), torch.cat([past_value, value], dim=-2)


class _RowsDiffer(Exception):
    """A block argument differs between the prompts of a multi-pair batch (it cannot be shared)."""


def _corrupted_row(value: Any, batch: int = 2) -> Any:
    """A block argument captured on the [clean, corrupted] batch (or [clean, corrupted] x pairs), cut to the
    corrupted row where it has a batch axis of `batch` (masks and rotary embeddings are usually shared, with a
    batch axis of 1). With several pairs the rows must all be equal (no padding: they are), else _RowsDiffer."""
    if isinstance(value, torch.Tensor):
        if value.ndim >= 2 and value.shape[0] == batch:
            if batch == 2:
                return value[1:2]
            if not bool((value == value[:1]).all()):
                raise _RowsDiffer
            return value[1:2]
        return value
    if isinstance(value, tuple):
        return tuple(_corrupted_row(item, batch) for item in value)
    return value


def _close(a: torch.Tensor, b: torch.Tensor | float, scale: float) -> bool:
    """Equal up to float noise: |a - b| <= 1e-3 * max(1, scale), everywhere (and finite)."""
    a = a.detach().float().cpu()
    b = b.detach().float().cpu() if isinstance(b, torch.Tensor) else torch.tensor(float(b))
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= _RELATIVE_TOLERANCE * max(1.0, scale)


@dataclass
class EngineStats:
    forward_passes: int = 0
    """Batched passes run (the clean and corrupted runs included)."""
    sequences: int = 0
    """Patched rows computed (no-op cells excluded)."""
    skipped: int = 0
    """Cells whose clean and corrupted activations are identical (no computation needed)."""
    method: PatchMethod = "driven"
    batch_rows: int = 0
    batch_bound: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedWork:
    """What `PatchEngine.run` will compute for a list of patches, counted from the prepared runs (so the cells
    that change nothing and the positions before each row's first difference are not counted)."""

    token_layers: int
    """Tokens x blocks the patched rows (and control rows) run."""
    prefix_token_layers: float
    """The time those rows spend attending over the recorded prefix positions, in token-blocks (beyond
    `token_layers`; see _PREFIX_ELEMENT_FLOPS)."""
    block_calls: int
    """Block calls (one per layer per batch), each costing `cost.block_call_seconds` beyond its arithmetic."""
    rows: int
    """Patched rows computed."""
    batches: int


class PatchEngine:
    """Runs patched copies of `tokens` (the corrupted prompt, shape [1, n]) and returns the metric of each.

    Several prompt pairs of one length can share an engine: `pair` is then [2 * n_pairs, n] (clean_0,
    corrupted_0, clean_1, corrupted_1, ...), `readout` one Readout per pair, and each Patch names its `pair`;
    rows of different pairs share batches. "clean" is the run patches read from and "corrupted" the run they
    write into: a caller that noises (corrupted into clean) passes each pair swapped."""

    def __init__(
        self,
        tc: ToolContext,
        pair: torch.Tensor,
        readout: Readout | Sequence[Readout],
        cache_hooks: Sequence[str],
    ):
        """`pair`: token ids [2, n], the clean prompt then the corrupted one (or [2 * n_pairs, n]);
        `cache_hooks`: the hook points patches will read (clean) and compare (corrupted)."""
        self.tc = tc
        self.view = tc.view
        self.pair = pair
        self.n_pairs = int(pair.shape[0]) // 2
        self.tokens = pair[1:2]
        self.bases = pair[1::2]
        """The corrupted prompt of each pair, [n_pairs, n]."""
        self.readouts = list(readout) if isinstance(readout, Sequence) else [readout] * self.n_pairs
        if len(self.readouts) != self.n_pairs:
            raise ValueError(f"{len(self.readouts)} readouts for {self.n_pairs} pairs")
        self.readout = self.readouts[0]
        self.n_layers = tc.view.n_layers
        self.n_tokens = int(pair.shape[-1])
        self.stats = EngineStats()
        self.block_kwargs: dict[int, dict[str, Any]] = {}
        self.kv = _PrefixKV()
        self.suffix_ok = False
        self.driven_ok = False
        blocks = self.view.blocks
        self._blocks = list(blocks) if blocks is not None and len(blocks) == self.n_layers else None
        resid = [f"blocks.{layer}.hook_resid_pre" for layer in range(self.n_layers)]
        resid.append(f"blocks.{self.n_layers - 1}.hook_resid_post")
        self.cache_hooks = list(dict.fromkeys(cache_hooks))
        self.cache_names = list(dict.fromkeys([*resid, *cache_hooks]))
        self.cache: dict[str, torch.Tensor] = {}
        """Corrupted-run activations, [n_pairs, pos, ...] ([1, pos, ...] for one pair)."""
        self.clean_cache: dict[str, torch.Tensor] = {}
        """Clean-run activations at `cache_hooks`, [n_pairs, pos, ...]."""
        self.metric_value: float = float("nan")
        """The metric on the corrupted prompt (of pair 0)."""
        self.clean_value: float = float("nan")
        self.last_logits: torch.Tensor = torch.empty(0)
        """Logits at the last position after prepare(): row 0 the clean run, row 1 the corrupted run."""
        self.metric_values: list[float] = []
        """The metric on each pair's corrupted prompt."""
        self.clean_values: list[float] = []

    def stored_bytes(self) -> int:
        """Bytes the prepared engine holds across batches: both runs' caches and the recorded keys and values."""
        tensors = [*self.cache.values(), *self.clean_cache.values(), *self.kv.keys.values(), *self.kv.values.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---- preparation -------------------------------------------------------------------------
    def prepare(self) -> None:
        """The clean and corrupted runs, as one batch of two: their caches, the arguments each block received,
        and each layer's keys and values (the attention bridges are handed a `layer_past` that records)."""
        try:
            captured = self._paired_run(record_kv=self._blocks is not None)
        except Exception:
            log.info("recording keys/values failed; running the prompts plainly", exc_info=True)
            self.kv = _PrefixKV()
            captured = self._paired_run(record_kv=False)
        if self._blocks is None or len(captured) != self.n_layers:
            self.stats.notes.append("model blocks could not be driven directly; used hooked forward passes")
            return
        try:
            for index, kwargs in captured.items():
                self.block_kwargs[index] = {
                    k: _corrupted_row(v, 2 * self.n_pairs)
                    for k, v in kwargs.items()
                    if k not in _DROPPED_BLOCK_KWARGS and k != "hidden_states"
                }
        except _RowsDiffer:
            self.stats.notes.append("block arguments differ between prompts; used hooked forward passes")
            return
        self.driven_ok = True
        recorded = all(
            layer in self.kv.keys
            and self.kv.keys[layer].shape[-2] == self.n_tokens
            and self.kv.keys[layer].shape[0] == 2 * self.n_pairs
            for layer in range(self.n_layers)
        )
        if recorded:
            for store in (self.kv.keys, self.kv.values):
                for layer in store:
                    store[layer] = store[layer][1::2]
        self.suffix_ok = recorded and self._suffix_kwargs_supported()

    def _paired_run(self, record_kv: bool) -> dict[int, dict[str, Any]]:
        wanted = set(self.cache_names)
        captured: dict[int, dict[str, Any]] = {}
        handles = []

        def inject(_module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            return args, {**kwargs, "layer_past": self.kv}

        self.kv.recording = True
        try:
            for index, block in enumerate(self._blocks or []):

                def capture(_module: Any, _args: Any, kwargs: dict[str, Any], index: int = index) -> None:
                    captured[index] = dict(kwargs)

                handles.append(block.register_forward_pre_hook(capture, with_kwargs=True))
                attention = getattr(block, "attn", None)
                if record_kv and isinstance(attention, torch.nn.Module):
                    handles.append(attention.register_forward_pre_hook(inject, with_kwargs=True))
            logits, cache = self.view.run_with_cache(self.pair, names_filter=lambda name: name in wanted)
        finally:
            self.kv.recording = False
            for handle in handles:
                handle.remove()
        self.stats.forward_passes += 1
        self.cache = {name: cache[name][1::2] for name in self.cache_names}
        self.clean_cache = {name: cache[name][0::2] for name in self.cache_hooks}
        last = logits[:, -1].detach()
        rows = [p for p in range(self.n_pairs) for _ in (0, 1)]
        values = self._read(last, rows, from_logits=True).tolist()
        self.clean_values, self.metric_values = values[0::2], values[1::2]
        self.clean_value, self.metric_value = self.clean_values[0], self.metric_values[0]
        self.last_logits = last
        return captured

    def _read(self, x: torch.Tensor, pairs: Sequence[int], *, from_logits: bool = False) -> torch.Tensor:
        """The metric of each row of `x` (final residual [rows, d_model] at the last position, or logits there)
        under the readout of its pair."""
        groups: dict[int, list[int]] = defaultdict(list)
        for row, pair in enumerate(pairs):
            groups[id(self.readouts[pair])].append(row)
        if len(groups) == 1:
            readout = self.readouts[pairs[0]]
            return (readout.from_logits(x) if from_logits else readout.from_resid(x)).float()
        out = torch.empty(len(pairs), dtype=torch.float32, device=x.device)
        for rows in groups.values():
            readout = self.readouts[pairs[rows[0]]]
            part = x[rows]
            out[rows] = (readout.from_logits(part) if from_logits else readout.from_resid(part)).float()
        return out

    def validate(self, offset: int) -> None:
        """Drive every block on the corrupted run from position `offset` on (earlier positions from the
        recorded keys/values) and check it reproduces the forward pass: the control row's check, for batches
        too small to carry one. Raises EngineMismatch."""
        try:
            self.kv.rows = None
            x = self.cache["blocks.0.hook_resid_pre"][:1, offset:].clone()
            for layer in range(self.n_layers):
                x = self._call_block(layer, x, offset, with_kv=offset > 0)
            driven = x[:, -1]
            value = self.readout.from_resid(driven)
        except Exception as exc:
            raise EngineMismatch(f"driving the blocks failed: {type(exc).__name__}: {exc}") from exc
        self.stats.forward_passes += 1
        reference = self.cache[f"blocks.{self.n_layers - 1}.hook_resid_post"][:1, -1]
        if not _close(driven, reference, float(reference.abs().max())):
            raise EngineMismatch("final residual differs from the forward pass")
        if not _close(value, self.metric_value, abs(self.metric_value)):
            raise EngineMismatch(f"metric {float(value[0])} differs from the forward pass {self.metric_value}")

    def _suffix_kwargs_supported(self) -> bool:
        for kwargs in self.block_kwargs.values():
            for name, value in kwargs.items():
                if name in ("attention_mask", "position_embeddings", "position_ids", "cache_position"):
                    continue
                if isinstance(value, torch.Tensor) or (
                    isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value)
                ):
                    return False  # an argument this engine does not know how to cut to a suffix
        return True

    def _sliced_kwargs(self, layer: int, offset: int) -> dict[str, Any]:
        kwargs = dict(self.block_kwargs[layer])
        if offset == 0:
            return kwargs
        n = self.n_tokens
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim >= 3 and mask.shape[-2] == n:
            kwargs["attention_mask"] = mask[..., offset:, :]
        embeddings = kwargs.get("position_embeddings")
        if isinstance(embeddings, tuple):
            kwargs["position_embeddings"] = tuple(
                t[..., offset:, :] if isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[-2] == n else t
                for t in embeddings
            )
        for name in ("position_ids", "cache_position"):
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor) and value.shape[-1] == n:
                kwargs[name] = value[..., offset:]
        return kwargs

    def _call_block(self, layer: int, x: torch.Tensor, offset: int, *, with_kv: bool) -> torch.Tensor:
        assert self._blocks is not None
        kwargs = self._sliced_kwargs(layer, offset)
        if with_kv:
            kwargs["layer_past"] = self.kv
        out = self._blocks[layer](x, **kwargs)
        if isinstance(out, tuple):
            out = out[0]
        return out

    # ---- running cells -----------------------------------------------------------------------
    def run(self, patches: Sequence[Patch], counter: ProgressCounter) -> torch.Tensor:
        """The metric for each patch (cells that change nothing get their pair's corrupted metric)."""
        base = torch.tensor(self.metric_values or [self.metric_value], dtype=torch.float32)
        values = base[[patch.pair for patch in patches]] if patches else torch.zeros(0)
        active = [i for i, patch in enumerate(patches) if patch.first_diff is not None]
        self.stats.skipped = len(patches) - len(active)
        if self.stats.skipped:
            counter.advance(self.stats.skipped, f"{self.stats.skipped} cells are identical in both runs")
        if not active:
            return values
        remaining = active
        if self.driven_ok:
            finished: set[int] = set()
            try:
                self._run_driven(patches, active, values, counter, finished)
                self.stats.method = "driven" if self.suffix_ok else "driven-full"
                return values
            except EngineMismatch as exc:
                log.warning("driven patching disagreed with the forward pass (%s); using hooked passes", exc)
                self.stats.notes.append("driven blocks failed a control check; used hooked forward passes")
                remaining = [i for i in active if i not in finished]
        self._run_hooked(patches, remaining, values, counter)
        self.stats.method = "hooked"
        return values

    def _run_driven(
        self,
        patches: Sequence[Patch],
        active: list[int],
        values: torch.Tensor,
        counter: ProgressCounter,
        finished: set[int],
    ) -> None:
        groups = self._position_groups(patches, active)
        for offset in sorted(groups):
            members = sorted(groups[offset], key=lambda i: patches[i].layer)
            plan = self._driven_plan(offset, len(members), patches[members[0]].layer)
            control = self._has_control(plan)
            rows: int | BatchPlan = 1
            if control:  # one row of each batch is the control: the patches get the rest, here and when it grows
                ceiling = None if plan.ceiling is None else plan.ceiling - 1
                rows = dataclasses.replace(plan, rows=max(1, plan.rows - 1), ceiling=ceiling)
            if not control:
                self.kv.prefix = offset
                self.validate(offset)  # one whole driven pass instead of the control rows
            self.stats.batch_rows = max(self.stats.batch_rows, plan.rows)
            self.stats.batch_bound = plan.reason

            def run_batch(batch: Sequence[int], offset: int = offset, control: bool = control) -> torch.Tensor:
                try:
                    started = time.perf_counter()
                    values = self._driven_batch([patches[i] for i in batch], offset, control)
                    depth = self.n_layers - patches[batch[0]].layer
                    rows = sum(self.n_layers - patches[i].layer for i in batch) + int(control) * depth
                    per_row = self.n_tokens - offset + self._prefix_tokens(offset)
                    observe(self.tc, rows * per_row, depth, time.perf_counter() - started)
                    return values
                except EngineMismatch:
                    raise
                except Exception as exc:
                    if is_out_of_memory(exc):
                        raise  # iter_batched halves the batch
                    log.warning("a driven batch failed; falling back to hooked passes", exc_info=True)
                    raise EngineMismatch(f"a driven batch failed: {type(exc).__name__}: {exc}") from exc

            for batch, result in iter_batched(members, run_batch, rows, device=self.tokens.device, counter=counter):
                values[list(batch)] = result
                finished.update(batch)

    def _position_groups(self, patches: Sequence[Patch], active: list[int]) -> dict[int, list[int]]:
        """The active patches by the position their rows start from (merged where that is cheaper)."""
        groups: dict[int, list[int]] = defaultdict(list)
        for i in active:
            groups[int(patches[i].first_diff or 0) if self.suffix_ok else 0].append(i)
        return self._merge_groups(groups, patches)

    def _driven_plan(self, offset: int, n_members: int, first_layer: int) -> BatchPlan:
        """Rows per driven batch of a position group whose rows start at `offset`, the first at `first_layer`."""
        length = self.n_tokens - offset
        return plan_rows(
            self.tc.limits,
            self.tokens.device,
            length,
            sequence_bytes(self.tc.view, length, self.n_tokens),
            wanted=n_members + 1,
            seconds_per_row=seconds_per_row(self.tc, length, self.n_layers - first_layer),
        )

    @staticmethod
    def _has_control(plan: BatchPlan) -> bool:
        """A control row needs room for one more sequence in the batch."""
        return (plan.ceiling if plan.ceiling is not None else plan.rows) >= 2

    def _hooked_plan(self, n_active: int) -> BatchPlan:
        """Rows per full hooked forward pass (logits kept for every position)."""
        n = self.n_tokens
        return plan_rows(
            self.tc.limits,
            self.tokens.device,
            n,
            sequence_bytes(self.tc.view, n, n, logits_tokens=n),
            wanted=n_active,
            seconds_per_row=seconds_per_row(self.tc, n),
        )

    def planned_work(self, patches: Sequence[Patch]) -> PlannedWork:
        """The work `run(patches)` will do, batch by batch as it will batch them (call after prepare())."""
        active = [i for i, patch in enumerate(patches) if patch.first_diff is not None]
        if not active:
            return PlannedWork(0, 0.0, 0, 0, 0)
        token_layers = block_calls = batches = 0
        prefix = 0.0
        if self.driven_ok:
            for offset, members in self._position_groups(patches, active).items():
                layers = sorted(patches[i].layer for i in members)
                length = self.n_tokens - offset
                plan = self._driven_plan(offset, len(members), layers[0])
                control = int(self._has_control(plan))
                per_batch = max(1, plan.rows - control)
                for start in range(0, len(layers), per_batch):
                    batch = layers[start : start + per_batch]
                    depth = self.n_layers - batch[0]
                    row_layers = sum(self.n_layers - layer for layer in batch) + control * depth
                    token_layers += length * row_layers
                    prefix += self._prefix_tokens(offset) * row_layers
                    block_calls += depth
                    batches += 1
                if not control:  # validated by one whole driven pass instead
                    token_layers += length * self.n_layers
                    block_calls += self.n_layers
        else:
            plan = self._hooked_plan(len(active))
            batches = -(-len(active) // plan.rows)
            token_layers = len(active) * self.n_tokens * self.n_layers
            block_calls = batches * self.n_layers
        return PlannedWork(token_layers, prefix, block_calls, len(active), batches)

    def _flops_per_token_block(self) -> float:
        """The arithmetic of one token through one block (projections and MLP, attention scores left out)."""
        d_model = self.view.d_model
        d_mlp = self.view.d_mlp or 4 * d_model
        return 2 * (4 * d_model * d_model + 3 * d_model * d_mlp)

    def _prefix_tokens(self, offset: int) -> float:
        """What one suffix row starting at `offset` spends per block attending over the `offset` recorded prefix
        positions, in token-blocks (see _PREFIX_ELEMENT_FLOPS)."""
        kv_elements = 2 * self.view.n_heads * self.view.d_head
        return offset * _PREFIX_ELEMENT_FLOPS * kv_elements / self._flops_per_token_block()

    def _call_token_layers(self) -> float:
        """What one block call costs beyond its arithmetic, in token-blocks (see _CALL_COST_FLOPS)."""
        device = "cpu" if self.tokens.device.type == "cpu" else "other"
        return _CALL_COST_FLOPS[device] / self._flops_per_token_block()

    def _merge_groups(self, groups: dict[int, list[int]], patches: Sequence[Patch]) -> dict[int, list[int]]:
        """Merge each position group into the one before it when the arithmetic that adds (its rows computing
        the positions in between) costs less than the block calls it saves (see MERGE_OFFSETS)."""
        if MERGE_OFFSETS is False or len(groups) < 2:
            return groups
        threshold = self._call_token_layers()  # token-blocks one block call is worth
        merged: dict[int, list[int]] = {}
        current: int | None = None
        for offset in sorted(groups):
            members = groups[offset]
            if current is not None:
                extra = sum((offset - current) * (self.n_layers - patches[i].layer) for i in members)
                saved = self.n_layers - min(patches[i].layer for i in members)
                if MERGE_OFFSETS or extra <= threshold * saved:
                    merged[current].extend(members)
                    continue
            current = offset
            merged[current] = list(members)
        return merged

    def _driven_batch(self, batch: Sequence[Patch], offset: int, control: bool) -> torch.Tensor:
        """One batch of patches sharing a suffix start (sorted by layer), rows joining the batch at their layer;
        with `control`, row 0 is an unpatched copy that must reproduce the corrupted run."""
        start = batch[0].layer
        first = 1 if control else 0
        starts = [start] * first + [patch.layer for patch in batch]
        row_pairs = [batch[0].pair] * first + [patch.pair for patch in batch]
        pair_index = torch.tensor(row_pairs, device=self.tokens.device)
        by_hook: dict[str, list[tuple[int, Edit]]] = defaultdict(list)
        for row, patch in enumerate(batch, start=first):
            for edit in patch.edits():
                by_hook[edit.hook].append((row, edit))

        def make_hook(entries: list[tuple[int, Edit]]) -> Callable[..., torch.Tensor]:
            def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
                for row, patch in entries:
                    patch.apply(act, row, offset)
                return act

            return hook

        fwd_hooks = [(name, make_hook(entries)) for name, entries in by_hook.items()]
        with_kv = self.suffix_ok and offset > 0
        self.kv.prefix = offset if with_kv else 0
        x: torch.Tensor | None = None
        joined = 0
        with self.view.hooks(fwd_hooks=fwd_hooks):
            for layer in range(start, self.n_layers):
                count = sum(1 for s in starts if s <= layer)
                if count > joined:
                    resid = self.cache[f"blocks.{layer}.hook_resid_pre"]
                    if resid.shape[0] == 1:
                        fresh = resid[:, offset:].expand(count - joined, -1, *resid.shape[2:]).clone()
                    else:
                        fresh = resid[pair_index[joined:count], offset:]
                    x = fresh if x is None else torch.cat([x, fresh], dim=0)
                    joined = count
                    self.kv.rows = pair_index[:joined]
                assert x is not None
                x = self._call_block(layer, x, offset, with_kv=with_kv)
        assert x is not None
        self.stats.forward_passes += 1
        self.stats.sequences += len(batch)
        result = self._read(x[:, -1], row_pairs)
        expected = self.metric_values[row_pairs[0]] if self.metric_values else self.metric_value
        if control and not _close(result[:1], expected, abs(expected)):
            raise EngineMismatch(f"control row gave {float(result[0])}, corrupted run {expected}")
        return result[first:].float().cpu()

    def _run_hooked(
        self, patches: Sequence[Patch], active: list[int], values: torch.Tensor, counter: ProgressCounter
    ) -> None:
        """Fallback: full forward passes of the corrupted prompt, one row per cell, patched by hooks."""
        plan = self._hooked_plan(len(active))
        self.stats.batch_rows = plan.rows
        self.stats.batch_bound = plan.reason

        def run_batch(batch: Sequence[int]) -> torch.Tensor:
            by_hook: dict[str, list[tuple[int, Edit]]] = defaultdict(list)
            for row, i in enumerate(batch):
                for edit in patches[i].edits():
                    by_hook[edit.hook].append((row, edit))

            def make_hook(entries: list[tuple[int, Edit]]) -> Callable[..., torch.Tensor]:
                def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
                    for row, patch in entries:
                        patch.apply(act, row, 0)
                    return act

                return hook

            row_pairs = [patches[i].pair for i in batch]
            tokens = self.bases[row_pairs] if self.n_pairs > 1 else self.tokens.expand(len(batch), -1)
            logits = self.view.run_with_hooks(
                tokens, fwd_hooks=[(name, make_hook(entries)) for name, entries in by_hook.items()]
            )
            self.stats.forward_passes += 1
            self.stats.sequences += len(batch)
            return self._read(logits[:, -1], row_pairs, from_logits=True).float().cpu()

        for batch, result in iter_batched(active, run_batch, plan, device=self.tokens.device, counter=counter):
            values[list(batch)] = result
