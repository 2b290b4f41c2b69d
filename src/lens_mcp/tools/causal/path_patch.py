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
from lens_mcp.schemas.paths import PathEdge, PathPatchResult
from lens_mcp.tools.causal.patching_engine import EngineStats, Patch, PatchEngine, Readout
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.forward import final_norm, unembed
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.metrics import AnswerMetric, MetricName, resolve_metric
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


def _n_kv_heads(tc: ToolContext) -> int:
    cfg = tc.cfg
    per_layer = getattr(cfg, "per_layer_num_key_value_heads", None)
    if per_layer and len(set(per_layer)) > 1:
        raise LensError(
            "receiver_input='k'/'v': this model has a different number of key/value heads per layer, which "
            "path_patch does not support; use receiver_input='q'."
        )
    return int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)


def receiver_heads_per_layer(tc: ToolContext, receiver_input: str) -> int:
    """Heads a receiver's q/k/v input is split into: query heads for q, key/value heads for k and v."""
    return int(tc.cfg.n_heads) if receiver_input == "q" else _n_kv_heads(tc)


def _resolve_receivers(
    tc: ToolContext, receivers: object, receiver_input: str
) -> tuple[Literal["logits", "all_heads", "set", "resid"], tuple[Receiver, ...]]:
    n_layers = int(tc.cfg.n_layers)
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
            f"key/value head h // {int(tc.cfg.n_heads) // n})."
            if n != int(tc.cfg.n_heads)
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
    from transformer_lens.patching import _check_direct_path_support  # noqa: PLC0415 - private, version-pinned

    if hook_name("z", 0) not in tc.bridge.hook_dict:
        raise LensError("path_patch needs per-head attention outputs (hook_z), which this model does not have.")
    try:
        _check_direct_path_support(tc.bridge, list(sender_layers), "q")
    except ValueError as exc:
        raise LensError(f"path_patch is not supported on this model: {exc}") from None


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
        block = tc.bridge.blocks[receiver.layer]
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
        w_o = tc.bridge.blocks[layer].attn.W_O[head]
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
    """Validate the arguments and compute every path; see path_patch."""
    if receiver_input not in RECEIVER_INPUTS:
        raise LensError(f"receiver_input={receiver_input!r} is not one of 'q', 'k', 'v'.")
    tokens = encode_pair(tc, clean_prompt, corrupted_prompt, "clean_prompt", "corrupted_prompt")
    answer_metric = resolve_metric(tc, answer, wrong_answer, metric, require_wrong=True)
    n_layers, n_heads, n_tokens = int(tc.cfg.n_layers), int(tc.cfg.n_heads), int(tokens.shape[-1])
    form_name, receiver_list = _resolve_receivers(tc, receivers, receiver_input)
    heads_in = form_name in ("all_heads", "set")
    last_receiver_layer = max(r.layer for r in receiver_list)
    if senders is None:
        sender_list = [(layer, head) for layer in range(min(last_receiver_layer, n_layers)) for head in range(n_heads)]
        if not sender_list:
            raise LensError(
                f"receivers={receivers!r:.80}: no head comes before it, so there is no path to patch; "
                "choose a later receiver."
            )
    else:
        sender_list = resolve_head_pairs(senders, n_layers, n_heads, "senders")
    position_list = None if positions is None else resolve_positions(positions, n_tokens)
    if form_name == "all_heads" and len(sender_list) > 1 and senders is None:
        raise LensError(
            "receivers='all_heads' with senders=null (every head) would patch every pair of heads; pass "
            "senders=[[layer, head], ...] (one sender gives a receiver grid), or a fixed receiver set."
        )

    # every (sender, receivers) row and whether it has a path at all
    paths: list[tuple[Head, tuple[Receiver, ...]]] = []
    if form_name == "all_heads":
        for sender in sender_list:
            paths += [(sender, (r,)) for r in receiver_list if r.layer > sender[0]]
        if not paths:
            raise LensError(
                f"senders={[list(s) for s in sender_list]}: no head comes after "
                f"{'this sender' if len(sender_list) == 1 else 'these senders'}; choose an earlier sender."
            )
    else:
        paths = [(sender, receiver_list) for sender in sender_list]
    if form_name != "logits" and not any(r.layer > s[0] for s, receivers_of_row in paths for r in receivers_of_row):
        raise LensError(
            f"no path: every receiver is in the same layer as the senders or before them (a head reads the "
            f"residual stream before its own layer's heads write to it). Choose senders before layer "
            f"{last_receiver_layer}, or later receivers."
        )
    n_paths = len(paths)
    if n_paths > tc.limits.max_sweep_cells:
        raise LensError(
            f"path_patch would compute {n_paths} paths, over the cap max_sweep_cells={tc.limits.max_sweep_cells} "
            "(LENS_MCP_MAX_SWEEP_CELLS); pass fewer senders=[[layer, head], ...]."
        )
    _check_architecture(tc, sorted({layer for layer, _ in sender_list}))

    readout = Readout(tc, answer_metric)
    z_hooks = [hook_name("z", layer) for layer in sorted({layer for layer, _ in sender_list})]
    notes: list[str] = []
    values = torch.full((n_paths,), math.nan, dtype=torch.float32)
    with torch.no_grad():
        engine = PatchEngine(tc, tokens, readout, z_hooks)
        engine.prepare()
        tc.progress(0, n_paths, "clean and corrupted runs done")
        deltas, first = _sender_writes(tc, engine, sender_list, position_list)
        if form_name == "logits":
            if position_list is not None and n_tokens - 1 not in position_list:
                notes.append("positions leaves out the last position, the only one the logits read: no effect")
            values = _logit_rows(tc, engine, answer_metric, [deltas[sender] for sender, _ in paths])
            engine.stats.method = "readout"
            tc.progress(n_paths, n_paths, "paths into the logits done")
        else:
            builder = _RowBuilder(tc, receiver_input)
            rows: list[Patch] = []
            index: list[int] = []
            for i, (sender, receivers_of_row) in enumerate(paths):
                reachable = [r for r in receivers_of_row if r.layer > sender[0]]
                row = builder.row(deltas[sender], first[sender], reachable)
                if row is not None:
                    rows.append(row)
                    index.append(i)
            counter = ProgressCounter(tc.progress, total=len(rows), unit="paths patched")
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
        paths=paths,
        form="receivers" if form_name == "all_heads" else "senders",
        senders=sender_list,
        receivers=receiver_list,
        receiver_input=receiver_input if heads_in else None,  # type: ignore[arg-type]
        clean_metric=engine.clean_value,
        corrupted_metric=engine.metric_value,
        tokens=tokens,
        metric=answer_metric,
        positions=position_list,
        stats=engine.stats,
        notes=notes,
    )


