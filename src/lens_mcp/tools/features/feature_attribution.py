"""feature_attribution: which SAE features at a position push an answer metric, to first order (activation x
decoder direction . gradient), with the exact effect of removing each listed feature checked by ablation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from pydantic import Field

from lens_mcp.schemas.features import FeatureAttributionEntry, FeatureAttributionResult
from lens_mcp.tools.core.batching import ProgressCounter, iter_batched, plan_rows, sequence_bytes
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate
from lens_mcp.tools.core.metrics import resolve_metric
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_top_k, resolve_position
from lens_mcp.tools.features._sae import body_start, flat, get_sae


def metric_gradient(
    tc: ToolContext, tokens: torch.Tensor, hook: str, metric: Any
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(metric at the last position, the activation at `hook` [pos, ...], d metric / d activation [pos, ...])
    for the one prompt, from one forward and one backward pass."""
    holder: dict[str, torch.Tensor] = {}

    def capture(activation: torch.Tensor, hook: Any = None) -> torch.Tensor:
        leaf = activation.detach().clone().requires_grad_(True)
        holder["x"] = leaf
        return leaf

    with torch.enable_grad(), tc.view.hooks(fwd_hooks=[(hook, capture)]):
        logits = tc.view(tokens)
        value = metric(logits[0, -1])
        (grad,) = torch.autograd.grad(value, holder["x"])
    return float(value.detach()), holder["x"][0].detach(), grad[0].detach()


def feature_attribution(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The prompt, e.g. 'The Eiffel Tower is in the city of'")],
    answer: Annotated[str, Field(description="The expected next token, one token (e.g. ' Paris')")],
    wrong_answer: Annotated[
        str | None,
        Field(description="A competing token (e.g. ' Rome'): metric = logit(answer) - logit(wrong_answer)"),
    ] = None,
    hook: Annotated[str | None, Field(description="Hook of the SAE to use; omit when one SAE is loaded")] = None,
    position: Annotated[
        int | None,
        Field(description="Position whose features are attributed (-1 = last); null = all non-BOS positions summed"),
    ] = -1,
    top_k: Annotated[int, Field(description="Features listed, largest |attribution| first")] = 10,
    dry_run: Annotated[
        bool, Field(description="Only estimate the cost (seconds, passes, result size); compute nothing")
    ] = False,
) -> FeatureAttributionResult:
    """Attribute the answer metric at the last position (logit(answer) - logit(wrong_answer), or logit(answer))
    to SAE features at the SAE's hook: attribution_i = activation_i x (decoder direction_i . d metric / d
    activation), from one forward and one backward pass. Positive = the feature pushes toward the answer;
    attribution ~ metric minus the metric with the feature removed (a first-order estimate). Each listed feature
    also gets ablation_effect: that difference measured exactly, with activation_i x direction_i subtracted from
    the activation (the SAE's error term kept), all listed features in one batched forward pass. position=null
    sums over all non-BOS positions (and removes the feature everywhere for the ablation). total_attribution sums
    all active features. Read what a feature does with sae_features; steer along it with
    steering_vector(from_feature=...)."""
    sae = get_sae(tc, hook)
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    tokens = encode(tc, prompt, "prompt")
    answer_metric = resolve_metric(tc, answer, wrong_answer, "logit_diff")
    n_tokens = int(tokens.shape[-1])
    start = body_start(tc, tokens)
    if position is None:
        chosen = list(range(start, n_tokens))
    else:
        chosen = [resolve_position(position, n_tokens, "position")]
    hook_name = sae.hook_name
    # one forward + backward, then one ablated row per listed feature
    work = Work(
        rows=1 + top_k, tokens_per_row=n_tokens, backward_rows=1, cells=top_k, result_chars=120 * top_k + 20 * n_tokens
    )
    cost = estimate(tc, work)
    enforce(tc, cost, "a shorter prompt or a smaller top_k")
    if dry_run:
        return FeatureAttributionResult(
            hook=hook_name,
            metric=f"{answer_metric.description} at the last position",
            metric_value=None,
            positions=chosen,
            tokens=token_strings(tc, tokens[0]),
            features=[],
            total_attribution=None,
            meaning="dry run: the cost estimate only; call again without dry_run to compute.",
            cost=cost,
            dry_run=True,
        )

    metric_value, activation, grad = metric_gradient(tc, tokens, hook_name, answer_metric)
    with torch.no_grad():
        x = flat(activation, hook_name).float()  # [pos, d_in]
        g = flat(grad, hook_name).float()
        acts, state = sae.encode(x)
        scale = state.out_scale
        # attribution[p, i] = acts[p, i] * out_scale[p] * (W_eff[i] . g[p])
        along = g[chosen] @ sae.decoder_rows().T  # [P, d_sae]
        if isinstance(scale, torch.Tensor):
            along = along * scale[chosen]
        else:
            along = along * scale
        per_feature = (acts[chosen] * along).sum(dim=0)  # [d_sae]
        summed_acts = acts[chosen].sum(dim=0)
        order = per_feature.abs().topk(min(top_k, sae.d_sae)).indices.tolist()
        listed = [i for i in order if float(summed_acts[i]) > 0]

        # exact: remove activation_i x direction_i at the chosen positions, one batch row per listed feature
        def remove(batch: Sequence[int]) -> torch.Tensor:
            index = torch.tensor(list(batch), device=sae.W_dec.device)
            directions = sae.directions(index, state)  # [pos, n, d_in] or [n, d_in]
            if directions.ndim == 2:
                directions = directions.expand(x.shape[0], -1, -1)
            deltas = acts[:, index].unsqueeze(-1) * directions  # [pos, n, d_in]
            mask = torch.zeros(x.shape[0], 1, 1, device=x.device)
            mask[chosen] = 1.0
            deltas = (deltas * mask).permute(1, 0, 2)  # [n, pos, d_in]

            def subtract(activation: torch.Tensor, hook: Any = None) -> torch.Tensor:
                shaped = deltas.reshape(activation.shape).to(activation.dtype)
                return activation - shaped

            with tc.view.hooks(fwd_hooks=[(hook_name, subtract)]):
                logits = tc.view(tokens.expand(len(batch), -1))
            return answer_metric(logits[:, -1])

        plan = plan_rows(
            tc.limits, tokens.device, n_tokens, sequence_bytes(tc.view, n_tokens, logits_tokens=n_tokens), len(listed)
        )
        counter = ProgressCounter(tc.progress, total=max(len(listed), 1), unit="ablated runs")
        ablated: list[float] = []
        for _batch, values in iter_batched(listed, remove, plan, device=tokens.device, counter=counter):
            ablated += values.tolist()

    strings = token_strings(tc, tokens[0])
    entries = [
        FeatureAttributionEntry(
            feature=int(i),
            attribution=float(per_feature[i]),
            activation=float(summed_acts[i]),
            ablation_effect=metric_value - after,
        )
        for i, after in zip(listed, ablated, strict=True)
    ]
    return FeatureAttributionResult(
        hook=hook_name,
        metric=f"{answer_metric.description} at the last position",
        metric_value=metric_value,
        positions=chosen,
        tokens=strings,
        features=entries,
        total_attribution=float(per_feature.sum()),
        meaning=(
            "attribution > 0: the feature pushes the metric up (toward the answer); it estimates metric minus "
            "the metric with the feature removed, and ablation_effect is that difference measured exactly. "
            "activation is summed over the positions."
        ),
        cost=cost,
    )
