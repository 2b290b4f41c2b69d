"""attribution_patch: a first-order (gradient) estimate of every patch_sweep cell from one forward and backward
pass, then the exact patching engine on the cells with the largest estimates.

Attribution patching (Nanda; Syed et al. 2023): the effect of patching activation a from its corrupted value
a_corr to its clean value a_clean is estimated by grad_a(metric at the corrupted run) . (a_clean - a_corr)
(denoising). Noising mirrors it: grad at the clean run . (a_corr - a_clean). The gradient is taken through a
zero tensor added at each hook point (a leaf of the autograd graph), so it is exactly d(metric)/d(activation)
whatever shape conversion the hook point does, and no parameter gradient is touched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.common import Cost, GridSpread, PairMetrics
from lens_mcp.schemas.patching import AttributionPatchResult, Component, PatchCell, RankAgreement, VerifiedCell
from lens_mcp.tools.causal._components import check_component
from lens_mcp.tools.causal._engine import PatchEngine, Readout, make_patch
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
from lens_mcp.tools.core.batching import ProgressCounter, iter_batched, plan_rows, sequence_bytes
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate, grid_chars, seconds_per_row
from lens_mcp.tools.core.forward import final_residual, readout
from lens_mcp.tools.core.grids import fit_grid
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.metrics import AnswerMetric, MetricName, resolve_metric
from lens_mcp.tools.core.pairs import (
    PairsArgument,
    encode_pairs,
    pair_label,
    positions_from_end,
    resolve_pairs,
    spread,
)
from lens_mcp.tools.core.patching import (
    TOP_CELLS,
    Direction,
    Normalized,
    check_direction,
    normalize_pooled,
    patching_meaning,
    pooled_gap,
    shape_grid,
)
from lens_mcp.tools.core.tokens import token_strings
from lens_mcp.tools.core.validation import check_range, resolve_layers, resolve_positions

Problem = Literal["sign", "magnitude"]
AGREEMENT_FLOOR = 0.01
"""Estimate and exact value both under this share of the clean - corrupted gap count as agreeing (both ~0)."""

Cell = tuple[int, int | None, int | None]
"""(layer, head, position); head None for residual/sublayer components, position None for `heads`."""


@dataclass
class PairRun:
    """One prompt pair's token ids ([2, n]: clean, corrupted) and metric."""

    tokens: torch.Tensor
    metric: AnswerMetric


@dataclass
class CellGrid:
    """What a sweep's cells are: layers, heads and positions, in patch_sweep's order."""

    component: str
    family: str
    layers: list[int]
    heads: list[int] | None
    positions: list[int] | None
    """Absolute positions, or (from_end) negative ones counted from the end of each pair."""
    from_end: bool = False

    def absolute(self, n_tokens: int) -> list[int] | None:
        """The positions in a prompt of n_tokens tokens."""
        if self.positions is None or not self.from_end:
            return self.positions
        return [n_tokens + position for position in self.positions]

    def position_in(self, position: int | None, n_tokens: int) -> int | None:
        return position if position is None or not self.from_end else n_tokens + position

    @property
    def cells(self) -> list[Cell]:
        return [
            (layer, head, position)
            for layer in self.layers
            for head in self.heads or [None]
            for position in self.positions or [None]
        ]

    def hook(self, layer: int) -> str:
        return hook_name(self.family, layer)


@dataclass
class Estimates:
    """Raw attribution estimates (unrounded), per pair: the estimated change of the metric of the run that
    receives the patch, and each pair's clean and corrupted metrics from the gradient pass."""

    values: torch.Tensor
    """[n_pairs, n_cells]: grad . (source - target activation), in the metric's units."""
    clean_metrics: torch.Tensor
    corrupted_metrics: torch.Tensor
    passes: int


