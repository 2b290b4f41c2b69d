"""patch_sweep: activation patching from a clean into a corrupted prompt, one cell at a time, batched."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.common import Cost
from lens_mcp.schemas.patching import (
    PatchCell,
    PatchPairMetrics,
    PatchSweepResult,
    SweepComponent,
    SweepSpread,
)
from lens_mcp.tools.causal._components import (
    AFTER_LAST_ATTENTION,
    COMPONENT_FAMILY,
    PER_HEAD,
    check_component,
)
from lens_mcp.tools.causal._engine import Patch, PatchEngine, PlannedWork, Readout, make_patch
from lens_mcp.tools.core.arguments import (
    Answer,
    CleanPrompt,
    CorruptedPrompt,
    DryRun,
    Normalize,
    PatchDirection,
    PatchMetric,
    SweepLayers,
    SweepPositions,
    WrongAnswer,
)
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate, grid_chars, planned_cost, row_memory
from lens_mcp.tools.core.grids import fit_grid
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.metrics import AnswerMetric, metric_warnings, resolve_metric
from lens_mcp.tools.core.pairs import (
    PairsArgument,
    PromptPair,
    encode_pairs,
    pair_label,
    positions_from_end,
    resolve_pairs,
    spread,
)
from lens_mcp.tools.core.patching import (
    TOP_CELLS,
    check_direction,
    normalize_pooled,
    patching_meaning,
    shape_grid,
)
from lens_mcp.tools.core.tokens import token_strings
from lens_mcp.tools.core.validation import check_positions, resolve_layers, resolve_positions


@dataclass
class Sweep:
    """The raw outcome of a sweep (unrounded), for patch_sweep and for tests against TransformerLens."""

    values: torch.Tensor
    """Patched metric per cell (not normalized), in the order of `cells`; a skipped or inert cell holds the
    metric of the run patched into."""
    cells: list[tuple[int, int | None, int | None]]
    """(layer, head, position) of each cell: layer-major, then head, then position (absolute positions)."""
    clean_metric: float
    corrupted_metric: float
    layers: list[int]
    heads: list[int] | None
    positions: list[int] | None
    tokens: torch.Tensor
    metric: AnswerMetric
    engine: PatchEngine
    direction: str = "denoise"
    skipped: list[bool] = field(default_factory=list)
    """Per cell: the clean and corrupted activations are bitwise identical (patching cannot change anything)."""
    inert: list[bool] = field(default_factory=list)
    """Per cell: the patch cannot reach the metric by construction (last layer, an earlier position)."""

    @property
    def base_metric(self) -> float:
        """The metric of the run patched into (corrupted when denoising, clean when noising)."""
        return self.corrupted_metric if self.direction == "denoise" else self.clean_metric

    @property
    def source_metric(self) -> float:
        return self.clean_metric if self.direction == "denoise" else self.corrupted_metric


@dataclass
class SweepPlan:
    """A sweep's arguments, checked and resolved before any forward pass."""

    encoded: list[torch.Tensor]
    """Token ids per pair, [2, n] (clean, corrupted)."""
    metrics: list[AnswerMetric]
    layers: list[int]
    heads: list[int] | None
    positions: list[list[int] | None]
    """Absolute positions per pair (None: a per-head component)."""
    n_cells: int
    """Cells per pair."""


