"""path_patch: path patching (Wang et al., 2022) with TransformerLens 4.3's direct-path definition, batched.

A path is sender head -> receiver. On the corrupted prompt, the sender's clean-minus-corrupted write
(`(z_clean - z_corrupted) @ W_O` of that head, at the chosen positions) is added to the receiver's own copy of
its input, and nowhere else: every other reader (other heads, MLPs, the unembedding) sees the sender's corrupted
output. The receiver's changed output then flows on through the rest of the model as usual.

- Head receivers (`[[layer, head], ...]`, `"all_heads"`): added to the receiver's own pre-norm copy of the
  residual stream, the norm recomputed on that copy, before its query/key/value projection: what
  `transformer_lens.patching.get_act_patch_direct_path` computes through `hook_{q,k,v}_input` with
  `use_split_qkv_input`. Here the receiver's q/k/v (`hook_q`/`hook_k`/`hook_v`, before rotary embeddings) is
  replaced by the block's own norm and projection applied to (residual + write), so no per-head copy of every
  head's input is made in every block. Under grouped-query attention a key/value receiver is a key/value head:
  the model computes one key and one value per KV head, shared by its group of query heads.
- `"logits"`: added to the final residual stream only (what the final norm and the unembedding read).
- `{"resid": L}`: added to the residual stream entering block L, which every reader from block L on sees.

Rows are computed by the patching engine: a row starts at its first receiver's layer from the corrupted run's
cached residual stream, only from the first position the sender's write changes, many rows per batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.common import Cost, PairMetrics
from lens_mcp.schemas.paths import PathEdge, PathPatchResult, PathSpread
from lens_mcp.tools.causal._engine import EngineStats, Patch, PatchEngine, Readout
from lens_mcp.tools.core.arguments import (
    Answer,
    CleanPrompt,
    CorruptedPrompt,
    DryRun,
    Normalize,
    PatchMetric,
    WrongAnswer,
)
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import enforce, grid_chars, planned_cost, row_memory
from lens_mcp.tools.core.forward import final_norm, unembed
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.metrics import AnswerMetric, MetricName, resolve_metric
from lens_mcp.tools.core.pairs import PairsArgument, encode_pairs, pair_label, positions_from_end, resolve_pairs, spread
from lens_mcp.tools.core.patching import normalize_pooled, pooled_note
from lens_mcp.tools.core.tokens import encode_pair, token_strings
from lens_mcp.tools.core.validation import resolve_head_pairs, resolve_layer, resolve_positions

ReceiverInput = Literal["q", "k", "v"]
RECEIVER_INPUTS = ("q", "k", "v")
TOP_EDGES = 10
_READOUT_TOLERANCE = 1e-3

Head = tuple[int, int]


@dataclass(frozen=True)
class Receiver:
    """One receiver: a head's q/k/v input, the final residual stream, or the residual stream entering a block."""

    kind: Literal["head", "logits", "resid"]
    layer: int
    head: int | None = None

    def label(self, receiver_input: str | None) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.head}.{receiver_input}"
        return "logits" if self.kind == "logits" else f"resid_pre[{self.layer}]"


@dataclass
class PathRun:
    """The raw outcome (unrounded), for path_patch and for tests against TransformerLens."""

    values: torch.Tensor
    """Patched metric per path (not normalized), NaN where the receiver does not come after the sender."""
    paths: list[tuple[Head, tuple[Receiver, ...]]]
    """(sender, receivers patched together) of each value."""
    form: Literal["senders", "receivers"]
    """senders: one fixed receiver set, a value per sender; receivers: a value per (sender, receiver head)."""
    senders: list[Head]
    receivers: tuple[Receiver, ...]
    """The fixed receiver set (form 'senders'), or every receiver head (form 'receivers')."""
    receiver_input: ReceiverInput | None
    clean_metric: float
    corrupted_metric: float
    tokens: torch.Tensor
    metric: AnswerMetric
    positions: list[int] | None
    stats: EngineStats = field(default_factory=EngineStats)
    notes: list[str] = field(default_factory=list)


def receiver_heads_per_layer(tc: ToolContext, receiver_input: str) -> int:
    """Heads a receiver's q/k/v input is split into: query heads for q, key/value heads for k and v."""
    return tc.view.n_heads if receiver_input == "q" else tc.view.n_kv_heads