def resolve_grid(
    tc: ToolContext, component: str, layers: list[int] | None, positions: list[int] | None, lengths: Sequence[int]
) -> CellGrid:
    """The cells, for prompts of `lengths` tokens: positions are absolute when every prompt has the same length,
    else they must count from the end (checked against the shortest prompt)."""
    family = check_component(tc, component)
    layer_list = resolve_layers(layers, tc.view.n_layers)
    if component == "heads" and positions is not None:
        raise LensError(
            "positions= does not apply to component='heads' (it patches every position of a head); "
            "use component='heads_by_pos' to patch one position at a time."
        )
    head_list = list(range(tc.view.n_heads)) if component in ("heads", "heads_by_pos") else None
    if component == "heads":
        return CellGrid(component, family, layer_list, head_list, None)
    if len(set(lengths)) == 1:
        return CellGrid(component, family, layer_list, head_list, resolve_positions(positions, lengths[0]))
    assert positions is not None  # encode_pairs refused different lengths otherwise
    resolve_positions(positions, min(lengths))  # the range check, against the shortest pair
    from_end = list(dict.fromkeys(int(p) for p in positions))
    return CellGrid(component, family, layer_list, head_list, from_end, from_end=True)


def _check_eval_mode(tc: ToolContext) -> None:
    training = [name for name, module in tc.view.named_modules() if module.training]
    if training:
        raise LensError(
            f"the loaded model is in training mode ({training[0] or 'the model'}): dropout would make the clean "
            "and corrupted runs differ at random. Reload the model (load_model) so it is in evaluation mode."
        )


def _reduce(grid: CellGrid, contribution: torch.Tensor) -> torch.Tensor:
    """Per-cell sums of grad * delta ([rows, pos, ...]) at one layer -> [rows, cells of that layer]."""
    positions = grid.absolute(int(contribution.shape[1]))
    if grid.heads is not None:  # z: [rows, pos, heads, d_head]
        per_head = contribution.sum(dim=-1)[:, :, grid.heads]  # [rows, pos, heads]
        if positions is None:
            return per_head.sum(dim=1)
        return per_head[:, positions].transpose(1, 2).reshape(per_head.shape[0], -1)
    assert positions is not None
    return contribution.sum(dim=-1)[:, positions]


SPLIT_MIN_TOKENS = 64
"""From this many receiving tokens in a batch on, the source rows run in a forward pass of their own without
gradients, so the backward pass covers only the receiving rows (half the rows); below it, one pass over both
(one call through the blocks costs more than the rows it saves)."""


