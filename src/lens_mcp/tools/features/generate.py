"""generate: continue a prompt with and without interventions (steering vectors, head ablations, clamped SAE
features), side by side, with per-token log-probs under both and a random-direction control per steer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.features import Continuation, GeneratedToken, GenerateResult
from lens_mcp.tools.core.ablation import MODES, ablation_hooks, resolve_heads
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_int, check_range, resolve_layer
from lens_mcp.tools.features._decoding import decode, score
from lens_mcp.tools.features._sae import body_start, flat, get_sae
from lens_mcp.tools.features._sae_format import SAE

MAX_NEW_TOKENS = 256
MAX_TEMPERATURE = 10.0
_CHARS_PER_TOKEN = 72  # {"token":"...","logprob":-1.234,"logprob_other":-5.678}, plus the token in the text
_EXAMPLES = (
    '{"steer": "happy", "alpha": 4} (optionally "layer": 6), {"ablate_heads": [[1, 2]], "mode": "zero"}, '
    '{"sae_feature": 123, "value": 10} (optionally "hook": ...)'
)


@dataclass
class Steer:
    name: str
    hook: str
    vector: torch.Tensor
    alpha: float
    control: bool = False

    def describe(self) -> str:
        kind = "random vector of equal norm instead of" if self.control else "steering vector"
        return f"add {self.alpha:g} x {kind} {self.name!r} at {self.hook}"


@dataclass
class Ablate:
    heads: list[tuple[int, int]]
    mode: str

    def describe(self) -> str:
        return f"{self.mode}-ablate heads {', '.join(f'L{layer}H{head}' for layer, head in self.heads)}"


@dataclass
class Clamp:
    sae: SAE
    feature: int
    value: float

    def describe(self) -> str:
        return f"clamp SAE feature {self.feature} on {self.sae.hook_name} to {self.value:g}"


Intervention = Steer | Ablate | Clamp


@dataclass
class RowSpec:
    label: str
    interventions: list[Intervention] = field(default_factory=list)


def _finite(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise LensError(f"{where}: expected a finite number, got {value!r:.80}; pass a finite number, e.g. 2.0.")
    return float(value)


def parse_interventions(tc: ToolContext, interventions: object) -> list[Intervention]:
    if interventions is None:
        return []
    if not isinstance(interventions, list):
        raise LensError(f"interventions: expected a list of objects, e.g. [{_EXAMPLES.split('}, ')[0]}}}].")
    if len(interventions) > 16:
        raise LensError("interventions: at most 16 at once.")
    parsed: list[Intervention] = []
    n_layers = tc.view.n_layers
    for index, item in enumerate(interventions):
        where = f"interventions[{index}]"
        if not isinstance(item, dict):
            raise LensError(f"{where}: expected an object such as {_EXAMPLES}.")
        kinds = [key for key in ("steer", "ablate_heads", "sae_feature") if key in item]
        if len(kinds) != 1:
            raise LensError(f"{where}: name exactly one of steer, ablate_heads, sae_feature; e.g. {_EXAMPLES}.")
        kind = kinds[0]
        allowed = {"steer": {"steer", "layer", "alpha"}, "ablate_heads": {"ablate_heads", "mode"}}.get(
            kind, {"sae_feature", "hook", "value"}
        )
        unknown = set(item) - allowed
        if unknown:
            raise LensError(
                f"{where}: unknown keys {sorted(unknown)} for a {kind} intervention (use {sorted(allowed)})."
            )
        if kind == "steer":
            name = item["steer"]
            stored = tc.model.steering_vectors.get(name) if isinstance(name, str) else None
            if stored is None:
                have = ", ".join(map(repr, tc.model.steering_vectors))
                fix = f"use one of the stored names ({have}) or make" if have else "none is stored yet; make"
                raise LensError(
                    f"{where}.steer={name!r}: no steering vector by that name; {fix} one with steering_vector first."
                )
            target = stored.hook
            if item.get("layer") is not None:
                target = hook_name("resid_pre", resolve_layer(item["layer"], n_layers, f"{where}.layer"))
            alpha = _finite(item.get("alpha", 1.0), f"{where}.alpha")
            parsed.append(Steer(name, target, stored.vector, alpha))
        elif kind == "ablate_heads":
            mode = item.get("mode", "zero")
            if mode not in MODES:
                raise LensError(f"{where}.mode={mode!r} is not one of {', '.join(MODES)}.")
            try:
                heads = resolve_heads(tc, item["ablate_heads"])
            except LensError as exc:
                raise LensError(f"{where}.ablate_heads: {exc}") from None
            parsed.append(Ablate(heads, mode))
        else:
            sae = get_sae(tc, item.get("hook"), f"{where}.hook")
            feature = check_int(item["sae_feature"], f"{where}.sae_feature")
            if not 0 <= feature < sae.d_sae:
                raise LensError(f"{where}.sae_feature={feature} is out of range: use 0..{sae.d_sae - 1}.")
            parsed.append(Clamp(sae, feature, _finite(item.get("value", 0.0), f"{where}.value")))
    return parsed


def build_hooks(
    tc: ToolContext, rows: list[RowSpec], start: int, z_means: dict[tuple[int, int], torch.Tensor]
) -> list[tuple[str, Callable[..., Any]]]:
    """Forward hooks applying each row's interventions to that batch row only, never at positions < start."""
    hooks: list[tuple[str, Callable[..., Any]]] = []
    for row, spec in enumerate(rows):
        for item in spec.interventions:
            if isinstance(item, Steer):

                def steer(
                    activation: torch.Tensor, hook: Any = None, row: int = row, item: Steer = item
                ) -> torch.Tensor:
                    activation[row, start:] += (item.alpha * item.vector).to(activation.dtype)
                    return activation

                hooks.append((item.hook, steer))
            elif isinstance(item, Clamp):

                def clamp(
                    activation: torch.Tensor, hook: Any = None, row: int = row, item: Clamp = item
                ) -> torch.Tensor:
                    body = activation[row, start:]
                    x = flat(body, item.sae.hook_name).float()
                    acts, state = item.sae.encode(x)
                    delta = item.value - acts[..., item.feature]
                    direction = item.sae.directions([item.feature], state)[..., 0, :]
                    activation[row, start:] = body + (delta[..., None] * direction).reshape(body.shape).to(body.dtype)
                    return activation

                hooks.append((item.sae.hook_name, clamp))
    # head ablations, through the same hooks ablate_heads uses (one per layer, rows chosen inside)
    per_row = [
        [pair for item in spec.interventions if isinstance(item, Ablate) for pair in item.heads] for spec in rows
    ]
    modes = {
        pair: item.mode
        for spec in rows
        for item in spec.interventions
        if isinstance(item, Ablate)
        for pair in item.heads
    }
    if any(per_row):
        hooks += ablation_hooks(
            per_row, lambda layer, head: 0.0 if modes[(layer, head)] == "zero" else z_means[(layer, head)]
        )
    return hooks