def _grid_axes(tc: ToolContext, run: PathRun, shown: list[float]) -> tuple[list[str], list[int], list[int], list[Any]]:
    """(axes, layers, heads, grid): senders' layer x head for a fixed receiver set; for 'all_heads', receiver
    layer x head (one sender) or sender x receiver layer x receiver head (several). Null where nothing was
    asked or there is no path."""
    nan = math.nan
    if run.form == "senders":
        heads = list(range(int(tc.cfg.n_heads)))
        layers = sorted({layer for layer, _ in run.senders})
        grid = [[nan] * len(heads) for _ in layers]
        for (sender, _), value in zip(run.paths, shown, strict=True):
            grid[layers.index(sender[0])][sender[1]] = value
        return ["sender_layer", "sender_head"], layers, heads, grid
    n = receiver_heads_per_layer(tc, run.receiver_input or "q")
    heads = list(range(n))
    layers = list(range(min(layer for layer, _ in run.senders) + 1, int(tc.cfg.n_layers)))
    by_sender = {s: [[nan] * n for _ in layers] for s in run.senders}
    for (sender, (receiver,)), value in zip(run.paths, shown, strict=True):
        by_sender[sender][layers.index(receiver.layer)][receiver.head or 0] = value
    if len(run.senders) == 1:
        return ["receiver_layer", "receiver_head"], layers, heads, by_sender[run.senders[0]]
    return ["sender", "receiver_layer", "receiver_head"], layers, heads, [by_sender[s] for s in run.senders]