def _gradient_pass(
    tc: ToolContext,
    grid: CellGrid,
    hooks: list[str],
    tokens: torch.Tensor,
    metrics: Sequence[AnswerMetric],
    grad_row: int,
) -> tuple[tuple[torch.Tensor | None, ...], dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """d(metric of the receiving rows)/d(activation) at every hook of `hooks` (None where the metric does not
    depend on it), each hook's (source, receiving) activations and the [pairs, 2] (clean, corrupted) metrics.
    `tokens`: [2 * pairs, n] rows clean, corrupted, ...; the receiving row of each pair is `grad_row`."""
    n_pairs = len(metrics)
    split = n_pairs * int(tokens.shape[-1]) >= SPLIT_MIN_TOKENS
    leaves: dict[str, torch.Tensor] = {}
    seen: dict[str, torch.Tensor] = {}
    source_seen: dict[str, torch.Tensor] = {}

    def capture(name: str) -> Callable[..., None]:
        def hook(act: torch.Tensor, hook: Any = None) -> None:
            source_seen[name] = act.detach()

        return hook

    def make_leaf(name: str) -> Callable[..., torch.Tensor]:
        def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            leaf = torch.zeros_like(act, requires_grad=True)
            leaves[name], seen[name] = leaf, act.detach()
            return act + leaf

        return hook

    def check(found: dict[str, torch.Tensor]) -> None:
        missing = [name for name in hooks if name not in found]
        if missing:
            raise LensError(
                f"component={grid.component!r}: the hook point {missing[0]} did not fire on this model, so "
                "it cannot be attributed; use patch_sweep or another component."
            )

    readouts = [Readout(tc, metric) if isinstance(metric, AnswerMetric) else None for metric in metrics]

    def read(resid: torch.Tensor, owners: Sequence[int]) -> torch.Tensor:
        """Each row's metric of its last position, through the one readout path: the unembedding of the last
        position only (of the answer's two columns for a logit difference), not of every position."""
        values = []
        for row, owner in enumerate(owners):
            last, reader = resid[row : row + 1, -1], readouts[owner]
            values.append(reader.from_resid(last) if reader is not None else metrics[owner](readout(tc, last)))
        return torch.cat(values)

    metric_rows = torch.zeros(n_pairs, 2, dtype=torch.float32)
    pair_rows = list(range(n_pairs))
    if split:
        with torch.no_grad():
            source = final_residual(tc, tokens[1 - grad_row :: 2], [(name, capture(name)) for name in hooks])
        check(source_seen)
        metric_rows[:, 1 - grad_row] = read(source, pair_rows).float().cpu()
        run = tokens[grad_row::2]
    else:
        run = tokens
    with torch.enable_grad():
        resid = final_residual(tc, run, [(name, make_leaf(name)) for name in hooks])
        check(leaves)
        if split:
            receiving = read(resid, pair_rows)
            grads = torch.autograd.grad(receiving.sum(), [leaves[name] for name in hooks], allow_unused=True)
            metric_rows[:, grad_row] = receiving.detach().float().cpu()
        else:
            both = read(resid, [k for k in pair_rows for _ in range(2)]).view(n_pairs, 2)  # [pairs, (clean, corr.)]
            grads = torch.autograd.grad(both[:, grad_row].sum(), [leaves[name] for name in hooks], allow_unused=True)
            metric_rows = both.detach().float().cpu()
            grads = tuple(None if grad is None else grad[grad_row::2] for grad in grads)
    if split:
        acts = {name: (source_seen[name], seen[name]) for name in hooks}
    else:
        acts = {name: (seen[name][1 - grad_row :: 2], seen[name][grad_row::2]) for name in hooks}
    return grads, acts, metric_rows


def estimate_effects(
    tc: ToolContext, pairs: Sequence[PairRun], grid: CellGrid, direction: str, counter: ProgressCounter | None = None
) -> Estimates:
    """The gradient pass: every pair's clean and corrupted prompts as rows of batched forward and backward
    passes (pairs of one length share a batch); returns per-pair, per-cell estimates."""
    n_cells_per_layer = len(grid.cells) // len(grid.layers)
    values = torch.zeros(len(pairs), len(grid.cells), dtype=torch.float32)
    clean_metrics = torch.zeros(len(pairs), dtype=torch.float32)
    corrupted_metrics = torch.zeros(len(pairs), dtype=torch.float32)
    hooks = [grid.hook(layer) for layer in grid.layers]
    grad_row = 1 if direction == "denoise" else 0  # the run the patch goes into: its gradient counts
    passes = 0

    by_length: dict[int, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_length.setdefault(int(pair.tokens.shape[-1]), []).append(index)

    for n_tokens, members in by_length.items():
        # Backward keeps every layer's activations: about n_layers forward footprints per row, and the logits.
        per_row = sequence_bytes(tc.view, n_tokens, n_tokens, logits_tokens=2 * n_tokens) * tc.view.n_layers
        plan = plan_rows(
            tc.limits,
            pairs[members[0]].tokens.device,
            n_tokens,
            per_row,
            wanted=2 * len(members),
            # forward and backward of every row (about 3 forwards), or with the source rows apart, a forward of
            # the source row and a forward and backward of the receiving row: about 2 forwards per row
            seconds_per_row=(2 if len(members) * n_tokens >= SPLIT_MIN_TOKENS else 3) * seconds_per_row(tc, n_tokens),
        )
        pairs_per_batch = max(1, plan.rows // 2)

        def run_batch(batch: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
            tokens = torch.cat([pairs[i].tokens for i in batch], dim=0)  # rows: clean, corrupted, clean, ...
            grads, acts, metrics = _gradient_pass(tc, grid, hooks, tokens, [pairs[i].metric for i in batch], grad_row)
            out = torch.zeros(len(batch), len(grid.layers) * n_cells_per_layer, dtype=torch.float32)
            with torch.no_grad():
                for index, (name, grad) in enumerate(zip(hooks, grads, strict=True)):
                    if grad is None:  # the metric does not depend on this activation at all
                        continue
                    source, target = acts[name]
                    contribution = grad.float() * (source.float() - target.float())
                    out[:, index * n_cells_per_layer : (index + 1) * n_cells_per_layer] = _reduce(
                        grid, contribution
                    ).cpu()
            return out, metrics.detach().float().cpu()

        for batch, (batch_values, batch_metrics) in iter_batched(
            members, run_batch, pairs_per_batch, device=pairs[members[0]].tokens.device, counter=counter
        ):
            passes += 1
            values[list(batch)] = batch_values
            clean_metrics[list(batch)] = batch_metrics[:, 0]
            corrupted_metrics[list(batch)] = batch_metrics[:, 1]
    return Estimates(values, clean_metrics, corrupted_metrics, passes)


@dataclass
class Exact:
    """Exact patching of chosen cells on one pair (the patch_sweep engine)."""

    values: torch.Tensor
    """Metric of the patched run per cell, raw."""
    clean_metric: float
    corrupted_metric: float
    passes: int
    notes: list[str]


def exact_effects(
    tc: ToolContext, pair: PairRun, grid: CellGrid, cells: Sequence[Cell], direction: str, counter: ProgressCounter
) -> Exact:
    """patch_sweep's engine on `cells` only: denoising patches the clean activation into the corrupted run; noising
    runs the engine on the swapped pair (the corrupted activation into the clean run)."""
    clean, corrupted = pair.tokens[0:1], pair.tokens[1:2]
    ordered = torch.cat([clean, corrupted] if direction == "denoise" else [corrupted, clean], dim=0)
    hooks = list(dict.fromkeys(grid.hook(layer) for layer, _, _ in cells))
    n_tokens = int(pair.tokens.shape[-1])
    with torch.no_grad():
        engine = PatchEngine(tc, ordered, Readout(tc, pair.metric), hooks)
        engine.prepare()
        patches = [
            make_patch(
                layer,
                grid.hook(layer),
                engine.clean_cache[grid.hook(layer)],
                engine.cache[grid.hook(layer)],
                grid.position_in(pos, n_tokens),
                head,
            )
            for layer, head, pos in cells
        ]
        values = engine.run(patches, counter)
    source, target = engine.clean_value, engine.metric_value
    clean_metric, corrupted_metric = (source, target) if direction == "denoise" else (target, source)
    return Exact(values, clean_metric, corrupted_metric, engine.stats.forward_passes, list(engine.stats.notes))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None for fewer than 3 values or a constant side."""
    if len(x) < 3:
        return None

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / math.sqrt(vx * vy)


def classify(estimate: float, exact: float, floor: float) -> Problem | None:
    """How the estimate is wrong, if it is: values both under `floor` in size agree."""
    if abs(estimate) < floor and abs(exact) < floor:
        return None
    if estimate * exact < 0 or (exact == 0) != (estimate == 0):
        return "sign"
    if abs(estimate - exact) > 0.5 * abs(exact):
        return "magnitude"
    return None


def agreement(estimates: Sequence[float], exacts: Sequence[float], problems: Sequence[Problem | None]) -> RankAgreement:
    n = len(estimates)
    k = max(1, n // 2)
    by_estimate = set(sorted(range(n), key=lambda i: abs(estimates[i]), reverse=True)[:k])
    by_exact = set(sorted(range(n), key=lambda i: abs(exacts[i]), reverse=True)[:k])
    return RankAgreement(
        n_verified=n,
        spearman=spearman(estimates, exacts),
        top_k=k,
        top_k_overlap=len(by_estimate & by_exact),
        sign_wrong=sum(1 for p in problems if p == "sign"),
        magnitude_wrong=sum(1 for p in problems if p == "magnitude"),
    )


def _shape_grid(grid: CellGrid, flat: list[float]) -> tuple[list[str], list[Any]]:
    """(axis names, nested grid) of a CellGrid's flat layer-major values."""
    n_heads = len(grid.heads) if grid.heads is not None else None
    n_pos = len(grid.positions) if grid.component != "heads" and grid.positions is not None else None
    axes = ["layer"] + (["head"] if n_heads is not None else []) + (["position"] if n_pos is not None else [])
    return axes, shape_grid(flat, len(grid.layers), n_heads, n_pos)


NARROW = (
    "fewer layers=[...] and/or positions=[...], fewer pairs or a smaller verify_top; or component='heads' first "
    "to find the layers that matter"
)


def _estimate_cost(tc: ToolContext, grid: CellGrid, runs: Sequence[PairRun], verify_top: int) -> Cost:
    """The call's cost before any forward pass; refuses (LensError) over the cell cap or any cap of core.cost.
    Gradient pass: every prompt forward and backward. Verification, per pair: the engine's clean and corrupted
    run plus one patched row per verified cell, about half the blocks each, and only the positions from the
    pair's first differing token on (the engine reuses the clean run before it)."""
    lengths = [int(run.tokens.shape[-1]) for run in runs]
    n_cells, n_pairs = len(grid.cells), len(lengths)
    shape = " x ".join(
        f"{len(axis)} {name}"
        for axis, name in ((grid.layers, "layers"), (grid.heads, "heads"), (grid.positions, "positions"))
        if axis
    )
    if n_cells > tc.limits.max_sweep_cells:
        raise LensError(
            f"the grid has {n_cells} cells ({shape}), over the cap max_sweep_cells={tc.limits.max_sweep_cells} "
            "(LENS_MCP_MAX_SWEEP_CELLS); narrow it with layers=[...] and/or positions=[...]."
        )
    n_verify = min(verify_top, n_cells)
    grids = 4 if n_pairs > 1 else 1  # the mean, and the spread's std, min and max
    overhead = 600 + 30 * max(lengths) + 250 * (TOP_CELLS + n_verify) + 80 * n_pairs * (n_pairs > 1)
    late = sum(
        1.0 - _first_token_difference(run.tokens) / max(1, length) for run, length in zip(runs, lengths, strict=True)
    )
    work = Work(
        rows=2 * n_pairs + (2 * n_pairs + math.ceil(late * n_verify / 2) if n_verify else 0),
        tokens_per_row=max(lengths),
        backward_rows=2 * n_pairs,
        cells=n_cells,
        # a grid over the response cap comes back sparse or summarized (fit_grid), so it is never refused for size
        result_chars=min(tc.limits.max_response_chars, grid_chars(grids * n_cells, overhead)),
    )
    cost = estimate(tc, work)
    enforce(tc, cost, NARROW)
    return cost


def _first_token_difference(tokens: torch.Tensor) -> int:
    """The first position where a pair's clean and corrupted tokens differ (0 when their lengths differ)."""
    if tokens.shape[0] < 2:
        return 0
    differs = torch.nonzero(tokens[0] != tokens[1])
    return int(differs[0, 0]) if len(differs) else int(tokens.shape[-1])


def attribution_patch(
    tc: ToolContext,
    clean_prompt: CleanPrompt = None,
    corrupted_prompt: CorruptedPrompt = None,
    answer: Answer = None,
    wrong_answer: WrongAnswer = None,
    component: Annotated[
        Component,
        Field(
            description="As patch_sweep: resid_pre/resid_mid/resid_post/attn_out/mlp_out (layer x position), "
            "heads (layer x head, all positions), heads_by_pos (layer x head x position)"
        ),
    ] = "heads",
    layers: SweepLayers = None,
    positions: SweepPositions = None,
    metric: PatchMetric = "logit_diff",
    normalize: Normalize = True,
    verify_top: Annotated[
        int, Field(description="Patch this many cells (largest |estimate|) exactly to check the estimate; 0 = none")
    ] = 10,
    pairs: PairsArgument = None,
    direction: PatchDirection = "denoise",
    dry_run: DryRun = False,
) -> AttributionPatchResult:
    """Attribution patching (AtP; Nanda, Syed et al.): a gradient estimate of every activation-patching cell from
    one batched forward and backward pass, cell = grad of the metric at the receiving run . (source - receiving
    activation). Far cheaper than patch_sweep on big grids (heads_by_pos over long prompts). The grid uses
    patch_sweep's sign and normalization, cell by cell: denoise (default) (patched - corrupted) / (clean -
    corrupted), 1 = clean behaviour restored; noise (clean - patched) / (clean - corrupted), 1 = clean behaviour
    broken; 0 = no effect; the estimated patched metric if normalize=false. Then the verify_top cells with the
    largest |estimate| are patched exactly (patch_sweep's engine): `verified` lists estimate beside exact value
    and flags a wrong sign or a magnitude off by more than half; `agreement` gives the Spearman rank correlation
    and top-k overlap. pairs=[...] runs a dataset in batched passes: each pair normalized, then the mean per cell,
    its spread, and per-pair metrics. A mostly zero grid comes back `sparse`; one over the response cap as
    top_cells and layer_max (as patch_sweep). The cost is estimated first (over the work or time cap: refused at
    once; dry_run=true returns it). Caveats: a first-order estimate; it misses or understates effects through saturated attention
    softmax and other strong nonlinearities (Kramar et al., AtP*), so a small estimate is no proof of no effect,
    and early-layer residual estimates are the least reliable. Confirm what matters with patch_sweep on the
    layers/positions it points to (or ablate_heads on the top heads)."""
    started = time.perf_counter()
    plan = plan_attribution(
        tc,
        clean_prompt,
        corrupted_prompt,
        answer,
        wrong_answer,
        component,
        layers,
        positions,
        metric,
        pairs,
        direction,
        verify_top,
    )
    cost = _estimate_cost(tc, plan.grid, plan.runs, plan.verify_top)
    if dry_run:
        return AttributionPatchResult(
            **_common_fields(tc, plan, cost),
            meaning="dry run: the cost estimate only, nothing computed",
            normalized=normalize,
            dry_run=True,
            seconds=time.perf_counter() - started,
        )
    _check_eval_mode(tc)
    run = run_attribution(tc, plan, normalize)
    return summarize_attribution(tc, plan, run, cost, started)


@dataclass
class AttributionPlan:
    """An attribution_patch call checked and encoded, before any forward pass."""

    runs: list[PairRun]
    grid: CellGrid
    lengths: list[int]
    verify_top: int
    direction: Direction
    metric: str

    @property
    def n_pairs(self) -> int:
        return len(self.runs)


@dataclass
class AttributionRun:
    """The estimates over the dataset, pooled, and the exact values of the cells verified."""

    estimated_patched: torch.Tensor
    """[pairs, cells] estimated patched metric."""
    clean: torch.Tensor
    corrupted: torch.Tensor
    pooled: Normalized
    order: list[int]
    """Cell indices, largest estimated effect first."""
    exact: list[float]
    """Exact (pooled) values of the first len(exact) cells of `order`."""
    passes: int
    notes: list[str]


def plan_attribution(
    tc: ToolContext,
    clean_prompt: str | None,
    corrupted_prompt: str | None,
    answer: str | None,
    wrong_answer: str | None,
    component: Component,
    layers: list[int] | None,
    positions: list[int] | None,
    metric: MetricName,
    pairs: object,
    direction: Direction,
    verify_top: int,
) -> AttributionPlan:
    check_direction(direction)
    items = resolve_pairs(
        tc,
        pairs,
        clean_prompt=clean_prompt,
        corrupted_prompt=corrupted_prompt,
        answer=answer,
        wrong_answer=wrong_answer,
    )
    n_pairs = len(items)
    free_lengths = component == "heads" or positions_from_end(positions)
    encoded = encode_pairs(tc, items, fixed_positions=not free_lengths)
    runs = []
    for index, item in enumerate(items):
        try:
            assert item.answer is not None  # resolve_pairs checked it
            pair_metric = resolve_metric(tc, item.answer, item.wrong_answer, metric, require_wrong=True)
        except LensError as exc:
            raise LensError(f"{pair_label(index, n_pairs)}{exc}") from None
        runs.append(PairRun(encoded[index], pair_metric))
    lengths = [int(tokens.shape[-1]) for tokens in encoded]
    grid = resolve_grid(tc, component, layers, positions, lengths)
    verify_top = check_range(verify_top, 0, tc.limits.max_top_k, "verify_top", "0 skips the exact check.")
    return AttributionPlan(runs, grid, lengths, verify_top, direction, metric)


def _common_fields(tc: ToolContext, plan: AttributionPlan, cost: Cost) -> dict[str, Any]:
    """The fields a dry run and a computed result share."""
    grid, n_pairs, metric, component, direction = (
        plan.grid,
        plan.n_pairs,
        plan.metric,
        plan.grid.component,
        plan.direction,
    )
    cells = grid.cells
    runs = plan.runs
    answer_metric = runs[0].metric
    tokens = runs[0].tokens
    clean_strings, corrupted_strings = token_strings(tc, tokens[0]), token_strings(tc, tokens[1])
    axes = _shape_grid(grid, [0.0] * len(cells))[0]
    return dict(
        component=component,
        direction=direction,
        metric=f"{answer_metric.description if n_pairs == 1 else metric} at the last position",
        cost=cost,
        clean_tokens=clean_strings,
        corrupted_tokens=corrupted_strings,
        axes=axes,
        layers=grid.layers,
        positions=grid.positions,
        heads=grid.heads,
        n_cells=len(cells),
    )


def run_attribution(tc: ToolContext, plan: AttributionPlan, normalize: bool) -> AttributionRun:
    """One batched gradient pass per length group for the estimates, then the exact engine on the verify_top
    cells with the largest estimated effect."""
    runs, grid, direction = plan.runs, plan.grid, plan.direction
    cells = grid.cells
    notes: list[str] = []
    n_verify = min(plan.verify_top, len(cells))
    counter = ProgressCounter(tc.progress, total=plan.n_pairs * (1 + n_verify), unit="steps")
    estimates = estimate_effects(tc, runs, grid, direction, counter)
    clean_values, corrupted_values = estimates.clean_metrics.double(), estimates.corrupted_metrics.double()
    receiving = corrupted_values if direction == "denoise" else clean_values
    estimated_patched = receiving[:, None] + estimates.values.double()  # [pairs, cells]
    pooled = normalize_pooled(estimated_patched, clean_values, corrupted_values, direction, normalize)
    if pooled.note:
        notes.append(pooled.note)
    # Rank by the estimated size of the effect: |mean normalized estimate| (or |mean raw change|).
    size = (pooled.mean if pooled.normalized else (estimated_patched - receiving[:, None]).mean(dim=0)).abs()
    order = torch.argsort(torch.nan_to_num(size, nan=-1.0), descending=True, stable=True).tolist()
    passes = estimates.passes
    exact_mean: list[float] = []
    if n_verify:
        chosen = order[:n_verify]
        exacts = []
        for run in runs:
            exact = exact_effects(tc, run, grid, [cells[i] for i in chosen], direction, counter)
            passes += exact.passes
            notes.extend(note for note in exact.notes if note not in notes)
            exacts.append(exact)
        # Normalized with the engine's own clean and corrupted runs, exactly as patch_sweep normalizes.
        exact_mean = normalize_pooled(
            torch.stack([exact.values for exact in exacts]),
            torch.tensor([exact.clean_metric for exact in exacts]),
            torch.tensor([exact.corrupted_metric for exact in exacts]),
            direction,
            pooled.normalized,
        ).mean.tolist()
    return AttributionRun(estimated_patched, clean_values, corrupted_values, pooled, order, exact_mean, passes, notes)


def summarize_attribution(
    tc: ToolContext, plan: AttributionPlan, run: AttributionRun, cost: Cost, started: float
) -> AttributionPatchResult:
    grid, n_pairs, direction = plan.grid, plan.n_pairs, plan.direction
    cells = grid.cells
    answer_metric = plan.runs[0].metric
    common = _common_fields(tc, plan, cost)
    clean_strings, corrupted_strings = common["clean_tokens"], common["corrupted_tokens"]
    notes = (["clean_tokens, corrupted_tokens and the tokens of cells are pair 0's"] if n_pairs > 1 else []) + run.notes
    do_normalize = run.pooled.normalized
    clean_values, corrupted_values = run.clean, run.corrupted
    receiving = corrupted_values if direction == "denoise" else clean_values
    stats = spread(run.pooled.per_pair)
    flat = stats.mean.tolist()
    order = run.order

    def tokens_at(position: int | None) -> dict[str, str | None]:
        if position is None:
            return {"clean_token": None, "corrupted_token": None}
        absolute = grid.position_in(position, len(clean_strings))
        assert absolute is not None
        return {"clean_token": clean_strings[absolute], "corrupted_token": corrupted_strings[absolute]}

    top = [
        PatchCell(layer=cells[i][0], head=cells[i][1], position=cells[i][2], value=flat[i], **tokens_at(cells[i][2]))
        for i in order[:TOP_CELLS]
    ]
    verified: list[VerifiedCell] = []
    agreement_result = None
    if run.exact:
        chosen = order[: len(run.exact)]
        exact_mean = run.exact
        # Compare changes of the metric (the normalized grid already is one; raw values are levels).
        offset = 0.0 if do_normalize else float(receiving.mean())
        estimate_changes = [flat[i] - offset for i in chosen]
        exact_changes = [value - offset for value in exact_mean]
        mean_span = abs(pooled_gap(clean_values, corrupted_values))
        floor = AGREEMENT_FLOOR * (1.0 if do_normalize else max(mean_span, 1e-6))
        problems: list[Problem | None] = [
            classify(e, x, floor) for e, x in zip(estimate_changes, exact_changes, strict=True)
        ]
        verified = [
            VerifiedCell(
                layer=cells[i][0],
                head=cells[i][1],
                position=cells[i][2],
                estimate=flat[i],
                exact=exact_mean[k],
                problem=problems[k],
                **tokens_at(cells[i][2]),
            )
            for k, i in enumerate(chosen)
        ]
        agreement_result = agreement(estimate_changes, exact_changes, problems)
    shaped = _shape_grid(grid, flat)[1]
    spread_result = None
    if n_pairs > 1:
        spread_result = GridSpread(
            n_pairs=n_pairs,
            std=_shape_grid(grid, stats.std.tolist())[1],
            min=_shape_grid(grid, stats.min.tolist())[1],
            max=_shape_grid(grid, stats.max.tolist())[1],
        )
    result = AttributionPatchResult(
        **common,
        meaning=patching_meaning(
            direction,
            do_normalize,
            answer_metric.description if n_pairs == 1 else f"{answer_metric.name} of each pair's answers",
            n_pairs,
            estimated=True,
        ),
        normalized=do_normalize,
        clean_metric=float(clean_values.mean()),
        corrupted_metric=float(corrupted_values.mean()),
        pair_metrics=[
            PairMetrics(index=i, clean_metric=float(clean_values[i]), corrupted_metric=float(corrupted_values[i]))
            for i in range(n_pairs)
        ]
        if n_pairs > 1
        else None,
        grid=shaped,
        spread=spread_result,
        top_cells=top,
        verified=verified,
        agreement=agreement_result,
        forward_passes=run.passes,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
    spread_flats = None
    if n_pairs > 1:
        spread_flats = {"std": stats.std.tolist(), "min": stats.min.tolist(), "max": stats.max.tolist()}
    return fit_grid(
        result,
        flat,
        spread_flats,
        tc.limits.max_response_chars,
        omitted="exactly 0 (the clean and corrupted activations are equal there, or the metric does not depend on "
        "them)",
        narrow=NARROW,
    )