def head_means(
    tc: ToolContext, tokens: torch.Tensor, interventions: list[Intervention]
) -> dict[tuple[int, int], torch.Tensor]:
    """Mean z of each mean-ablated head over the prompt's positions (unablated run), as ablate_heads uses."""
    pairs = sorted(
        {pair for item in interventions if isinstance(item, Ablate) and item.mode == "mean" for pair in item.heads}
    )
    if not pairs:
        return {}
    wanted = {hook_name("z", layer) for layer, _ in pairs}
    with torch.no_grad():
        _, cache = tc.view.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    return {(layer, head): cache[hook_name("z", layer)][0, :, head].mean(dim=0) for layer, head in pairs}


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed))
    direction = torch.randn(vector.shape[-1], generator=generator, dtype=torch.float32).to(vector.device)
    return direction * (vector.float().norm() / direction.norm())


def generate(
    tc: ToolContext,
    prompt: Annotated[str, Field(description="The prompt to continue, e.g. 'I think that you are'")],
    max_new_tokens: Annotated[int, Field(description=f"New tokens per continuation, 1..{MAX_NEW_TOKENS}")] = 30,
    interventions: Annotated[
        list[dict[str, Any]],
        Field(description=f"Interventions applied together, e.g. {_EXAMPLES}"),
    ] = [],  # noqa: B006 - never mutated; the public default is an empty list
    temperature: Annotated[float, Field(description="0 = greedy; > 0 samples with shared random numbers")] = 0.0,
    seed: Annotated[int, Field(description="Seed for sampling and for the random control vectors")] = 0,
    dry_run: Annotated[
        bool, Field(description="Only estimate the cost (seconds, passes, result size); compute nothing")
    ] = False,
) -> GenerateResult:
    """Continue the prompt without and with interventions, side by side. Interventions combine: {"steer": name,
    "alpha": a, "layer": L?} adds a x the stored steering vector (steering_vector) to the residual at its hook
    (or resid_pre of L); {"ablate_heads": [[l, h], ...], "mode": "zero"|"mean"} replaces those heads' z; {"sae_feature":
    i, "value": v, "hook": h?} clamps an SAE feature to v (activation moved along its decoder direction, the SAE
    error kept). Steers and clamps act at every position but BOS, head ablations at every position (as in
    ablate_heads; mean = the head's mean z over the prompt), prompt and generated tokens alike. Each token
    comes with its log-prob under the run that produced it and under the other run (same prefix): baseline text
    scored by the intervened model and the other way round. Each steer also gets a control: the same run with its
    vector replaced by a random vector of equal norm; an effect that the control also shows is not specific to
    the direction. Greedy by default; temperature > 0 samples, with the same random numbers in every row. No KV
    cache (exact): cost grows with max_new_tokens x length, estimated first and refused over the cap; progress is
    reported per token and the call can be cancelled."""
    max_new = check_range(max_new_tokens, 1, MAX_NEW_TOKENS, "max_new_tokens")
    temperature = _finite(temperature, "temperature")
    if not 0 <= temperature <= MAX_TEMPERATURE:
        raise LensError(f"temperature={temperature:g} is out of range: use 0 (greedy) .. {MAX_TEMPERATURE:g}.")
    seed = check_int(seed, "seed")
    tokens = encode(tc, prompt, "prompt")
    n_prompt = int(tokens.shape[-1])
    parsed = parse_interventions(tc, interventions)

    rows = [RowSpec("baseline")]
    if parsed:
        rows.append(RowSpec("intervened", list(parsed)))
        for index, item in enumerate(parsed):
            if isinstance(item, Steer):
                control = replace(item, vector=random_like(item.vector, seed + 1000 + index), control=True)
                rows.append(
                    RowSpec(
                        f"control:{item.name}", [control if j == index else other for j, other in enumerate(parsed)]
                    )
                )
    if n_prompt + max_new > tc.max_prompt_tokens:
        raise LensError(
            f"max_new_tokens={max_new}: prompt ({n_prompt} tokens) + new tokens exceed the length cap of "
            f"{tc.max_prompt_tokens}; ask for fewer tokens or shorten the prompt."
        )
    # every step runs all rows over the whole sequence (mean length n + max_new / 2); then one scoring pass
    work = Work(
        rows=len(rows) * (max_new + 1),
        tokens_per_row=n_prompt + (max_new + 1) // 2,
        cells=len(rows) * max_new,
        result_chars=len(rows) * max_new * _CHARS_PER_TOKEN + 400 * len(rows),
        rows_per_pass=len(rows),
    )
    cost = estimate(tc, work)
    enforce(tc, cost, "fewer max_new_tokens, a shorter prompt, or fewer steers (one control each)")
    descriptions = [item.describe() for item in parsed]
    if dry_run:
        return GenerateResult(
            prompt_tokens=n_prompt,
            interventions=descriptions,
            baseline=None,
            intervened=None,
            controls=[],
            first_difference=None,
            temperature=temperature,
            seed=seed,
            meaning="dry run: the cost estimate only; call again without dry_run to generate.",
            cost=cost,
            dry_run=True,
        )

    start = body_start(tc, tokens)
    z_means = head_means(tc, tokens, parsed)
    stop = tc.view.tokenizer.eos_token_id
    decoded = decode(tc, tokens, len(rows), build_hooks(tc, rows, start, z_means), max_new, temperature, seed, stop)

    # each row's tokens scored under the other run: baseline under the interventions, the rest under the baseline
    if parsed:
        other_rows = [RowSpec("other", list(parsed))] + [RowSpec("other") for _ in rows[1:]]
        other = score(tc, decoded.tokens, n_prompt, build_hooks(tc, other_rows, start, z_means))
    else:
        other = decoded.logprobs

    continuations: list[Continuation] = []
    for row, spec in enumerate(rows):
        new = decoded.tokens[row, n_prompt:].tolist()
        keep = len(new)
        if stop is not None and stop in new:
            keep = new.index(stop) + 1
        own_lp = decoded.logprobs[row, :keep].tolist()
        other_lp = other[row, :keep].tolist()
        ids = new[:keep]
        text_ids = ids[:-1] if stop is not None and ids and ids[-1] == stop else ids
        continuations.append(
            Continuation(
                label=spec.label,
                text=tc.view.tokenizer.decode(text_ids),
                tokens=[
                    GeneratedToken(token=text, logprob=a, logprob_other=b)
                    for text, a, b in zip(token_strings(tc, ids), own_lp, other_lp, strict=True)
                ],
                total_logprob=sum(own_lp),
                total_logprob_other=sum(other_lp),
            )
        )
    baseline = continuations[0]
    intervened = continuations[1] if parsed else None
    first_difference = None
    if intervened is not None:
        a, b = [t.token for t in baseline.tokens], [t.token for t in intervened.tokens]
        first_difference = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if first_difference is None and len(a) != len(b):
            first_difference = min(len(a), len(b))
    return GenerateResult(
        prompt_tokens=n_prompt,
        interventions=descriptions,
        baseline=baseline,
        intervened=intervened,
        controls=continuations[2:],
        first_difference=first_difference,
        temperature=temperature,
        seed=seed,
        meaning=(
            "logprob: log-probability of each token under the run that produced it; logprob_other: under the "
            "other run (baseline <-> intervened) with the same prefix, so logprob - logprob_other > 0 means that "
            "run prefers its own token. first_difference: first new token where the texts diverge."
        ),
        cost=cost,
    )
