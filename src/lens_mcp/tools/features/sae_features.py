"""sae_features: which SAE features are active on a prompt, how well the SAE reconstructs it, and what each
listed feature's decoder direction promotes."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from lens_mcp.schemas.features import ActiveFeature, PositionFeatures, PromotedTokens, Reconstruction, SaeFeaturesResult
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate
from lens_mcp.tools.core.forward import final_norm, unembed
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_top_k, resolve_positions
from lens_mcp.tools.features._sae import body_start, flat, get_sae
from lens_mcp.tools.features._sae_format import SAE, finite

N_PROMOTED = 5
_CHARS_PER_FEATURE = 40  # {"feature":1234,"activation":12.34} plus its share of the promoted list
_CHARS_PER_PROMOTED = 160


def promoted_tokens(tc: ToolContext, sae: SAE, features: list[int], n: int = N_PROMOTED) -> list[PromotedTokens]:
    """Top tokens of each feature's decoder direction read through the model's final norm and unembedding
    (the unembedding bias subtracted, so only the direction ranks tokens)."""
    if not features:
        return []
    with torch.no_grad():
        directions = sae.decoder_rows()[torch.tensor(features, device=sae.W_dec.device)]
        logits = unembed(tc, final_norm(tc, directions.to(tc.view.W_U.dtype)))
        logits = logits - unembed(tc, torch.zeros_like(directions[:1], dtype=tc.view.W_U.dtype))
        values, ids = logits.float().topk(n, dim=-1)
    return [
        PromotedTokens(feature=feature, tokens=token_strings(tc, ids[row]), logits=values[row].tolist())
        for row, feature in enumerate(features)
    ]


def next_token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> list[float]:
    """Mean next-token loss per batch row, in nats."""
    if tokens.shape[-1] < 2:
        return [float("nan")] * logits.shape[0]
    logprobs = logits[:, :-1].float().log_softmax(dim=-1)
    targets = tokens[0, 1:].expand(logits.shape[0], -1)
    return (-logprobs.gather(-1, targets[..., None]).squeeze(-1)).mean(dim=-1).tolist()


def sae_features(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The prompt, e.g. 'The Eiffel Tower is in the city of'")],
    hook: Annotated[
        str | None, Field(description="Hook of the SAE to use (see model_info); omit when one SAE is loaded")
    ] = None,
    positions: Annotated[
        list[int] | None, Field(description="Positions to list (BOS is 0; -1 = last); omit for all")
    ] = None,
    top_k: Annotated[int, Field(description="Features listed per position, largest activation first")] = 10,
    dry_run: Annotated[
        bool, Field(description="Only estimate the cost (seconds, passes, result size); compute nothing")
    ] = False,
) -> SaeFeaturesResult:
    """Encode the prompt's activation at the SAE's hook and list the top active features per position with
    their activations (in the SAE's units; 0 = inactive). Also the reconstruction quality on this prompt:
    variance explained (1 = perfect), and the mean next-token loss with the SAE's reconstruction spliced in at
    every non-BOS position versus the model as is (loss_increase in nats; zero-ablating the activation is given
    as a reference), all from one batched forward pass. For each listed feature, the tokens its decoder direction
    promotes through the final norm and unembedding (a direct-path reading; it ignores later layers). With no
    SAE loaded, the model's builtin SAE is loaded (smollm2-135m: smollm2-135m-resid at blocks.15.hook_resid_pre).
    Next: feature_attribution to see which features drive an answer, steering_vector(from_feature=...) and
    generate to steer along one."""
    sae = get_sae(tc, hook)
    top_k = check_top_k(top_k, tc.limits.max_top_k)
    tokens = encode(tc, prompt, "prompt")
    n_tokens = int(tokens.shape[-1])
    listed = resolve_positions(positions, n_tokens, "positions")
    # one batched pass of 3 rows (clean, spliced, zero-ablated)
    cells = len(listed) * top_k
    work = Work(
        rows=3,
        tokens_per_row=n_tokens,
        cells=cells,
        result_chars=cells * (_CHARS_PER_FEATURE + _CHARS_PER_PROMOTED) + 20 * n_tokens,
        rows_per_pass=3,
    )
    cost = estimate(tc, work)
    enforce(tc, cost, "fewer positions=[...] (e.g. [-1]) or a smaller top_k")
    if dry_run:
        return SaeFeaturesResult(
            hook=sae.hook_name,
            tokens=token_strings(tc, tokens[0]),
            positions=[],
            reconstruction=None,
            promoted=[],
            meaning="dry run: the cost estimate only; call again without dry_run to compute.",
            cost=cost,
            dry_run=True,
        )
    start = body_start(tc, tokens)
    hook_name = sae.hook_name
    captured: dict[str, Any] = {}

    def splice(activation: torch.Tensor, hook: Any = None) -> torch.Tensor:
        x = flat(activation[0], hook_name).float()
        x_hat, acts, _ = sae.reconstruct(x)
        captured.update(x=x, x_hat=x_hat, acts=acts)
        shaped = x_hat.reshape(activation[0].shape).to(activation.dtype)
        activation[1, start:] = shaped[start:]
        activation[2, start:] = 0.0
        return activation

    with torch.no_grad(), tc.view.hooks(fwd_hooks=[(hook_name, splice)]):
        logits = tc.view(tokens.expand(3, -1))
    loss_clean, loss_spliced, loss_zero = next_token_losses(logits, tokens)
    del logits

    x, x_hat, acts = captured["x"][start:], captured["x_hat"][start:], captured["acts"]
    n_body = int(x.shape[0])
    err = (x - x_hat).pow(2).sum(dim=-1)
    variance = None
    if n_body >= 2:
        total = (x - x.mean(dim=0)).pow(2).sum()
        variance = float(1 - err.sum() / total) if float(total) > 0 else None
    relative = float((err.sqrt() / x.norm(dim=-1).clamp_min(1e-12)).mean()) if n_body else 0.0
    active_counts = (acts > 0).sum(dim=-1)
    mean_l0 = float(active_counts[start:].float().mean()) if n_body else 0.0

    strings = token_strings(tc, tokens[0])
    rows: list[PositionFeatures] = []
    feature_order: list[int] = []
    values, ids = acts.topk(min(top_k, sae.d_sae), dim=-1)
    for position in listed:
        entries = [
            ActiveFeature(feature=int(i), activation=float(v))
            for v, i in zip(values[position].tolist(), ids[position].tolist(), strict=True)
            if v > 0
        ]
        for entry in entries:
            if entry.feature not in feature_order:
                feature_order.append(entry.feature)
        rows.append(
            PositionFeatures(
                position=position,
                token=strings[position],
                features=entries,
                n_active=int(active_counts[position]),
            )
        )
    reconstruction = Reconstruction(
        variance_explained=variance,
        relative_error=relative,
        mean_l0=mean_l0,
        loss_clean=finite(loss_clean),
        loss_spliced=finite(loss_spliced),
        loss_zero_ablated=finite(loss_zero),
        loss_increase=finite(loss_spliced - loss_clean),
    )
    return SaeFeaturesResult(
        hook=hook_name,
        tokens=strings,
        positions=rows,
        reconstruction=reconstruction,
        promoted=promoted_tokens(tc, sae, feature_order),
        meaning=(
            "activation = how strongly a feature fires (0 = off); variance_explained 1 = perfect reconstruction; "
            "loss_increase = nats of next-token loss lost by replacing the activation with the SAE's reconstruction "
            "(0 = nothing lost). BOS (position 0) is never spliced; its features are listed but excluded from the "
            "quality numbers."
        ),
        cost=cost,
    )