def path_patch(
    tc: ToolContext,
    clean_prompt: Annotated[
        str, Field(description="Prompt whose sender outputs are patched in, e.g. 'When Mary and John went, John gave'")
    ],
    corrupted_prompt: Annotated[
        str, Field(description="Prompt that is run; must tokenize to the same length as clean_prompt")
    ],
    answer: Annotated[str, Field(description="The clean prompt's answer, one token (e.g. ' Mary')")],
    wrong_answer: Annotated[
        str | None, Field(description="The competing answer, one token; needed for metric='logit_diff'")
    ] = None,
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
    metric: Annotated[
        MetricName,
        Field(description="logit_diff: logit(answer) - logit(wrong_answer); prob / logprob: of answer. Last position"),
    ] = "logit_diff",
    normalize: Annotated[
        bool,
        Field(description="Report (patched - corrupted) / (clean - corrupted): 0 = no effect, 1 = clean restored"),
    ] = True,
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
    (receiver not after sender). Grouped-query attention: k/v receivers are key/value heads. Batched rows that
    start at the receiver's layer; far faster than one pass per path. Find senders with patch_sweep
    (component='heads') or head_attribution first."""
    started = time.perf_counter()
    run = run_path_patch(
        tc, clean_prompt, corrupted_prompt, answer, wrong_answer, senders, receivers, receiver_input, positions, metric
    )
    span = run.clean_metric - run.corrupted_metric
    notes = list(run.notes)
    do_normalize = normalize
    if normalize and abs(span) < 1e-6:
        do_normalize = False
        notes.append("clean and corrupted metrics are equal, so the grid cannot be normalized: raw metric shown")
    shown = ((run.values - run.corrupted_metric) / span if do_normalize else run.values).tolist()
    axes, layers, heads, grid = _grid_axes(tc, run, shown)

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
    n_kv = _n_kv_heads(tc) if run.receiver_input in ("k", "v") else int(tc.cfg.n_heads)
    if n_kv != int(tc.cfg.n_heads):
        group = int(tc.cfg.n_heads) // n_kv
        notes.append(
            f"grouped-query attention: receiver heads are key/value heads; KV head j is read by query heads "
            f"{group}j..{group}j+{group - 1}"
        )
    unit = "fraction of the clean - corrupted difference restored" if do_normalize else f"{run.metric.description}"
    return PathPatchResult(
        receivers=(
            "all_heads" if run.form == "receivers" else ", ".join(r.label(run.receiver_input) for r in run.receivers)
        ),
        receiver_input=run.receiver_input,
        metric=f"{run.metric.description} at the last position",
        normalized=do_normalize,
        meaning=(
            f"each cell: the metric with only that sender->receiver path patched, as {unit}; "
            + ("1 = the path alone restores the clean metric, 0 = no effect" if do_normalize else "raw metric")
            + "; null = no path"
        ),
        clean_tokens=token_strings(tc, run.tokens[0]),
        corrupted_tokens=token_strings(tc, run.tokens[1]),
        clean_metric=run.clean_metric,
        corrupted_metric=run.corrupted_metric,
        positions=run.positions,
        axes=axes,
        senders=[list(s) for s in run.senders] if len(axes) == 3 else None,
        layers=layers,
        heads=heads,
        grid=grid,
        top_paths=edges[:TOP_EDGES],
        n_paths=len(run.paths),
        forward_passes=run.stats.forward_passes,
        method=run.stats.method,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