def _resolve_receivers(
    tc: ToolContext, receivers: object, receiver_input: str
) -> tuple[Literal["logits", "all_heads", "set", "resid"], tuple[Receiver, ...]]:
    n_layers = tc.view.n_layers
    forms = "'logits', 'all_heads', [[layer, head], ...] or {'resid': layer}"
    if isinstance(receivers, str):
        if receivers == "logits":
            return "logits", (Receiver("logits", n_layers),)
        if receivers == "all_heads":
            n = receiver_heads_per_layer(tc, receiver_input)
            return "all_heads", tuple(Receiver("head", layer, head) for layer in range(n_layers) for head in range(n))
        raise LensError(f"receivers={receivers!r} is not one of {forms}.")
    if isinstance(receivers, dict):
        if set(receivers) != {"resid"}:
            raise LensError(f"receivers={receivers!r:.80}: a dict receiver must be {{'resid': layer}}; or use {forms}.")
        layer = resolve_layer(receivers["resid"], n_layers, "receivers['resid']")
        return "resid", (Receiver("resid", layer),)
    if isinstance(receivers, (list, tuple)):
        n = receiver_heads_per_layer(tc, receiver_input)
        kind = "query" if receiver_input == "q" else "key/value"
        hint = (
            f" Receivers of receiver_input={receiver_input!r} are {kind} heads 0..{n - 1} (query head h reads "
            f"key/value head h // {tc.view.n_heads // n})."
            if n != tc.view.n_heads
            else ""
        )
        try:
            pairs = resolve_head_pairs(receivers, n_layers, n, "receivers")
        except LensError as exc:
            raise LensError(f"{exc}{hint}") from None
        return "set", tuple(Receiver("head", layer, head) for layer, head in pairs)
    raise LensError(f"receivers={receivers!r:.80} is not one of {forms}.")


def _check_architecture(tc: ToolContext, sender_layers: Sequence[int]) -> None:
    """TransformerLens's own refusals for direct path patching (no attention in a block, a sender whose
    residual write is not z @ W_O: post-norm, scaled-residual or parallel blocks)."""
    if hook_name("z", 0) not in tc.view.hook_dict:
        raise LensError("path_patch needs per-head attention outputs (hook_z), which this model does not have.")
    obstruction = tc.view.direct_path_obstruction(sender_layers)
    if obstruction is not None:
        raise LensError(f"path_patch is not supported on this model: {obstruction}")


class _InputCapture:
    """Keeps each row's residual stream entering block `layer` (what the receivers' norm reads there)."""

    def __init__(self, layer: int, store: dict[tuple[int, int], torch.Tensor]):
        self.layer = layer
        self.hook = hook_name("resid_pre", layer)
        self.store = store

    def apply(self, act: torch.Tensor, row: int, offset: int) -> None:
        self.store[(self.layer, row)] = act[row].clone()


class _HeadInputEdit:
    """Replaces one receiver head's q, k or v (projection output, before rotary embeddings) in one row by the
    projection of norm(x + delta): x the row's residual stream entering the block (kept by _InputCapture), delta
    the sender's write. Exactly what the model computes from a per-head copy of its input with delta added,
    using the block's own norm and projection modules."""

    def __init__(
        self,
        tc: ToolContext,
        receiver: Receiver,
        receiver_input: str,
        delta: torch.Tensor,
        store: dict[tuple[int, int], torch.Tensor],
        fired: set[str],
    ):
        block = tc.view.blocks[receiver.layer]
        self.layer, self.head = receiver.layer, int(receiver.head or 0)
        self.hook = f"blocks.{receiver.layer}.attn.hook_{receiver_input}"
        self.norm = getattr(block, "ln1", None)
        self.projection = getattr(block.attn, receiver_input).original_component
        self.delta = delta
        self.store = store
        self.fired = fired

    def apply(self, act: torch.Tensor, row: int, offset: int) -> None:
        x = self.store[(self.layer, row)]
        x = x + self.delta[offset : offset + x.shape[0]].to(x.dtype)
        normed = self.norm(x[None]) if self.norm is not None else x[None]
        out = self.projection(normed)[0]
        d_head = act.shape[-1]
        act[row, :, self.head] = out.reshape(out.shape[0], -1, d_head)[:, self.head]
        self.fired.add(self.hook)


