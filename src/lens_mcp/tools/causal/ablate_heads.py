"""ablate_heads: ablate attention heads (zero, mean, resample, corrupted mean) and measure a metric before and
after, on one prompt or a prompt dataset (rows of every pair and head set batched together)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.common import Cost
from lens_mcp.schemas.patching import AblateHeadsResult, AblationMode, AblationPairResult, EffectSpread, HeadEffect
from lens_mcp.tools.core.ablation import ALL_MODES, ablation_hooks, resolve_heads
from lens_mcp.tools.core.arguments import DryRun
from lens_mcp.tools.core.batching import ProgressCounter, iter_batched, plan_rows, sequence_bytes
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate, seconds_per_row
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.metrics import AnswerMetric, metric_warnings, resolve_metric
from lens_mcp.tools.core.pairs import PairsArgument, pair_label, positions_from_end, resolve_pairs, spread
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_positions, resolve_positions

AblationMetric = Literal["logit_diff", "logprob", "prob", "loss"]
ABLATION_METRICS = ("logit_diff", "logprob", "prob", "loss")


@dataclass
class _Prompt:
    """One prompt of the call (a pair's clean prompt, or its corrupted one) and what it needs."""

    tokens: torch.Tensor
    """[1, n]"""
    metric: AnswerMetric | None
    loss_positions: list[int] | None


def _loss(logits: torch.Tensor, tokens: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Mean next-token loss (nats) per row: -log p(token[p] | tokens[:p]) averaged over `positions` (p >= 1)."""
    index = torch.tensor(positions, device=logits.device)
    logprobs = logits[:, index - 1].float().log_softmax(dim=-1)
    targets = tokens[:, index].to(logits.device).expand(logits.shape[0], -1)
    return -logprobs.gather(-1, targets[..., None])[..., 0].mean(dim=-1)


def _measure(prompt: _Prompt, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The metric of each row of `logits` [rows, pos, vocab] (of this prompt), and the answer's probability."""
    if prompt.metric is None:
        assert prompt.loss_positions is not None
        return _loss(logits, prompt.tokens, prompt.loss_positions), None
    last = logits[:, -1].float()
    return prompt.metric(last), last.log_softmax(dim=-1)[:, prompt.metric.answer_id].exp()


def ablate_heads(
    tc: ToolContext,
    prompt: Annotated[
        str | None, Field(description="The prompt, e.g. 'The Eiffel Tower is in the city of' (or pass pairs)")
    ] = None,
    heads: Annotated[
        list[list[int]] | None,
        Field(description="Heads to ablate as [[layer, head], ...], e.g. [[1, 2]] (this or keep is required)"),
    ] = None,
    answer: Annotated[
        str | None, Field(description="The expected next token, one token (e.g. ' Paris'); not used by metric='loss'")
    ] = None,
    wrong_answer: Annotated[
        str | None,
        Field(
            description="A competing token (e.g. ' Rome'): metric='logit_diff' is then logit(answer) - "
            "logit(wrong_answer); without it, logit(answer)"
        ),
    ] = None,
    mode: Annotated[
        AblationMode,
        Field(
            description="zero: z = 0; mean: z = its mean over the prompt's positions; resample: z from "
            "corrupted_prompt at the same position; corrupted_mean: z = its mean over corrupted_prompt's "
            "positions (over every pair's corrupted prompt with pairs)"
        ),
    ] = "zero",
    individually: Annotated[bool, Field(description="Also ablate each head on its own (batched)")] = False,
    corrupted_prompt: Annotated[
        str | None,
        Field(description="Source of the replacement for mode='resample' (same length as prompt) / 'corrupted_mean'"),
    ] = None,
    metric: Annotated[
        AblationMetric,
        Field(
            description="logit_diff (default), logprob or prob of answer at the last position; loss: mean "
            "next-token loss (nats) over `positions`, no answer needed"
        ),
    ] = "logit_diff",
    positions: Annotated[
        list[int] | None,
        Field(
            description="metric='loss' only: positions of the predicted tokens (1.. ; negative from the end; "
            "null: every token after BOS), e.g. the repeated half of a sequence"
        ),
    ] = None,
    pairs: PairsArgument = None,
    keep: Annotated[
        list[list[int]] | None,
        Field(
            description="Instead of heads: the heads kept, as [[layer, head], ...]; every other head is ablated "
            "(a node circuit's faithfulness, e.g. keep=[[1, 2], [0, 1]])"
        ),
    ] = None,
    dry_run: DryRun = False,
) -> AblateHeadsResult:
    """Ablate attention heads (their output z, at every position) and measure the metric before and after.
    Metrics: logit_diff = logit(answer) - logit(wrong_answer) (or logit(answer) alone), logprob / prob of answer,
    all at the last position; loss = mean next-token loss in nats over `positions` (e.g. the repeated half of
    a sequence; higher = worse; no answer needed). Modes: zero; mean (the head's mean z over the prompt's
    positions); resample (z from corrupted_prompt, position by position); corrupted_mean (the head's mean z
    over corrupted_prompt's positions). All listed heads are ablated together; individually=true also gives
    each head's own effect (metric with only that head ablated minus metric before; sorted so the heads the
    behaviour depends on most come first). pairs=[{clean_prompt, corrupted_prompt, answer, wrong_answer}]: a
    dataset (the pair's clean_prompt is the prompt); metrics are means over pairs with their spread and
    per-pair values. The cost is estimated first (refused over a cap; dry_run=true returns only the
    estimate). keep=[[layer, head], ...] instead of heads: ablate every head except these (everything outside a
    head circuit). Find candidate heads with patch_sweep(component='heads')."""
    plan = plan_ablation(
        tc, prompt, heads, answer, wrong_answer, mode, individually, corrupted_prompt, metric, positions, pairs, keep
    )
    cost = ablation_cost(tc, plan)
    if dry_run:
        return AblateHeadsResult(mode=mode, metric=metric, heads=plan.heads, kept=plan.kept, cost=cost, dry_run=True)
    enforce(tc, cost, "fewer heads with individually=true, fewer pairs, or shorter prompts")
    return summarize_ablation(tc, plan, run_ablation(tc, plan), cost)


@dataclass
class AblationPlan:
    """An ablate_heads call checked and encoded, before any forward pass."""

    mode: AblationMode
    metric: AblationMetric
    heads: list[tuple[int, int]]
    kept: list[tuple[int, int]] | None
    """keep=[...]: the heads kept (heads is then every other head)."""
    sets: list[list[tuple[int, int]]]
    """Head sets ablated together, one row each: all heads, then (individually) each head alone."""
    prompts: list[_Prompt]
    corrupted: list[_Prompt | None]
    positions: list[int] | None
    dataset: bool
    """The call passed pairs=[...]."""

    @property
    def n_pairs(self) -> int:
        return len(self.prompts)

    @property
    def references(self) -> list[_Prompt]:
        """Every prompt run unablated: the prompts, then the corrupted prompts the modes read."""
        return self.prompts + [c for c in self.corrupted if c is not None]

    @property
    def hooks(self) -> set[str]:
        return {hook_name("z", layer) for layer in sorted({layer for layer, _ in self.heads})}


@dataclass
class AblationRuns:
    before: dict[int, tuple[float, float | None]]
    """Per reference prompt: (metric, answer probability) unablated."""
    after: dict[tuple[int, int], tuple[float, float | None]]
    """Per (pair, head set): (metric, answer probability) ablated."""
    warnings: list[str]


def plan_ablation(
    tc: ToolContext,
    prompt: str | None,
    heads: object,
    answer: str | None,
    wrong_answer: str | None,
    mode: AblationMode,
    individually: bool,
    corrupted_prompt: str | None,
    metric: AblationMetric,
    positions: object,
    pairs: object,
    keep: object = None,
) -> AblationPlan:
    if mode not in ALL_MODES:
        raise LensError(f"mode={mode!r} is not one of {', '.join(ALL_MODES)}.")
    if metric not in ABLATION_METRICS:
        raise LensError(f"metric={metric!r} is not one of {', '.join(ABLATION_METRICS)}.")
    kept: list[tuple[int, int]] | None = None
    if heads is None and keep is None:
        raise LensError(
            "heads is required: pass heads=[[layer, head], ...], e.g. heads=[[1, 2]] (or keep=[[layer, head], ...] "
            "to ablate every head except those)."
        )
    if heads is not None and keep is not None:
        raise LensError(
            "heads and keep are exclusive: heads=[...] ablates the listed heads, keep=[...] ablates every head "
            "except the listed ones; pass one of them."
        )
    if keep is not None:
        if individually:
            raise LensError(
                "individually=true with keep would ablate each of the other heads on its own; use heads=[...] "
                "with individually=true for per-head effects."
            )
        kept = resolve_heads(tc, keep, "keep")
        head_list = [
            (layer, head)
            for layer in range(tc.view.n_layers)
            for head in range(tc.view.n_heads)
            if (layer, head) not in set(kept)
        ]
    else:
        head_list = resolve_heads(tc, heads)
    checked_positions = check_positions(positions)
    need_corrupted = mode in ("resample", "corrupted_mean")
    if not need_corrupted and corrupted_prompt is not None and pairs is None:
        raise LensError(
            f"corrupted_prompt is only used by mode='resample' or 'corrupted_mean' (mode={mode!r}); drop it or "
            "change the mode."
        )
    if metric != "loss" and checked_positions is not None:
        raise LensError("positions= is only used by metric='loss' (the answer metrics read the last position).")
    items = resolve_pairs(
        tc,
        pairs,
        clean_prompt=prompt,
        corrupted_prompt=corrupted_prompt,
        answer=answer,
        wrong_answer=wrong_answer,
        need_corrupted=need_corrupted,
        need_answer=metric != "loss",
        prompt_arg="prompt",
    )
    n_pairs = len(items)
    prompts: list[_Prompt] = []
    corrupted: list[_Prompt | None] = []
    for index, item in enumerate(items):
        where = pair_label(index, n_pairs)
        arg = "prompt" if pairs is None else "clean_prompt"
        tokens = encode(tc, item.clean_prompt, f"{where}{arg}")
        n = int(tokens.shape[-1])
        answer_metric, loss_positions = None, None
        try:
            if metric == "loss":
                loss_positions = _loss_positions(checked_positions, n, where)
            else:
                answer_metric = resolve_metric(tc, item.answer or "", item.wrong_answer, metric)
        except LensError as exc:
            raise LensError(f"{where}{exc}" if where and not str(exc).startswith(where) else str(exc)) from None
        prompts.append(_Prompt(tokens, answer_metric, loss_positions))
        source = None
        if need_corrupted:
            assert item.corrupted_prompt is not None
            source_tokens = encode(tc, item.corrupted_prompt, f"{where}corrupted_prompt")
            if mode == "resample" and source_tokens.shape[-1] != n:
                raise LensError(
                    f"{where}{arg} and {where}corrupted_prompt must tokenize to the same length for "
                    f"mode='resample' (z is replaced position by position), but they are {n} and "
                    f"{source_tokens.shape[-1]} tokens:\n  {arg}: {token_strings(tc, tokens[0])}\n  corrupted_prompt: "
                    f"{token_strings(tc, source_tokens[0])}\nReword one, or use mode='corrupted_mean'."
                )
            source = _Prompt(source_tokens, answer_metric, loss_positions)
        corrupted.append(source)
    if metric == "loss" and checked_positions is not None and not positions_from_end(checked_positions):
        lengths = [int(p.tokens.shape[-1]) for p in prompts]
        for index, n in enumerate(lengths[1:], start=1):
            if n != lengths[0]:
                raise LensError(
                    f"pairs[{index}] is {n} tokens long but pairs[0] is {lengths[0]}: with positions counted from "
                    "the start every pair must have the same length. Count positions from the end (negative), or "
                    f"reword pairs[{index}] to match."
                )

    sets: list[list[tuple[int, int]]] = [list(head_list)]
    if individually:
        sets += [[pair] for pair in head_list]
    return AblationPlan(mode, metric, head_list, kept, sets, prompts, corrupted, checked_positions, pairs is not None)


def ablation_cost(tc: ToolContext, plan: AblationPlan) -> Cost:
    n_rows = plan.n_pairs * len(plan.sets)
    mean_tokens = max(1, sum(int(p.tokens.shape[-1]) for p in plan.prompts) // plan.n_pairs)
    return estimate(
        tc,
        Work(
            rows=n_rows + len(plan.references),
            tokens_per_row=mean_tokens,
            cells=n_rows,
            result_chars=1200 + 160 * len(plan.sets) + 120 * plan.n_pairs + 24 * mean_tokens * plan.n_pairs,
        ),
    )


def run_ablation(tc: ToolContext, plan: AblationPlan) -> AblationRuns:
    """Reference runs (metrics before, activations the modes read), then every (pair, head set) row ablated."""
    mode, n_pairs, sets, prompts = plan.mode, plan.n_pairs, plan.sets, plan.prompts
    references, wanted = plan.references, plan.hooks
    counter = ProgressCounter(tc.progress, total=n_pairs * len(sets), unit="ablated runs")
    with torch.no_grad():
        # Reference runs (every prompt and corrupted prompt, batched by length): metrics before, z to replace.
        z_of: dict[int, dict[str, torch.Tensor]] = {}
        before_values: dict[int, tuple[float, float | None]] = {}
        warnings: list[str] = []
        for group in _by_length(references):
            reference_tokens = torch.cat([references[i].tokens for i in group], dim=0)
            if wanted:
                logits, cache = tc.view.run_with_cache(reference_tokens, names_filter=lambda name: name in wanted)
            else:  # keep= every head: nothing is ablated, nothing to cache
                logits, cache = tc.view(reference_tokens), {}
            for row, i in enumerate(group):
                first_metric = references[i].metric
                if i == 0 and first_metric is not None:  # answer warnings for the (first) prompt
                    warnings = metric_warnings(tc, first_metric, logits[row, -1])
                value, prob = _measure(references[i], logits[row : row + 1])
                before_values[i] = (float(value[0]), None if prob is None else float(prob[0]))
                z_of[i] = {name: cache[name][row] for name in wanted}  # [pos, heads, d_head]
            del logits, cache
        sources = list(range(n_pairs, len(references)))
        dataset_mean: dict[str, torch.Tensor] = {}
        if mode == "corrupted_mean":
            for name in wanted:
                dataset_mean[name] = torch.cat([z_of[i][name] for i in sources], dim=0).mean(dim=0)

        def replacement(pair: int, layer: int, head: int) -> Any:
            name = hook_name("z", layer)
            if mode == "zero":
                return 0.0
            if mode == "mean":
                return z_of[pair][name][:, head].mean(dim=0)
            if mode == "corrupted_mean":
                return dataset_mean[name][head]
            return z_of[n_pairs + pair][name][:, head]  # resample: the pair's corrupted prompt

        after: dict[tuple[int, int], tuple[float, float | None]] = {}
        for group in _by_length(prompts):
            n_tokens = int(prompts[group[0]].tokens.shape[-1])
            rows = [(pair, s) for pair in group for s in range(len(sets))]
            batch_plan = plan_rows(
                tc.limits,
                prompts[group[0]].tokens.device,
                n_tokens,
                sequence_bytes(tc.view, n_tokens, logits_tokens=n_tokens),
                wanted=len(rows),
                seconds_per_row=seconds_per_row(tc, n_tokens),
            )

            def run_batch(batch: Sequence[tuple[int, int]]) -> list[tuple[float, float | None]]:
                tokens = torch.cat([prompts[pair].tokens for pair, _ in batch], dim=0)
                keys = [pair for pair, _ in batch]
                hooks = ablation_hooks([sets[s] for _, s in batch], replacement, keys)
                batch_logits = tc.view.run_with_hooks(tokens, fwd_hooks=hooks)
                out: list[tuple[float, float | None]] = []
                for row, pair in enumerate(keys):
                    value, prob = _measure(prompts[pair], batch_logits[row : row + 1])
                    out.append((float(value[0]), None if prob is None else float(prob[0])))
                return out

            for batch, results in iter_batched(rows, run_batch, batch_plan, device=tc.view.device, counter=counter):
                for key, result in zip(batch, results, strict=True):
                    after[key] = result

    return AblationRuns(before_values, after, warnings)


def summarize_ablation(tc: ToolContext, plan: AblationPlan, runs: AblationRuns, cost: Cost) -> AblateHeadsResult:
    mode, metric, n_pairs, prompts, positions = plan.mode, plan.metric, plan.n_pairs, plan.prompts, plan.positions
    head_list, before_values, after = plan.heads, runs.before, runs.after
    need_corrupted = any(c is not None for c in plan.corrupted)
    individually = len(plan.sets) > 1
    before = [before_values[i][0] for i in range(n_pairs)]
    joint = [after[(i, 0)][0] for i in range(n_pairs)]
    effects = torch.tensor([a - b for a, b in zip(joint, before, strict=True)], dtype=torch.float64)
    probs_before = [before_values[i][1] for i in range(n_pairs)]
    probs_after = [after[(i, 0)][1] for i in range(n_pairs)]
    individual = None
    if individually:
        individual = []
        for s, (layer, head) in enumerate(head_list, start=1):
            values = torch.tensor([after[(i, s)][0] for i in range(n_pairs)], dtype=torch.float64)
            head_effects = values - torch.tensor(before, dtype=torch.float64)
            individual.append(
                HeadEffect(
                    layer=layer,
                    head=head,
                    metric=float(values.mean()),
                    effect=float(head_effects.mean()),
                    effect_std=float(head_effects.std(unbiased=False)) if n_pairs > 1 else None,
                )
            )
        # Most damaging first: the most negative effect, or for the loss (higher = worse) the most positive.
        individual.sort(key=lambda effect: -effect.effect if metric == "loss" else effect.effect)
    stats = spread(effects[:, None])
    pair_rows = None
    if plan.dataset:
        pair_rows = [
            AblationPairResult(
                index=i,
                clean_metric=before[i],
                corrupted_metric=before_values[n_pairs + i][0] if need_corrupted else None,
                metric_after=joint[i],
                effect=joint[i] - before[i],
                tokens=token_strings(tc, prompts[i].tokens[0]),
            )
            for i in range(n_pairs)
        ]
    answer_text = prompts[0].metric.description if prompts[0].metric is not None else ""
    metric_text = (
        "mean next-token loss (nats) over positions " + _describe_positions(positions)
        if metric == "loss"
        else f"{answer_text if not plan.dataset else metric + ' of each pair' + chr(39) + 's answer'} at the last position"
    )
    meaning = (
        "effect = metric_after - metric_before: for the loss, positive = the heads helped predict these tokens"
        if metric == "loss"
        else "effect = metric_after - metric_before: negative = the heads supported the answer"
    ) + ("" if not plan.dataset else f"; means over {n_pairs} pairs")
    return AblateHeadsResult(
        tokens=token_strings(tc, prompts[0].tokens[0]) if not plan.dataset else None,
        mode=mode,
        metric=metric_text,
        meaning=meaning,
        heads=head_list,
        kept=plan.kept,
        metric_before=sum(before) / n_pairs,
        metric_after=sum(joint) / n_pairs,
        effect=float(effects.mean()),
        effect_spread=None
        if not plan.dataset
        else EffectSpread(std=float(stats.std[0]), min=float(stats.min[0]), max=float(stats.max[0])),
        prob_before=None if probs_before[0] is None else sum(p or 0.0 for p in probs_before) / n_pairs,
        prob_after=None if probs_after[0] is None else sum(p or 0.0 for p in probs_after) / n_pairs,
        individual=individual,
        pairs=pair_rows,
        cost=cost,
        warnings=runs.warnings,
    )


def _by_length(prompts: Sequence[_Prompt]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(int(prompt.tokens.shape[-1]), []).append(index)
    return list(groups.values())


def _loss_positions(positions: list[int] | None, n_tokens: int, where: str) -> list[int]:
    if n_tokens < 2:
        raise LensError(f"{where}prompt has a single token: the loss needs at least one predicted token.")
    if positions is None:
        return list(range(1, n_tokens))
    resolved = resolve_positions(positions, n_tokens, "positions")
    if 0 in resolved:
        raise LensError(
            "positions: 0 (BOS) is never predicted; the loss reads positions 1.. (the token at p predicted from "
            "the tokens before it)."
        )
    return resolved


def _describe_positions(positions: list[int] | None) -> str:
    return "1.. (every token after BOS)" if positions is None else str(positions)