def plan_sweep(
    tc: ToolContext,
    pairs: Sequence[PromptPair],
    component: str,
    layers: list[int] | None,
    positions: list[int] | None,
    metric: str,
) -> SweepPlan:
    """Check every argument and count the cells (refusing a sweep over max_sweep_cells), without running.
    Pairs may differ in length only for per-head components or positions counted from the end."""
    check_component(tc, component, tuple(COMPONENT_FAMILY))
    if component in PER_HEAD and positions is not None:
        raise LensError(
            f"positions= does not apply to component={component!r} (it patches every position of a head); "
            "use component='heads_by_pos' to patch one head output at one position at a time."
        )
    items = list(pairs)
    positions = check_positions(positions)
    fixed = component not in PER_HEAD and not positions_from_end(positions)
    encoded = encode_pairs(tc, items, fixed_positions=fixed)
    metrics = []
    for index, pair in enumerate(items):
        try:
            metrics.append(resolve_metric(tc, pair.answer or "", pair.wrong_answer, metric, require_wrong=True))
        except LensError as exc:
            raise LensError(f"{pair_label(index, len(items))}{exc}") from None
    n_layers, n_heads = tc.view.n_layers, tc.view.n_heads
    layer_list = resolve_layers(layers, n_layers)
    position_lists: list[list[int] | None] = [None] * len(items)
    if component not in PER_HEAD:
        position_lists = [resolve_positions(positions, int(t.shape[-1])) for t in encoded]
    head_count = tc.view.n_kv_heads if component in ("k", "v") else n_heads
    head_list = list(range(head_count)) if component in (*PER_HEAD, "heads_by_pos") else None
    position_list = position_lists[0]
    n_cells = len(layer_list) * (len(head_list) if head_list else 1) * (len(position_list) if position_list else 1)
    if n_cells > tc.limits.max_sweep_cells:
        shape = " x ".join(
            f"{len(axis)} {name}"
            for axis, name in ((layer_list, "layers"), (head_list, "heads"), (position_list, "positions"))
            if axis
        )
        raise LensError(
            f"the sweep has {n_cells} cells ({shape}), over the cap max_sweep_cells="
            f"{tc.limits.max_sweep_cells} (LENS_MCP_MAX_SWEEP_CELLS); narrow it with layers=[...] "
            "and/or positions=[...]."
        )
    return SweepPlan(encoded, metrics, layer_list, head_list, position_lists, n_cells)


NARROW = "pass fewer layers=[...] or positions=[...], use a per-head component, or pass fewer pairs"


def reference_cost(tc: ToolContext, plan: SweepPlan) -> Cost:
    """The clean and corrupted runs of every pair: what the call spends before it knows what it will skip."""
    tokens = max(int(t.shape[-1]) for t in plan.encoded)
    view = tc.view
    kept_per_row = tokens * (view.d_model * (view.n_layers + 1) + 2 * view.n_layers * view.n_kv_heads * view.d_head)
    return estimate(
        tc, Work(rows=2 * len(plan.encoded), tokens_per_row=tokens, stored_bytes=8 * len(plan.encoded) * kept_per_row)
    )