def _sender_writes(
    tc: ToolContext, engine: PatchEngine, senders: Sequence[Head], positions: list[int] | None
) -> tuple[dict[Head, torch.Tensor], dict[Head, int | None]]:
    """Each sender's clean-minus-corrupted residual write [pos, d_model] (zero outside `positions`) and the first
    position where it is not zero (None: the head writes the same thing on both prompts)."""
    deltas: dict[Head, torch.Tensor] = {}
    first: dict[Head, int | None] = {}
    keep = None
    if positions is not None:
        keep = torch.zeros(engine.n_tokens, dtype=torch.bool, device=engine.tokens.device)
        keep[positions] = True
    for layer, head in senders:
        name = hook_name("z", layer)
        w_o = tc.view.blocks[layer].attn.W_O[head]
        z_clean = engine.clean_cache[name][0, :, head]
        z_corrupted = engine.cache[name][0, :, head]
        delta = z_clean @ w_o - z_corrupted @ w_o
        if keep is not None:
            delta = delta * keep[:, None].to(delta.dtype)
        nonzero = torch.nonzero((delta != 0).any(dim=-1))
        deltas[(layer, head)] = delta
        first[(layer, head)] = int(nonzero[0, 0]) if len(nonzero) else None
    return deltas, first


class _RowBuilder:
    """Engine rows that add a sender's write to each receiver's own input."""

    def __init__(self, tc: ToolContext, receiver_input: str):
        self.tc = tc
        self.receiver_input = receiver_input
        self.store: dict[tuple[int, int], torch.Tensor] = {}
        self.fired: set[str] = set()
        self.edited: set[str] = set()

    def row(self, delta: torch.Tensor, first_diff: int | None, receivers: Sequence[Receiver]) -> Patch | None:
        """One row (receivers already restricted to those after the sender); None if there are none."""
        edits: list[Any] = []
        for layer in sorted({r.layer for r in receivers}):
            at_layer = [r for r in receivers if r.layer == layer]
            if at_layer[0].kind == "resid":
                edits.append(Patch(layer, hook_name("resid_pre", layer), None, None, delta, first_diff, add=True))
                continue
            edits.append(_InputCapture(layer, self.store))
            for receiver in at_layer:
                edit = _HeadInputEdit(self.tc, receiver, self.receiver_input, delta, self.store, self.fired)
                edits.append(edit)
                if first_diff is not None:
                    self.edited.add(edit.hook)
        if not edits:
            return None
        return Patch(min(r.layer for r in receivers), "", None, None, delta, first_diff, also=tuple(edits))


