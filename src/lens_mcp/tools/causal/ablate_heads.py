"""ablate_heads: zero- or mean-ablate attention heads and measure the answer before and after."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.patching import AblateHeadsResult, HeadEffect
from lens_mcp.tools.core.batching import ProgressCounter, iter_batched, plan_rows, sequence_bytes
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import seconds_per_row
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.metrics import metric_warnings, resolve_metric
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import resolve_head, resolve_layer

MODES = ("zero", "mean")


def resolve_heads(tc: ToolContext, heads: object) -> list[tuple[int, int]]:
    """[[layer, head], ...] checked against the model, deduplicated, in the order given."""
    example = "e.g. heads=[[1, 2], [0, 3]]"
    if not isinstance(heads, (list, tuple)) or len(heads) == 0:
        raise LensError(f"heads: expected a non-empty list of [layer, head] pairs, {example}.")
    resolved: list[tuple[int, int]] = []
    for index, pair in enumerate(heads):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise LensError(f"heads[{index}]={pair!r}: each entry must be a [layer, head] pair, {example}.")
        layer = resolve_layer(pair[0], int(tc.cfg.n_layers), f"heads[{index}][0] (layer)")
        head = resolve_head(pair[1], int(tc.cfg.n_heads), f"heads[{index}][1] (head)")
        if (layer, head) not in resolved:
            resolved.append((layer, head))
    return resolved


def ablation_hooks(
    rows: Sequence[Sequence[tuple[int, int]]],
    replacement: Callable[[int, int], Any],
) -> list[tuple[str, Callable[..., torch.Tensor]]]:
    """Hooks on hook_z that, in batch row r, replace each head in rows[r] by replacement(layer, head)
    (0 or a [d_head] mean) at every position."""
    by_layer: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row, heads in enumerate(rows):
        for layer, head in heads:
            by_layer[layer].append((row, head))

    def make(layer: int, entries: list[tuple[int, int]]) -> Callable[..., torch.Tensor]:
        def hook(z: torch.Tensor, hook: Any = None) -> torch.Tensor:
            for row, head in entries:
                z[row, :, head] = replacement(layer, head)
            return z

        return hook

    return [(hook_name("z", layer), make(layer, entries)) for layer, entries in by_layer.items()]


def ablate_heads(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The prompt, e.g. 'The Eiffel Tower is in the city of'")],
    heads: Annotated[list[list[int]], Field(description="Heads to ablate as [[layer, head], ...], e.g. [[1, 2]]")],
    answer: Annotated[str, Field(description="The expected next token, one token (e.g. ' Paris')")],
    wrong_answer: Annotated[
        str | None,
        Field(
            description="A competing token (e.g. ' Rome'): the metric is then "
            "logit(answer) - logit(wrong_answer); without it, "
            "logit(answer)"
        ),
    ] = None,
    mode: Annotated[
        Literal["zero", "mean"],
        Field(description="zero: set the head's output z to 0; mean: to its mean over the prompt's positions"),
    ] = "zero",
    individually: Annotated[bool, Field(description="Also ablate each head on its own (one batched pass)")] = False,
) -> AblateHeadsResult:
    """Ablate attention heads (their output z, at every position) and measure the answer at the last position
    before and after: metric = logit(answer) - logit(wrong_answer) (or logit(answer) alone), plus the answer's
    probability. mode='zero' sets z to 0; mode='mean' replaces it with the head's mean z over the prompt's
    positions (computed on the unablated run). All listed heads are ablated together; individually=true also
    gives each head's own effect (metric with only that head ablated, minus metric before; most negative
    first = heads the answer depends on most). Find candidate heads with patch_sweep(component='heads')."""
    if mode not in MODES:
        raise LensError(f"mode={mode!r} is not one of {', '.join(MODES)}.")
    head_list = resolve_heads(tc, heads)
    tokens = encode(tc, prompt, "prompt")
    answer_metric = resolve_metric(tc, answer, wrong_answer, "logit_diff")
    layers = sorted({layer for layer, _ in head_list})
    wanted = {hook_name("z", layer) for layer in layers}
    n_tokens = int(tokens.shape[-1])

    rows: list[list[tuple[int, int]]] = [list(head_list)]
    if individually:
        rows += [[pair] for pair in head_list]
    counter = ProgressCounter(tc.progress, total=len(rows), unit="ablated runs")

    def measure(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last = logits[:, -1].float()
        return answer_metric(last), last.log_softmax(dim=-1)[:, answer_metric.answer_id].exp()

    with torch.no_grad():
        logits, cache = tc.bridge.run_with_cache(tokens, names_filter=lambda name: name in wanted)
        before, prob_before = measure(logits)
        warnings = metric_warnings(tc, answer_metric, logits[0, -1])
        del logits
        means = {(layer, head): cache[hook_name("z", layer)][0, :, head].mean(dim=0) for layer, head in head_list}
        del cache

        def replacement(layer: int, head: int) -> Any:
            return 0.0 if mode == "zero" else means[(layer, head)]

        plan = plan_rows(
            tc.limits,
            tokens.device,
            n_tokens,
            sequence_bytes(tc.cfg, n_tokens, logits_tokens=n_tokens),
            wanted=len(rows),
            seconds_per_row=seconds_per_row(tc, n_tokens),
        )

        def run_batch(batch: Sequence[list[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor]:
            batch_logits = tc.bridge.run_with_hooks(
                tokens.expand(len(batch), -1), fwd_hooks=ablation_hooks(batch, replacement)
            )
            return measure(batch_logits)

        metrics: list[float] = []
        probs: list[float] = []
        for _batch, (metric_values, prob_values) in iter_batched(
            rows, run_batch, plan.rows, device=tokens.device, counter=counter
        ):
            metrics += metric_values.tolist()
            probs += prob_values.tolist()

    metric_before = float(before[0])
    individual = None
    if individually:
        individual = [
            HeadEffect(layer=layer, head=head, metric=value, effect=value - metric_before)
            for (layer, head), value in zip(head_list, metrics[1:], strict=True)
        ]
        individual.sort(key=lambda effect: effect.effect)
    return AblateHeadsResult(
        tokens=token_strings(tc, tokens[0]),
        mode=mode,
        metric=f"{answer_metric.description} at the last position",
        heads=head_list,
        metric_before=metric_before,
        metric_after=metrics[0],
        effect=metrics[0] - metric_before,
        prob_before=float(prob_before[0]),
        prob_after=probs[0],
        individual=individual,
        warnings=warnings,
    )