def prepared_cost(
    tc: ToolContext,
    plan: SweepPlan,
    groups: Sequence[PreparedGroup],
    works: Sequence[PlannedWork],
    spent_seconds: float,
) -> Cost:
    """The sweep's cost once its reference runs are done: only the rows the engine will run (cells whose
    activations are equal skipped, each row from its layer and its first differing position), in the batches it
    will run them, with what each block call costs; and the result's size, sparse or summarized to fit."""
    n_pairs = len(plan.encoded)
    active = sum(work.rows for work in works)
    values_per_cell = 4 if n_pairs > 1 else 1
    tokens = max(int(t.shape[-1]) for t in plan.encoded)
    chars = min(
        tc.limits.max_response_chars,
        grid_chars(min(plan.n_cells, -(-active // n_pairs) * 2) * values_per_cell, 1500 + 24 * tokens * n_pairs),
    )
    return planned_cost(
        tc,
        cells=plan.n_cells * n_pairs,
        passes=len(works) + sum(work.batches for work in works),
        token_layers=sum(work.token_layers for work in works),
        extra_token_layers=sum(work.prefix_token_layers for work in works),
        block_calls=sum(work.block_calls for work in works),
        result_chars=chars,
        memory_bytes=sum(group.engine.stored_bytes() for group in groups) + row_memory(tc, tokens),
        spent_seconds=spent_seconds,
    )


@dataclass
class PreparedGroup:
    """The pairs of one length, their clean and corrupted runs done and every cell's patch built."""

    members: list[int]
    n_tokens: int
    engine: PatchEngine
    patches: list[Patch]
    per_pair: list[tuple[list[tuple[int, int | None, int | None]], list[bool]]]


def prepare_sweeps(tc: ToolContext, spec: SweepPlan, component: str, direction: str) -> list[PreparedGroup]:
    """The clean and corrupted runs of every pair (one batched pass per length) and the patches of every cell:
    what a sweep will skip is known from here on (`sweep_work`)."""
    family = check_component(tc, component, tuple(COMPONENT_FAMILY))
    check_direction(direction)
    encoded, metrics, layer_list = spec.encoded, spec.metrics, spec.layers
    position_lists, head_list = spec.positions, spec.heads
    last_layer = tc.view.n_layers - 1
    hooks = {layer: hook_name(family, layer) for layer in layer_list}
    head_axis = 1 if component == "pattern" else 2
    head_axis_values: list[int | None] = list(head_list) if head_list is not None else [None]
    by_length: dict[int, list[int]] = {}
    for i, tokens in enumerate(encoded):
        by_length.setdefault(int(tokens.shape[-1]), []).append(i)
    groups: list[PreparedGroup] = []
    with torch.no_grad():
        for n_tokens, members in by_length.items():
            ordered = [
                encoded[i] if direction == "denoise" else encoded[i].flip(0) for i in members
            ]  # row 0 of each pair is read from, row 1 is patched into
            readouts = [Readout(tc, metrics[i]) for i in members]
            engine = PatchEngine(tc, torch.cat(ordered, dim=0), readouts, list(hooks.values()))
            engine.prepare()
            for hook in hooks.values():
                shape = engine.cache[hook].shape
                if head_list is not None and shape[head_axis] != len(head_list):
                    raise LensError(
                        f"component={component!r}: {hook} has {shape[head_axis]} heads on this model, expected "
                        f"{len(head_list)}; this architecture is not supported for this component."
                    )
            patches: list[Patch] = []
            per_pair: list[tuple[list[tuple[int, int | None, int | None]], list[bool]]] = []
            for slot, i in enumerate(members):
                cells: list[tuple[int, int | None, int | None]] = []
                inert: list[bool] = []
                for layer in layer_list:
                    hook = hooks[layer]
                    source, base = engine.clean_cache[hook][slot : slot + 1], engine.cache[hook][slot : slot + 1]
                    for head in head_axis_values:
                        for position in position_lists[i] or [None]:
                            cells.append((layer, head, position))
                            dead = (
                                component in AFTER_LAST_ATTENTION
                                and layer == last_layer
                                and position is not None
                                and position != n_tokens - 1
                            )
                            inert.append(dead)
                            patch = make_patch(
                                layer, hook, source, base, position, head, head_axis=head_axis, pair=slot
                            )
                            if dead:
                                patch = replace(patch, first_diff=None)
                            patches.append(patch)
                per_pair.append((cells, inert))
            groups.append(PreparedGroup(members, n_tokens, engine, patches, per_pair))
    return groups


def sweep_work(groups: Sequence[PreparedGroup]) -> list[PlannedWork]:
    return [group.engine.planned_work(group.patches) for group in groups]


def run_prepared(tc: ToolContext, spec: SweepPlan, groups: Sequence[PreparedGroup], direction: str) -> list[Sweep]:
    """Run every prepared cell, rows of all pairs of one length batched together in one engine."""
    total = spec.n_cells * len(spec.encoded)
    counter = ProgressCounter(tc.progress, total=total, unit="cells patched")
    tc.progress(0, total, "clean and corrupted runs done")
    sweeps: list[Sweep | None] = [None] * len(spec.encoded)
    with torch.no_grad():
        for group in groups:
            engine = group.engine
            values = engine.run(group.patches, counter)
            skipped_all = [p.first_diff is None for p in group.patches]
            for slot, i in enumerate(group.members):
                cells, inert = group.per_pair[slot]
                part = slice(slot * len(cells), (slot + 1) * len(cells))
                source_value, base_value = engine.clean_values[slot], engine.metric_values[slot]
                clean_value, corrupted_value = (
                    (source_value, base_value) if direction == "denoise" else (base_value, source_value)
                )
                sweeps[i] = Sweep(
                    values[part].clone(),
                    cells,
                    clean_value,
                    corrupted_value,
                    spec.layers,
                    spec.heads,
                    spec.positions[i],
                    spec.encoded[i],
                    spec.metrics[i],
                    engine,
                    direction,
                    [s and not d for s, d in zip(skipped_all[part], inert, strict=True)],
                    inert,
                )
    return [s for s in sweeps if s is not None]


def run_sweeps(
    tc: ToolContext,
    pairs: Sequence[PromptPair],
    component: str = "resid_pre",
    layers: list[int] | None = None,
    positions: list[int] | None = None,
    metric: str = "logit_diff",
    direction: str = "denoise",
    *,
    plan: SweepPlan | None = None,
) -> list[Sweep]:
    """Validate the arguments and run every cell of the sweep for each pair, rows of all pairs of one length
    batched together in one engine. Positions are resolved per pair (negative ones count from each pair's end);
    pairs of different lengths need negative positions, or a per-head component."""
    check_direction(direction)
    spec = plan or plan_sweep(tc, pairs, component, layers, positions, metric)
    return run_prepared(tc, spec, prepare_sweeps(tc, spec, component, direction), direction)


def run_sweep(
    tc: ToolContext,
    clean_prompt: str,
    corrupted_prompt: str,
    answer: str,
    wrong_answer: str | None,
    component: str = "resid_pre",
    layers: list[int] | None = None,
    positions: list[int] | None = None,
    metric: str = "logit_diff",
    direction: str = "denoise",
) -> Sweep:
    """Validate the arguments and run every cell of the sweep on one pair; see patch_sweep."""
    pair = PromptPair(
        clean_prompt=clean_prompt, corrupted_prompt=corrupted_prompt, answer=answer, wrong_answer=wrong_answer
    )
    return run_sweeps(tc, [pair], component, layers, positions, metric, direction)[0]


def summarize_sweeps(
    tc: ToolContext,
    sweeps: list[Sweep],
    component: SweepComponent,
    normalize: bool,
    positions: list[int] | None,
    started: float,
) -> PatchSweepResult:
    """The result of patch_sweep from the raw sweeps of one or more pairs: per pair normalized (if asked and
    possible), then averaged cell by cell; skipped cells (identical activations in every pair) are null."""
    first = sweeps[0]
    direction, metric_text = first.direction, f"{first.metric.description} at the last position"
    notes: list[str] = []
    for note in (n for s in sweeps for n in s.engine.stats.notes):
        if note not in notes:
            notes.append(note)
    pooled = normalize_pooled(
        torch.stack([s.values for s in sweeps]),
        torch.tensor([s.clean_metric for s in sweeps]),
        torch.tensor([s.corrupted_metric for s in sweeps]),
        direction,
        normalize,
    )
    do_normalize = pooled.normalized
    if pooled.note:
        notes.append(pooled.note)
    stacked = pooled.per_pair  # [pairs, cells]
    mean = pooled.mean
    skipped = [all(s.skipped[c] for s in sweeps) for c in range(len(first.cells))]
    inert = [all(s.inert[c] for s in sweeps) for c in range(len(first.cells))]
    flat: list[float | None] = [None if skip else float(v) for v, skip in zip(mean.tolist(), skipped, strict=True)]
    if do_normalize:
        flat = [0.0 if dead else v for v, dead in zip(flat, inert, strict=True)]
    n_skipped = sum(skipped)
    if n_skipped:
        notes.append(
            f"skipped: {n_skipped} cells are null: the clean and corrupted activations there are bitwise identical "
            f"{'in every pair ' if len(sweeps) > 1 else ''}(e.g. BOS, shared prefix), so patching cannot change "
            "anything"
        )
    if any(inert):
        notes.append(
            "cells in the last layer at positions before the last cannot reach the metric (read at the last "
            "position): they are exactly 0 (not computed)"
        )
    layer_list, head_list = first.layers, first.heads
    n_heads = len(head_list) if head_list is not None else None
    pos_axis: list[int] | None = None
    if first.positions is not None:
        same_length = len({int(s.tokens.shape[-1]) for s in sweeps}) == 1
        pos_axis = first.positions if same_length else list(positions or [])
    n_pos = len(pos_axis) if pos_axis is not None else None
    grid = shape_grid(flat, len(layer_list), n_heads, n_pos)
    head_name = "kv_head" if component in ("k", "v") and tc.view.n_kv_heads != tc.view.n_heads else "head"
    axes = ["layer"] + ([head_name] if head_list is not None else []) + (["position"] if pos_axis is not None else [])
    if head_name == "kv_head":
        notes.append(
            f"grouped-query attention: each {component} cell patches one key/value head, shared by "
            f"{tc.view.n_heads // tc.view.n_kv_heads} query heads ({tc.view.n_kv_heads} key/value heads per layer)"
        )
    cell_spread = None
    if len(sweeps) > 1:
        stats = spread(stacked)

        def shaped(values: torch.Tensor) -> list:
            flat_values = [None if skip else float(v) for v, skip in zip(values.tolist(), skipped, strict=True)]
            return shape_grid(flat_values, len(layer_list), n_heads, n_pos)

        cell_spread = SweepSpread(
            n_pairs=len(sweeps), std=shaped(stats.std), min=shaped(stats.min), max=shaped(stats.max)
        )

    single = len(sweeps) == 1
    token_lists = [(token_strings(tc, s.tokens[0]), token_strings(tc, s.tokens[1])) for s in sweeps]
    order = sorted((i for i, v in enumerate(flat) if v is not None), key=lambda i: abs(flat[i] or 0.0), reverse=True)[
        :TOP_CELLS
    ]
    top = []
    for i in order:
        layer, head, position = first.cells[i]
        shown_position = position if pos_axis is None or position is None else pos_axis[i % len(pos_axis)]
        top.append(
            PatchCell(
                layer=layer,
                head=head,
                position=shown_position,
                value=flat[i] or 0.0,
                clean_token=token_lists[0][0][position] if single and position is not None else None,
                corrupted_token=token_lists[0][1][position] if single and position is not None else None,
            )
        )
    pair_rows = None
    if not single:
        pair_rows = [
            PatchPairMetrics(
                index=index,
                clean_metric=s.clean_metric,
                corrupted_metric=s.corrupted_metric,
                clean_tokens=clean,
                corrupted_tokens=corrupted,
            )
            for index, (s, (clean, corrupted)) in enumerate(zip(sweeps, token_lists, strict=True))
        ]
    engines = list({id(s.engine): s.engine for s in sweeps}.values())
    result = PatchSweepResult(
        component=component,
        direction=direction,  # type: ignore[arg-type]
        metric=metric_text if single else f"{first.metric.name} of each pair's answer(s) at the last position",
        normalized=do_normalize,
        meaning=patching_meaning(direction, do_normalize, metric_text if single else first.metric.name, len(sweeps)),
        clean_tokens=token_lists[0][0] if single else None,
        corrupted_tokens=token_lists[0][1] if single else None,
        clean_metric=sum(s.clean_metric for s in sweeps) / len(sweeps),
        corrupted_metric=sum(s.corrupted_metric for s in sweeps) / len(sweeps),
        axes=axes,
        layers=layer_list,
        positions=pos_axis,
        heads=head_list,
        grid=grid,
        spread=cell_spread,
        pairs=pair_rows,
        top_cells=top,
        n_cells=len(first.cells),
        forward_passes=sum(e.stats.forward_passes for e in engines),
        skipped_cells=n_skipped,
        method=engines[0].stats.method,
        seconds=time.perf_counter() - started,
        notes=notes,
        warnings=_warnings(tc, first),
    )
    spread_flats = None
    if len(sweeps) > 1:
        spread_flats = {
            name: [None if skip else float(v) for v, skip in zip(values.tolist(), skipped, strict=True)]
            for name, values in (("std", stats.std), ("min", stats.min), ("max", stats.max))
        }
    return fit_sweep(tc, result, flat, spread_flats)


def fit_sweep(
    tc: ToolContext,
    result: PatchSweepResult,
    flat: list[float | None],
    spread_flats: dict[str, list[float | None]] | None,
) -> PatchSweepResult:
    """A mostly empty grid as `sparse`; a grid over the response cap as its top cells and `layer_max`."""
    return fit_grid(
        result,
        flat,
        spread_flats,
        tc.limits.max_response_chars,
        omitted="null (identical activations) or exactly 0",
        narrow=NARROW,
    )


def _warnings(tc: ToolContext, sweep: Sweep) -> list[str]:
    """Answer warnings for the first pair: the answer read at its clean prompt, the wrong answer at its corrupted
    prompt (the engine's rows are swapped when noising)."""
    last = sweep.engine.last_logits
    clean, corrupted = (last[0], last[1]) if sweep.direction == "denoise" else (last[1], last[0])
    return metric_warnings(tc, sweep.metric, clean, corrupted)


def patch_sweep(
    tc: ToolContext,
    clean_prompt: CleanPrompt = None,
    corrupted_prompt: CorruptedPrompt = None,
    answer: Answer = None,
    wrong_answer: WrongAnswer = None,
    component: Annotated[
        SweepComponent,
        Field(
            description="What to patch: resid_pre/resid_mid/resid_post/attn_out/mlp_out (layer x position grid); "
            "per head at all positions (layer x head): heads (output z), q, k, v (inputs; k/v per key/value "
            "head under grouped-query attention), pattern (attention weights); heads_by_pos (layer x head x "
            "position)"
        ),
    ] = "resid_pre",
    layers: SweepLayers = None,
    positions: SweepPositions = None,
    metric: PatchMetric = "logit_diff",
    normalize: Normalize = True,
    direction: PatchDirection = "denoise",
    pairs: PairsArgument = None,
    dry_run: DryRun = False,
) -> PatchSweepResult:
    """Activation patching: run one prompt with ONE activation at a time taken from the other prompt and
    measure the change. direction='denoise' (default) patches clean into corrupted (1 = restores the clean
    behaviour: the activation is sufficient); 'noise' patches corrupted into clean (1 = fully breaks it: the
    activation is necessary). 0 = no effect. normalize=false gives the raw metric; clean and corrupted metrics
    are always reported. Components: resid_pre/resid_mid/resid_post/attn_out/mlp_out give a layer x position
    grid; heads (output z), q, k, v, pattern patch one head at all positions (layer x head; k and v per
    key/value head under grouped-query attention); heads_by_pos gives layer x head x position (narrow it with
    layers=/positions=). Null cells: clean and corrupted activations are identical there (nothing to patch).
    Prompts must tokenize to the same length (call tokenize). pairs=[{clean_prompt, corrupted_prompt, answer,
    wrong_answer}, ...]: a dataset, each pair normalized then averaged per cell, with the spread and per-pair
    metrics (pairs may differ in length only with negative positions or per-head components). The cost is
    estimated first: over a cap the call is refused at once; dry_run=true returns only the estimate. Exact
    (equals TransformerLens's patching functions) and batched, rows of all pairs together. Progress is reported
    per batch; the call can be cancelled. Next: heads_by_pos on the layers that matter, or ablate_heads."""
    started = time.perf_counter()
    check_direction(direction)
    if pairs is None and clean_prompt is not None and answer is None:
        raise LensError(
            "answer is required: pass answer (the clean prompt's answer, one token, e.g. ' Paris'), or a dataset "
            "as pairs=[...]."
        )
    items = resolve_pairs(
        tc,
        pairs,
        clean_prompt=clean_prompt,
        corrupted_prompt=corrupted_prompt,
        answer=answer,
        wrong_answer=wrong_answer,
    )
    plan = plan_sweep(tc, items, component, layers, positions, metric)
    enforce(tc, reference_cost(tc, plan), NARROW)
    reference_started = time.perf_counter()
    groups = prepare_sweeps(tc, plan, component, direction)
    cost = prepared_cost(tc, plan, groups, sweep_work(groups), time.perf_counter() - reference_started)
    if dry_run:
        return PatchSweepResult(
            component=component,
            direction=direction,
            metric=metric,
            normalized=normalize,
            meaning="dry run: nothing computed; `cost` is the estimate for this call",
            n_cells=plan.n_cells,
            cost=cost,
            dry_run=True,
            seconds=time.perf_counter() - started,
        )
    enforce(tc, cost, NARROW)
    sweeps = run_prepared(tc, plan, groups, direction)
    result = summarize_sweeps(tc, sweeps, component, normalize, positions, started)
    result.cost = cost
    return result
