"""Schemas of the feature and steering tools: load_sae, sae_features, feature_attribution, steering_vector,
generate."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lens_mcp.schemas.common import Cost, Result, Rounded
from lens_mcp.schemas.figures import Heatmap, TextStrip

MAX_FEATURE_COLUMNS = 40
MAX_STRIP_CONTEXTS = 12


class SaeInfo(BaseModel):
    hook: str = Field(description="Hook name the SAE reads and is keyed by")
    architecture: Literal["standard", "jumprelu", "topk"] = Field(description="standard = ReLU")
    d_in: int
    d_sae: int = Field(description="Number of features")
    k: int | None = Field(None, description="TopK SAEs: active features per token")
    normalize_activations: str
    apply_b_dec_to_input: bool
    source: str = Field(description="Where it was loaded from (builtin name, folder, or repo/sae_id)")
    size_mb: Rounded = Field(description="Size of cfg.json + weights on disk, MB")


class LoadSaeResult(Result):
    loaded: SaeInfo
    replaced: bool = Field(description="Whether an SAE on the same hook was replaced")
    saes: list[str] = Field(description="Hooks of every SAE now loaded")
    notes: list[str] = Field(default_factory=list, description="Caveats found in the file")
    meaning: str = Field()  # required here (the base defaults it to "")


class PromotedTokens(BaseModel):
    feature: int
    tokens: list[str] = Field(description="Tokens the decoder direction raises most through final norm + unembed")
    logits: list[Rounded] = Field(description="Their logit contributions (direction of unit activation)")


class ActiveFeature(BaseModel):
    feature: int
    activation: Rounded


class PositionFeatures(BaseModel):
    position: int
    token: str
    features: list[ActiveFeature] = Field(description="Top active features here, largest activation first")
    n_active: int = Field(description="How many features are non-zero at this position (L0)")


class Reconstruction(BaseModel):
    variance_explained: Rounded | None = Field(
        description="1 - sum|x - x_hat|^2 / sum|x - mean x|^2 over the non-BOS positions (null with fewer than 2)"
    )
    relative_error: Rounded = Field(description="Mean over non-BOS positions of |x - x_hat| / |x|")
    mean_l0: Rounded = Field(description="Mean number of active features per non-BOS position")
    loss_clean: Rounded | None = Field(description="Mean next-token loss (nats) of the prompt, model as is")
    loss_spliced: Rounded | None = Field(
        description="Same with the SAE reconstruction replacing the activation at every non-BOS position"
    )
    loss_zero_ablated: Rounded | None = Field(description="Same with the activation zeroed there (reference)")
    loss_increase: Rounded | None = Field(description="loss_spliced - loss_clean (0 = SAE loses nothing)")


class SaeFeaturesResult(Result):
    hook: str
    tokens: list[str]
    positions: list[PositionFeatures]
    reconstruction: Reconstruction | None
    promoted: list[PromotedTokens] = Field(description="For each listed feature, what its decoder direction promotes")
    meaning: str = Field()  # required here (the base defaults it to "")
    cost: Cost | None = Field(None, description="The estimate made before computing")
    dry_run: bool = Field(default=False, description="True: only the estimate, nothing computed")

    def heatmaps(self) -> list[Heatmap]:
        """Position x feature: each position's listed top features (hatched: not listed at that position)."""
        strongest: dict[int, float] = {}
        for row in self.positions:
            for entry in row.features:
                strongest[entry.feature] = max(strongest.get(entry.feature, entry.activation), entry.activation)
        if not strongest:
            return []
        ranked = sorted(strongest, key=lambda feature: (-strongest[feature], feature))
        drawn = ranked[:MAX_FEATURE_COLUMNS]
        column_of = {feature: i for i, feature in enumerate(drawn)}
        values: list[list[float | None]] = [[None] * len(drawn) for _ in self.positions]
        for r, row in enumerate(self.positions):
            for entry in row.features:
                if entry.feature in column_of:
                    values[r][column_of[entry.feature]] = entry.activation
        finite = [v for line in values for v in line if v is not None]
        notes = ["hatched: not listed at that position (<= its smallest listed activation)"]
        if len(ranked) > len(drawn):
            notes.append(f"drawn: the {len(drawn)} strongest of the {len(ranked)} features listed")
        return [
            Heatmap(
                name="features",
                title=f"SAE features on {self.hook}: top activations per position",
                values=values,
                rows=[f"{row.position} {row.token!r}" for row in self.positions],
                columns=[str(feature) for feature in drawn],
                row_axis="position",
                column_axis="feature (strongest first)",
                units="feature activation",
                signed=False,
                value_range=(0.0, max(finite)) if min(finite) >= 0 and max(finite) > 0 else None,
                notes=notes,
            )
        ]