def _logit_rows(
    tc: ToolContext, engine: PatchEngine, metric: AnswerMetric, deltas: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The metric with each delta (at the last position) added to the final residual stream only, through the
    final norm and the unembedding. Row 0 of the computation is an unchanged control that must reproduce the
    corrupted run."""
    final = engine.cache[hook_name("resid_post", engine.n_layers - 1)][0, -1]
    rows = torch.stack([final, *[final + delta[-1] for delta in deltas]])
    values = metric(unembed(tc, final_norm(tc, rows))).float().cpu()
    if abs(float(values[0]) - engine.metric_value) > _READOUT_TOLERANCE * max(1.0, abs(engine.metric_value)):
        raise LensError(
            "path_patch into 'logits' could not reproduce this model's own readout from its final residual "
            f"stream ({float(values[0]):.6g} vs {engine.metric_value:.6g}), so it refuses rather than report wrong "
            "numbers; use receivers={'resid': layer} or head receivers."
        )
    unchanged = torch.tensor([not bool(delta[-1].any()) for delta in deltas], dtype=torch.bool)
    return torch.where(unchanged, torch.tensor(engine.metric_value, dtype=values.dtype), values[1:])


@dataclass
class PathPlan:
    """What a call patches, independent of the prompts: the senders, the receivers and every path."""

    form_name: Literal["logits", "all_heads", "set", "resid"]
    receivers: tuple[Receiver, ...]
    senders: list[Head]
    paths: list[tuple[Head, tuple[Receiver, ...]]]
    receiver_input: str

    @property
    def heads_in(self) -> bool:
        return self.form_name in ("all_heads", "set")

    def start_layers(self) -> list[int | None]:
        """The layer each path's row starts at (None: no path; the readout for 'logits')."""
        if self.form_name == "logits":
            return [int(r[0].layer) for _, r in self.paths]
        starts: list[int | None] = []
        for sender, receivers_of_row in self.paths:
            reachable = [r.layer for r in receivers_of_row if r.layer > sender[0]]
            starts.append(min(reachable) if reachable else None)
        return starts


def plan_paths(tc: ToolContext, senders: object, receivers: object, receiver_input: str) -> PathPlan:
    """Check senders, receivers and receiver_input against the model and list every path (no forward pass)."""
    if receiver_input not in RECEIVER_INPUTS:
        raise LensError(f"receiver_input={receiver_input!r} is not one of 'q', 'k', 'v'.")
    n_layers, n_heads = tc.view.n_layers, tc.view.n_heads
    form_name, receiver_list = _resolve_receivers(tc, receivers, receiver_input)
    last_receiver_layer = max(r.layer for r in receiver_list)
    if senders is None:
        if form_name == "all_heads":
            raise LensError(
                "receivers='all_heads' with senders=null (every head) would patch every pair of heads; pass "
                "senders=[[layer, head], ...] (one sender gives a receiver grid), or a fixed receiver set."
            )
        sender_list = [(layer, head) for layer in range(min(last_receiver_layer, n_layers)) for head in range(n_heads)]
        if not sender_list:
            raise LensError(
                f"receivers={receivers!r:.80}: no head comes before it, so there is no path to patch; "
                "use a later receiver."
            )
    else:
        sender_list = resolve_head_pairs(senders, n_layers, n_heads, "senders")
    paths: list[tuple[Head, tuple[Receiver, ...]]] = []
    if form_name == "all_heads":
        for sender in sender_list:
            paths += [(sender, (r,)) for r in receiver_list if r.layer > sender[0]]
        if not paths:
            raise LensError(
                f"senders={[list(s) for s in sender_list]}: no head comes after "
                f"{'this sender' if len(sender_list) == 1 else 'these senders'}; use an earlier sender."
            )
    else:
        paths = [(sender, receiver_list) for sender in sender_list]
    if form_name != "logits" and not any(r.layer > s[0] for s, receivers_of_row in paths for r in receivers_of_row):
        raise LensError(
            "no path: every receiver is in the same layer as the senders or before them (a head reads the "
            "residual stream before its own layer's heads write to it). Use senders before layer "
            f"{last_receiver_layer}, or later receivers."
        )
    if len(paths) > tc.limits.max_sweep_cells:
        raise LensError(
            f"path_patch would compute {len(paths)} paths, over the cap max_sweep_cells="
            f"{tc.limits.max_sweep_cells} (LENS_MCP_MAX_SWEEP_CELLS); pass fewer senders=[[layer, head], ...]."
        )
    _check_architecture(tc, sorted({layer for layer, _ in sender_list}))
    return PathPlan(form_name, receiver_list, sender_list, paths, receiver_input)


def _first_changed(tokens: torch.Tensor, positions: list[int] | None) -> int:
    """The earliest position a sender's write can differ at: the first token the prompts differ in (causal
    attention), or the first patched position if later."""
    differs = torch.nonzero(tokens[0] != tokens[1])
    first = int(differs[0, 0]) if len(differs) else int(tokens.shape[-1])
    return max(first, min(positions)) if positions else first


def estimate_cost(
    tc: ToolContext, plan: PathPlan, encoded: Sequence[torch.Tensor], positions: Sequence[list[int] | None]
) -> Cost:
    """Work, passes, block calls, seconds and result size of the call, from the plan and the token ids alone. Per
    pair: the clean and corrupted runs (one batch of two through every block), then the patched rows from the
    earliest sender's layer on, over the positions from the first difference, with one control row (or a
    validation pass) of the same depth."""
    n_layers = tc.view.n_layers
    starts = plan.start_layers()
    units = 0.0
    block_calls = passes = 0
    longest = max(int(tokens.shape[-1]) for tokens in encoded)
    for tokens, position_list in zip(encoded, positions, strict=True):
        n_tokens = int(tokens.shape[-1])
        units += 2 * n_tokens * n_layers  # the clean and corrupted runs
        block_calls += n_layers
        passes += 1
        suffix = max(0, n_tokens - _first_changed(tokens, position_list))
        active = [start for start in starts if start is not None]
        if plan.form_name != "logits" and suffix and active:
            depth = n_layers - min(active)
            units += sum((n_layers - start) * suffix for start in active) + depth * suffix
            block_calls += 2 * depth
            passes += 1
    n_cells = len(plan.paths)
    grid_cells = n_cells if plan.form_name == "all_heads" else len({s[0] for s in plan.senders}) * tc.view.n_heads
    statistics = 4 if len(encoded) > 1 else 1  # the mean grid, plus std / min / max over pairs
    chars = grid_chars(grid_cells * statistics, 1500 + 24 * longest + 90 * TOP_EDGES + 80 * len(encoded))
    return planned_cost(
        tc,
        cells=n_cells,
        passes=passes,
        token_layers=units,
        block_calls=block_calls,
        result_chars=chars,
        memory_bytes=row_memory(tc, longest),
    )


def _run_pair(
    tc: ToolContext,
    plan: PathPlan,
    tokens: torch.Tensor,
    answer_metric: AnswerMetric,
    position_list: list[int] | None,
    counter: ProgressCounter,
) -> PathRun:
    """Every path of `plan` on one clean/corrupted pair."""
    n_tokens, n_paths = int(tokens.shape[-1]), len(plan.paths)
    readout = Readout(tc, answer_metric)
    z_hooks = [hook_name("z", layer) for layer in sorted({layer for layer, _ in plan.senders})]
    notes: list[str] = []
    values = torch.full((n_paths,), math.nan, dtype=torch.float32)
    with torch.no_grad():
        engine = PatchEngine(tc, tokens, readout, z_hooks)
        engine.prepare()
        deltas, first = _sender_writes(tc, engine, plan.senders, position_list)
        if plan.form_name == "logits":
            if position_list is not None and n_tokens - 1 not in position_list:
                notes.append("positions leaves out the last position, the only one the logits read: no effect")
            values = _logit_rows(tc, engine, answer_metric, [deltas[sender] for sender, _ in plan.paths])
            counter.advance(n_paths, f"{n_paths} paths into the logits")
        else:
            builder = _RowBuilder(tc, plan.receiver_input)
            rows: list[Patch] = []
            index: list[int] = []
            for i, (sender, receivers_of_row) in enumerate(plan.paths):
                reachable = [r for r in receivers_of_row if r.layer > sender[0]]
                row = builder.row(deltas[sender], first[sender], reachable)
                if row is not None:
                    rows.append(row)
                    index.append(i)
            if rows:
                values[index] = engine.run(rows, counter)
            missing = sorted(builder.edited - builder.fired)
            if missing:
                raise LensError(
                    f"path_patch: the hook point {missing[0]} never fired on this model, so a head's own input "
                    "cannot be patched here; use receivers='logits' or {'resid': layer}."
                )
            if len(rows) < n_paths:
                notes.append("null cells: the receiver does not come after the sender, so there is no path")
    notes += engine.stats.notes
    return PathRun(
        values=values,
        paths=plan.paths,
        form="receivers" if plan.form_name == "all_heads" else "senders",
        senders=plan.senders,
        receivers=plan.receivers,
        receiver_input=plan.receiver_input if plan.heads_in else None,  # type: ignore[arg-type]
        clean_metric=engine.clean_value,
        corrupted_metric=engine.metric_value,
        tokens=tokens,
        metric=answer_metric,
        positions=position_list,
        stats=engine.stats,
        notes=notes,
    )


def _counter(tc: ToolContext, plan: PathPlan, n_pairs: int) -> ProgressCounter:
    per_pair = len(plan.paths) if plan.form_name == "logits" else sum(s is not None for s in plan.start_layers())
    return ProgressCounter(tc.progress, total=per_pair * n_pairs, unit="paths patched")


def run_path_patch(
    tc: ToolContext,
    clean_prompt: str,
    corrupted_prompt: str,
    answer: str,
    wrong_answer: str | None,
    senders: list[list[int]] | None = None,
    receivers: object = "logits",
    receiver_input: str = "q",
    positions: list[int] | None = None,
    metric: str = "logit_diff",
) -> PathRun:
    """Validate the arguments and compute every path on one pair (unrounded); see path_patch."""
    plan = plan_paths(tc, senders, receivers, receiver_input)
    tokens = encode_pair(tc, clean_prompt, corrupted_prompt, "clean_prompt", "corrupted_prompt")
    answer_metric = resolve_metric(tc, answer, wrong_answer, metric, require_wrong=True)
    position_list = None if positions is None else resolve_positions(positions, int(tokens.shape[-1]))
    return _run_pair(tc, plan, tokens, answer_metric, position_list, _counter(tc, plan, 1))


def _grid_axes(tc: ToolContext, run: PathRun, shown: list[float]) -> tuple[list[str], list[int], list[int], list[Any]]:
    """(axes, layers, heads, grid): senders' layer x head for a fixed receiver set; for 'all_heads', receiver
    layer x head (one sender) or sender x receiver layer x receiver head (several). Null where nothing was
    asked or there is no path."""
    nan = math.nan
    if run.form == "senders":
        heads = list(range(tc.view.n_heads))
        layers = sorted({layer for layer, _ in run.senders})
        grid = [[nan] * len(heads) for _ in layers]
        for (sender, _), value in zip(run.paths, shown, strict=True):
            grid[layers.index(sender[0])][sender[1]] = value
        return ["sender_layer", "sender_head"], layers, heads, grid
    n = receiver_heads_per_layer(tc, run.receiver_input or "q")
    heads = list(range(n))
    layers = list(range(min(layer for layer, _ in run.senders) + 1, tc.view.n_layers))
    by_sender = {s: [[nan] * n for _ in layers] for s in run.senders}
    for (sender, (receiver,)), value in zip(run.paths, shown, strict=True):
        by_sender[sender][layers.index(receiver.layer)][receiver.head or 0] = value
    if len(run.senders) == 1:
        return ["receiver_layer", "receiver_head"], layers, heads, by_sender[run.senders[0]]
    return ["sender", "receiver_layer", "receiver_head"], layers, heads, [by_sender[s] for s in run.senders]


def path_patch(
    tc: ToolContext,
    clean_prompt: CleanPrompt = None,
    corrupted_prompt: CorruptedPrompt = None,
    answer: Answer = None,
    wrong_answer: WrongAnswer = None,
    senders: Annotated[
        list[list[int]] | None,
        Field(description="Sender heads [[layer, head], ...]; null: every head before the receivers"),
    ] = None,
    receivers: Annotated[
        Literal["logits", "all_heads"] | list[list[int]] | dict[Literal["resid"], int],
        Field(
            description="'logits' (direct paths to the output), [[layer, head], ...] (a receiver set, patched "
            "together, through receiver_input), 'all_heads' (every later head on its own) or {'resid': layer} "
            "(the residual stream entering that block)"
        ),
    ] = "logits",
    receiver_input: Annotated[
        ReceiverInput,
        Field(
            description="Which input of head receivers the path enters: q, k or v. Under grouped-query "
            "attention k/v receivers are key/value heads (query head h reads KV head h // group)"
        ),
    ] = "q",
    positions: Annotated[
        list[int] | None,
        Field(description="Positions whose sender write is patched (null: all; -1 the last, BOS is 0)"),
    ] = None,
    metric: PatchMetric = "logit_diff",
    normalize: Normalize = True,
    pairs: PairsArgument = None,
    dry_run: DryRun = False,
) -> PathPatchResult:
    """Path patching (Wang et al. 2022), TransformerLens's direct-path definition: run the corrupted prompt and
    add a sender head's clean-minus-corrupted write ((z_clean - z_corr) @ W_O, at `positions`) to the
    receiver's OWN copy of its input only; every other reader, MLPs included, sees the sender's corrupted output;
    the receiver's changed output then flows on normally. Head receivers: added to the receiver's pre-norm
    q/k/v input (norm recomputed), exactly get_act_patch_direct_path; 'logits': to the final residual stream
    only (through the final norm and unembedding); {'resid': L}: to the residual stream entering block L.
    Grid over whichever side varies: a fixed receiver set gives sender layer x head ('which heads feed the name
    movers' queries'); one sender into 'all_heads' gives receiver layer x head ('who reads this head, through
    which input'). Normalized: 1 = the path alone restores the clean metric, 0 = no effect, null = no path
    (receiver not after sender). Grouped-query attention: k/v receivers are key/value heads (query head h reads
    KV head h // group). pairs=[...]: mean and spread over a prompt dataset. The cost is estimated first (over a
    cap: refused at once; dry_run=true returns only the estimate). Batched rows that start at the receiver's
    layer; far faster than one pass per path. Find senders with patch_sweep(component='heads') or
    head_attribution first."""
    started = time.perf_counter()
    call = plan_path_call(
        tc,
        clean_prompt,
        corrupted_prompt,
        answer,
        wrong_answer,
        senders,
        receivers,
        receiver_input,
        positions,
        metric,
        pairs,
    )
    cost = estimate_cost(tc, call.plan, call.encoded, call.positions)
    enforce(tc, cost, "fewer senders=[[layer, head], ...], later receivers, or fewer pairs")
    if dry_run:
        return PathPatchResult(
            **_labels(call),
            normalized=normalize,
            meaning="dry run: nothing computed; `cost` is the estimate",
            clean_tokens=token_strings(tc, call.encoded[0][0]),
            corrupted_tokens=token_strings(tc, call.encoded[0][1]),
            positions=call.positions[0],
            n_paths=len(call.plan.paths),
            method="dry_run",
            seconds=time.perf_counter() - started,
            cost=cost,
            dry_run=True,
        )
    return summarize_paths(tc, call, run_paths(tc, call), normalize, cost, started)


@dataclass
class PathCall:
    """A path_patch call checked and encoded, before any forward pass."""

    plan: PathPlan
    encoded: list[torch.Tensor]
    """Token ids per pair, [2, n] (clean, corrupted)."""
    metrics: list[AnswerMetric]
    positions: list[list[int] | None]
    """Absolute positions whose sender write is patched, per pair (None: all)."""

    @property
    def n_pairs(self) -> int:
        return len(self.encoded)


def plan_path_call(
    tc: ToolContext,
    clean_prompt: str | None,
    corrupted_prompt: str | None,
    answer: str | None,
    wrong_answer: str | None,
    senders: object,
    receivers: object,
    receiver_input: str,
    positions: list[int] | None,
    metric: MetricName,
    pairs: object,
) -> PathCall:
    plan = plan_paths(tc, senders, receivers, receiver_input)
    items = resolve_pairs(
        tc,
        pairs,
        clean_prompt=clean_prompt,
        corrupted_prompt=corrupted_prompt,
        answer=answer,
        wrong_answer=wrong_answer,
    )
    n_pairs = len(items)
    encoded = encode_pairs(tc, items, fixed_positions=positions is not None and not positions_from_end(positions))
    answer_metrics: list[AnswerMetric] = []
    position_lists: list[list[int] | None] = []
    for index, (item, tokens) in enumerate(zip(items, encoded, strict=True)):
        where = pair_label(index, n_pairs)
        try:
            answer_metrics.append(resolve_metric(tc, item.answer or "", item.wrong_answer, metric, require_wrong=True))
            position_lists.append(None if positions is None else resolve_positions(positions, int(tokens.shape[-1])))
        except LensError as exc:
            raise LensError(f"{where}{exc}" if where else str(exc)) from None
    return PathCall(plan, encoded, answer_metrics, position_lists)


def _labels(call: PathCall) -> dict[str, Any]:
    """The receivers, receiver input and metric as a result states them."""
    plan, answer_metrics, n_pairs = call.plan, call.metrics, call.n_pairs
    first_metric = answer_metrics[0]
    receiver_label = (
        "all_heads"
        if plan.form_name == "all_heads"
        else ", ".join(r.label(plan.receiver_input) for r in plan.receivers)
    )
    shown_input = plan.receiver_input if plan.heads_in else None
    metric_text = f"{first_metric.description} at the last position" + (
        " (pair 0's answers; each pair uses its own)" if n_pairs > 1 else ""
    )
    return {"receivers": receiver_label, "receiver_input": shown_input, "metric": metric_text}


def run_paths(tc: ToolContext, call: PathCall) -> list[PathRun]:
    """Every path of every pair, as rows of batched engine runs (one engine per pair)."""
    counter = _counter(tc, call.plan, call.n_pairs)
    return [
        _run_pair(tc, call.plan, tokens, answer_metric, position_list, counter)
        for tokens, answer_metric, position_list in zip(call.encoded, call.metrics, call.positions, strict=True)
    ]


def summarize_paths(
    tc: ToolContext, call: PathCall, runs: list[PathRun], normalize: bool, cost: Cost, started: float
) -> PathPatchResult:
    plan, n_pairs = call.plan, call.n_pairs
    run = runs[0]
    notes = list(dict.fromkeys(note for r in runs for note in r.notes))
    pooled = normalize_pooled(
        torch.stack([r.values for r in runs]),
        torch.tensor([r.clean_metric for r in runs]),
        torch.tensor([r.corrupted_metric for r in runs]),
        "denoise",
        normalize,
    )
    do_normalize = pooled.normalized
    if pooled.note:
        notes.append(pooled.note)
    statistics = spread(pooled.per_pair)
    shown = statistics.mean.tolist()
    axes, layers, heads, grid = _grid_axes(tc, run, shown)
    path_spread = None
    if n_pairs > 1:
        path_spread = PathSpread(
            n_pairs=n_pairs,
            std=_grid_axes(tc, run, statistics.std.tolist())[3],
            min=_grid_axes(tc, run, statistics.min.tolist())[3],
            max=_grid_axes(tc, run, statistics.max.tolist())[3],
        )

    edges = [
        PathEdge(
            sender=sender,
            receiver=", ".join(r.label(run.receiver_input) for r in receivers_of_row),
            value=value,
        )
        for (sender, receivers_of_row), value in zip(run.paths, shown, strict=True)
        if not math.isnan(value)
    ]
    edges.sort(key=lambda edge: abs(edge.value), reverse=True)
    n_kv = tc.view.n_kv_heads if run.receiver_input in ("k", "v") else tc.view.n_heads
    if n_kv != tc.view.n_heads:
        group = tc.view.n_heads // n_kv
        notes.append(
            f"grouped-query attention: receiver heads are key/value heads; KV head j is read by query heads "
            f"{group}j..{group}j+{group - 1}"
        )
    if do_normalize:
        unit = "fraction of the clean - corrupted difference restored"
        scale = "1 = the path alone restores the clean metric, 0 = no effect"
        unit += pooled_note(n_pairs)
    else:
        unit = f"the raw metric{f', mean over {n_pairs} pairs' if n_pairs > 1 else ''}"
        scale = f"compare with corrupted_metric {run.corrupted_metric:.4g}" if n_pairs == 1 else "raw metric"
    return PathPatchResult(
        **_labels(call),
        normalized=do_normalize,
        meaning=f"each cell: the metric with only that sender->receiver path patched, as {unit}; {scale}; "
        "null = no path",
        clean_tokens=token_strings(tc, run.tokens[0]),
        corrupted_tokens=token_strings(tc, run.tokens[1]),
        clean_metric=sum(r.clean_metric for r in runs) / n_pairs,
        corrupted_metric=sum(r.corrupted_metric for r in runs) / n_pairs,
        positions=run.positions,
        axes=axes,
        senders=[list(s) for s in run.senders] if len(axes) == 3 else None,
        layers=layers,
        heads=heads,
        grid=grid,
        spread=path_spread,
        pairs=(
            [
                PairMetrics(index=i, clean_metric=r.clean_metric, corrupted_metric=r.corrupted_metric)
                for i, r in enumerate(runs)
            ]
            if n_pairs > 1
            else None
        ),
        top_paths=edges[:TOP_EDGES],
        n_paths=len(run.paths),
        forward_passes=sum(r.stats.forward_passes for r in runs),
        method="readout" if plan.form_name == "logits" else run.stats.method,  # logits: no patched pass
        seconds=time.perf_counter() - started,
        cost=cost,
        notes=notes,
    )
