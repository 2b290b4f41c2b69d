"""patch_sweep: activation patching from a clean into a corrupted prompt, one cell at a time, batched."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.patching import Component, PatchCell, PatchSweepResult
from lens_mcp.tools.causal.patching_engine import Patch, PatchEngine, Readout, make_patch
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.metrics import AnswerMetric, MetricName, metric_warnings, resolve_metric
from lens_mcp.tools.core.tokens import encode_pair, token_strings
from lens_mcp.tools.core.validation import resolve_layers, resolve_positions

COMPONENT_FAMILY = {
    "resid_pre": "resid_pre",
    "resid_mid": "resid_mid",
    "resid_post": "resid_post",
    "attn_out": "attn_out",
    "mlp_out": "mlp_out",
    "heads": "z",
    "heads_by_pos": "z",
}
TOP_CELLS = 10


def _check_component(tc: ToolContext, component: str) -> str:
    if component not in COMPONENT_FAMILY:
        raise LensError(f"component={component!r} is not one of {', '.join(COMPONENT_FAMILY)}.")
    family = COMPONENT_FAMILY[component]
    if hook_name(family, 0) not in tc.bridge.hook_dict:
        available = [c for c, f in COMPONENT_FAMILY.items() if hook_name(f, 0) in tc.bridge.hook_dict]
        raise LensError(
            f"component={component!r}: this model has no {hook_name(family, 0)} hook point "
            f"(e.g. an attention-only model has no MLP); use one of {', '.join(available)}."
        )
    return family


@dataclass
class Sweep:
    """The raw outcome of a sweep (unrounded), for patch_sweep and for tests against TransformerLens."""

    values: torch.Tensor
    """Patched metric per cell (not normalized), in the order of `cells`."""
    cells: list[tuple[int, int | None, int | None]]
    """(layer, head, position) of each cell: layer-major, then head, then position."""
    clean_metric: float
    corrupted_metric: float
    layers: list[int]
    heads: list[int] | None
    positions: list[int] | None
    tokens: torch.Tensor
    metric: AnswerMetric
    engine: PatchEngine


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
) -> Sweep:
    """Validate the arguments and run every cell of the sweep; see patch_sweep."""
    family = _check_component(tc, component)
    tokens = encode_pair(tc, clean_prompt, corrupted_prompt, "clean_prompt", "corrupted_prompt")
    answer_metric = resolve_metric(tc, answer, wrong_answer, metric, require_wrong=True)
    n_layers, n_tokens, n_heads = int(tc.cfg.n_layers), int(tokens.shape[-1]), int(tc.cfg.n_heads)
    layer_list = resolve_layers(layers, n_layers)
    by_head = component in ("heads", "heads_by_pos")
    if component == "heads" and positions is not None:
        raise LensError(
            "positions= does not apply to component='heads' (it patches every position of a head); "
            "use component='heads_by_pos' to patch one position at a time."
        )
    position_list = None if component == "heads" else resolve_positions(positions, n_tokens)
    head_list = list(range(n_heads)) if by_head else None
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

    hooks = {layer: hook_name(family, layer) for layer in layer_list}
    readout = Readout(tc, answer_metric)
    counter = ProgressCounter(tc.progress, total=n_cells, unit="cells patched")
    with torch.no_grad():
        engine = PatchEngine(tc, tokens, readout, list(hooks.values()))
        engine.prepare()
        tc.progress(0, n_cells, "clean and corrupted runs done")

        cells: list[tuple[int, int | None, int | None]] = []  # (layer, head, position)
        patches: list[Patch] = []
        for layer in layer_list:
            hook = hooks[layer]
            for head in head_list or [None]:
                for position in position_list or [None]:
                    cells.append((layer, head, position))
                    patches.append(
                        make_patch(layer, hook, engine.clean_cache[hook], engine.cache[hook], position, head)
                    )
        values = engine.run(patches, counter)
    return Sweep(
        values,
        cells,
        engine.clean_value,
        engine.metric_value,
        layer_list,
        head_list,
        position_list,
        tokens,
        answer_metric,
        engine,
    )


def patch_sweep(
    tc: ToolContext,
    clean_prompt: Annotated[
        str, Field(description="Prompt whose activations are patched in, e.g. 'The Eiffel Tower is in the city of'")
    ],
    corrupted_prompt: Annotated[
        str,
        Field(
            description="Prompt that receives them; must tokenize to the same "
            "length, e.g. 'The Colosseum is in the city of'"
        ),
    ],
    answer: Annotated[str, Field(description="The clean prompt's answer, one token (e.g. ' Paris')")],
    wrong_answer: Annotated[
        str | None,
        Field(description="The corrupted prompt's answer, one token (e.g. ' Rome'); needed for metric='logit_diff'"),
    ] = None,
    component: Annotated[
        Component,
        Field(
            description="What to patch: resid_pre/resid_mid/resid_post/attn_out/"
            "mlp_out (layer x position grid), heads (each head's z at "
            "all positions: layer x head), heads_by_pos (layer x head x "
            "position)"
        ),
    ] = "resid_pre",
    layers: Annotated[
        list[int] | None, Field(description="Layers to sweep (null: all; negative counts from the end)")
    ] = None,
    positions: Annotated[
        list[int] | None,
        Field(description="Positions to sweep (null: all; BOS is 0, -1 the last); not used by component='heads'"),
    ] = None,
    metric: Annotated[
        MetricName,
        Field(
            description="logit_diff: logit(answer) - logit(wrong_answer); prob / "
            "logprob: of answer. At the last position"
        ),
    ] = "logit_diff",
    normalize: Annotated[
        bool,
        Field(
            description="Report (patched - corrupted) / (clean - corrupted): 0 = no "
            "effect, 1 = clean behaviour fully restored"
        ),
    ] = True,
) -> PatchSweepResult:
    """Activation patching: run the corrupted prompt with ONE activation at a time restored from the clean
    run and measure how much of the clean behaviour each restores. Grid: normalized (0 = no effect, 1 = full
    restoration, negative = pushes further toward the corrupted answer) or the raw metric; the clean and
    corrupted metrics are always reported. Components: resid_pre/resid_mid/resid_post/attn_out/mlp_out give a
    layer x position grid; heads patches each head's output z at all positions (layer x head); heads_by_pos
    gives layer x head x position (narrow it with layers=/positions=). Prompts must tokenize to the same
    length (call tokenize). Exact (equals TransformerLens's patching functions) and batched: far faster than
    one forward pass per cell. Progress is reported per batch; the call can be cancelled. Next: zoom in with
    heads_by_pos on the layers that matter, or ablate_heads on the top heads."""
    started = time.perf_counter()
    sweep = run_sweep(tc, clean_prompt, corrupted_prompt, answer, wrong_answer, component, layers, positions, metric)
    values, engine, cells = sweep.values, sweep.engine, sweep.cells
    clean_value, corrupted_value = sweep.clean_metric, sweep.corrupted_metric
    layer_list, head_list, position_list = sweep.layers, sweep.heads, sweep.positions
    n_heads, n_cells, tokens, answer_metric = int(tc.cfg.n_heads), len(cells), sweep.tokens, sweep.metric
    notes = list(engine.stats.notes)
    span = clean_value - corrupted_value
    do_normalize = normalize
    if normalize and abs(span) < 1e-6:
        do_normalize = False
        notes.append("clean and corrupted metrics are equal, so the grid cannot be normalized: raw metric shown")
    shown = (values - corrupted_value) / span if do_normalize else values

    flat = shown.tolist()
    if component == "heads":
        axes, grid = ["layer", "head"], [flat[i * n_heads : (i + 1) * n_heads] for i in range(len(layer_list))]
    elif component == "heads_by_pos":
        assert position_list is not None
        n_pos = len(position_list)
        axes = ["layer", "head", "position"]
        grid = [
            [flat[(i * n_heads + h) * n_pos : (i * n_heads + h + 1) * n_pos] for h in range(n_heads)]
            for i in range(len(layer_list))
        ]
    else:
        assert position_list is not None
        n_pos = len(position_list)
        axes, grid = ["layer", "position"], [flat[i * n_pos : (i + 1) * n_pos] for i in range(len(layer_list))]

    clean_strings, corrupted_strings = token_strings(tc, tokens[0]), token_strings(tc, tokens[1])
    order = sorted(range(len(cells)), key=lambda i: abs(flat[i]), reverse=True)[:TOP_CELLS]
    top = []
    for i in order:
        layer, head, position = cells[i]
        top.append(
            PatchCell(
                layer=layer,
                head=head,
                position=position,
                value=flat[i],
                clean_token=None if position is None else clean_strings[position],
                corrupted_token=None if position is None else corrupted_strings[position],
            )
        )
    return PatchSweepResult(
        component=component,
        metric=f"{answer_metric.description} at the last position",
        normalized=do_normalize,
        clean_tokens=clean_strings,
        corrupted_tokens=corrupted_strings,
        clean_metric=clean_value,
        corrupted_metric=corrupted_value,
        axes=axes,
        layers=layer_list,
        positions=position_list,
        heads=head_list,
        grid=grid,
        top_cells=top,
        n_cells=n_cells,
        forward_passes=engine.stats.forward_passes,
        skipped_cells=engine.stats.skipped,
        method=engine.stats.method,
        seconds=time.perf_counter() - started,
        notes=notes,
        warnings=metric_warnings(tc, answer_metric, engine.last_logits[0], engine.last_logits[1]),
    )