class FeatureAttributionEntry(BaseModel):
    feature: int
    attribution: Rounded = Field(description="activation x (decoder direction . d metric / d activation)")
    activation: Rounded
    ablation_effect: Rounded | None = Field(
        None, description="metric - metric with this feature removed from the activation (exact, one forward pass)"
    )


class FeatureAttributionResult(Result):
    hook: str
    metric: str
    metric_value: Rounded | None
    positions: list[int] = Field(description="Positions whose features were summed")
    tokens: list[str]
    features: list[FeatureAttributionEntry] = Field(description="Largest |attribution| first")
    total_attribution: Rounded | None = Field(description="Sum over all active features at these positions")
    meaning: str = Field()  # required here (the base defaults it to "")
    cost: Cost | None = Field(None, description="The estimate made before computing")
    dry_run: bool = Field(default=False, description="True: only the estimate, nothing computed")


class SteeringVectorResult(Result):
    name: str
    hook: str = Field(description="Where generate adds it by default (resid_pre of `layer`)")
    layer: int
    source: str = Field(description="'contrast' (difference of means) or 'sae feature N on HOOK'")
    norm: Rounded
    typical_resid_norm: Rounded | None = Field(
        description="Mean norm of the residual at this hook over the prompts' non-BOS tokens"
    )
    norm_ratio: Rounded | None = Field(description="norm / typical_resid_norm")
    positive_projection: Rounded | None = Field(
        None, description="Mean projection of the positive prompts' residuals on the unit vector"
    )
    negative_projection: Rounded | None = Field(None, description="Same for the negative prompts")
    n_positive: int
    n_negative: int
    stored: list[str] = Field(description="Names of all stored steering vectors")
    meaning: str = Field()  # required here (the base defaults it to "")


class GeneratedToken(BaseModel):
    token: str
    logprob: Rounded = Field(description="log-prob of this token under the run that produced it")
    logprob_other: Rounded = Field(
        description="log-prob of the same token, same prefix, under the other run (baseline <-> intervened)"
    )


class Continuation(BaseModel):
    label: str = Field(description="baseline, intervened, or control:<steer name>")
    text: str = Field(description="The generated text (prompt not included)")
    tokens: list[GeneratedToken]
    total_logprob: Rounded
    total_logprob_other: Rounded


class GenerateResult(Result):
    prompt_tokens: int
    interventions: list[str] = Field(description="The interventions applied, in words")
    baseline: Continuation | None = Field(description="The continuation without interventions (null on a dry run)")
    intervened: Continuation | None
    controls: list[Continuation] = Field(
        description="Per steer: the same run with the steering vector replaced by a random one of equal norm"
    )
    first_difference: int | None = Field(
        description="Index of the first new token where intervened differs from baseline (null: identical)"
    )
    temperature: Rounded
    seed: int
    meaning: str = Field()  # required here (the base defaults it to "")
    cost: Cost | None = Field(None, description="The estimate made before computing")
    dry_run: bool = Field(default=False, description="True: only the estimate, nothing computed")


# ---- feature_exemplars ---------------------------------------------------------------------------------------------


class TokenEffectLite(BaseModel):
    token: str
    logit: Rounded = Field(description="Logit change per unit of activation (direct path: final norm + unembed)")


class Exemplar(BaseModel):
    activation: Rounded = Field(description="The unit's activation at the marked token")
    level: Rounded | None = Field(None, description="Quantile samples: the fraction of the max it was drawn at")
    row: int = Field(description="Context number in the corpus's training split (rows of `context` tokens)")
    position: int = Field(description="Position of the marked token in its context (0 = first corpus token)")
    marked: int = Field(description="Index in `tokens` of the marked token (the max, or the attending query)")
    attends_to: int | None = Field(
        None, description="Heads: position (in its context, like `position`) of the token the query attends to most"
    )
    attends_to_token: str | None = Field(None, description="Heads: that token")
    tokens: list[str] = Field(description="A window of tokens around the marked one")
    activations: list[Rounded] = Field(
        description="The unit's activation at each of `tokens` (heads: the attention the marked query pays it)"
    )


class Histogram(BaseModel):
    edges: list[Rounded] = Field(description="Bin edges over (0, max] of the active tokens' activations")
    counts: list[int] = Field(description="Tokens per bin in a uniform sample of the tokens where the unit is > 0")
    sampled: int = Field(description="Size of that sample (all such tokens when they are no more)")


class FeatureExemplarsResult(Result):
    meaning: str = Field()  # required here (the base defaults it to "")
    unit: str = Field(description="What was read, e.g. 'sae blocks.1.hook_resid_pre feature 7' or 'L1H2'")
    corpus: str
    source: Literal["scan", "index"] = Field(description="scan: a bounded corpus sample read now; index: a built index")
    tokens_read: int = Field(description="Corpus tokens the statistics cover (BOS excluded)")
    context: int = Field(description="Tokens per context row (BOS not counted)")
    max_activation: Rounded | None
    density: Rounded | None = Field(
        None, description="Fraction of tokens where the unit is active (> 0; heads: max non-BOS attention > 0.5)"
    )
    top: list[Exemplar] = Field(description="The top-k activating contexts, largest first")
    quantiles: list[Exemplar] = Field(description="Contexts at 10-90 % of the max (not only the top)")
    histogram: Histogram | None
    promoted: list[TokenEffectLite] = Field(default_factory=list, description="Tokens the unit's write raises most")
    suppressed: list[TokenEffectLite] = Field(default_factory=list, description="Tokens it lowers most")
    note: str = Field("", description="How the numbers were obtained and their limits")
    cost: Cost | None = None
    dry_run: bool = False

    def figures(self) -> list[TextStrip]:
        """The top contexts as a text strip (SAE-dashboard style): tokens coloured by activation, the max outlined."""
        shown = [exemplar for exemplar in self.top[:MAX_STRIP_CONTEXTS] if exemplar.tokens]
        if not shown:
            return []
        peak = max([self.max_activation or 0.0, *(v for e in shown for v in e.activations)])
        notes = [f"corpus {self.corpus} ({self.source}, {self.tokens_read:,} tokens read); label: rank, activation"]
        if len(self.top) > len(shown):
            notes.append(f"drawn: the top {len(shown)} of {len(self.top)} contexts")
        if self.top and self.top[0].attends_to is not None:
            notes.append("heads: each token's colour is the attention the marked query pays to it")
        return [
            TextStrip(
                name="exemplars",
                title=f"Top activating contexts of {self.unit}",
                lines=[list(zip(exemplar.tokens, exemplar.activations, strict=True)) for exemplar in shown],
                marked=[exemplar.marked for exemplar in shown],
                labels=[f"#{rank} {exemplar.activation:.3g}" for rank, exemplar in enumerate(shown, start=1)],
                units="activation" if self.top[0].attends_to is None else "attention weight",
                value_range=(0.0, peak if peak > 0 else 1.0),
                notes=notes,
            )
        ]


class ExemplarIndexResult(Result):
    meaning: str = Field()  # required here (the base defaults it to "")
    unit: str = Field(description="What the index covers")
    corpus: str
    folder: str = Field(description="Where the index is kept")
    context: int = Field(description="Tokens per context (BOS not counted)")
    contexts_total: int = Field(description="Contexts the index covers when complete")
    contexts_done: int
    tokens_indexed: int = Field(description="Corpus tokens read so far (BOS excluded)")
    top_k: int = Field(description="Top activations kept per unit")
    complete: bool
    resumed_from: int = Field(description="Contexts already done when this call started")
    seconds: Rounded
    tokens_per_second: Rounded | None = Field(description="Corpus tokens indexed per second in this call")
    note: str = ""
    cost: Cost | None = None
    dry_run: bool = False


# ---- search_features -----------------------------------------------------------------------------------------------


class FeatureMatch(BaseModel):
    unit: int = Field(description="SAE feature id, or neuron index in the layer")
    activation: Rounded = Field(description="Its activation on the text (at `position`)")
    position: int
    token: str
    summary: str | None = Field(
        None, description="Its exemplars in one line (max activation, the token and its context, density)"
    )


class SearchFeaturesResult(Result):
    meaning: str = Field()  # required here (the base defaults it to "")
    unit: str = Field(description="What was searched: an SAE's features or one MLP layer's neurons")
    tokens: list[str]
    position: int | None = Field(description="The position read; null = each unit at its own max over the text")
    matches: list[FeatureMatch] = Field(description="Units that fire most on the text, largest first")
    index: str | None = Field(description="The exemplar index the summaries come from, if any")
    note: str = ""
