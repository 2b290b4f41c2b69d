"""Schemas of the read-only tools: run_with_cache, head_attribution, logit_lens, attention_pattern."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lens_mcp.schemas.common import Grid, GridSpread, HeadScore, PairMetrics, Result, Rounded, TopToken, warnings_field
from lens_mcp.schemas.components import BaselineComparison, SourceSplit
from lens_mcp.schemas.figures import Heatmap, layer_labels, position_labels

MAX_CACHE_HEATMAPS = 6

# ---- run_with_cache ------------------------------------------------------------------------------


class HookSummary(BaseModel):
    hook: str = Field(
        description="The family (resid_post), or the hook name with {layer} standing for each "
        "row's layer, or the hook name of a point outside the blocks"
    )
    layers: list[int | None] = Field(description="The layer of each row (null: a point outside the blocks)")
    shape: list[int] = Field(description="Shape of one row's activation as TransformerLens caches it (batch first)")
    norms: Grid | None = Field(
        None,
        description="Rows x positions: L2 norm of the activation at each position "
        "(over all other axes, e.g. heads and d_head; masked -inf "
        "scores left out). Null for attention patterns",
    )
    entropy: Grid | None = Field(
        None,
        description="Attention patterns only: rows x heads, mean entropy (nats) of "
        "each head's attention over the listed query positions",
    )
    top_source: list[list[list[int]]] | None = Field(
        None,
        description="Attention patterns only: rows x heads x query positions: the source position each "
        "query attends to most",
    )


class CacheSummary(Result):
    tokens: list[str] = Field(description="String tokens of the prompt (BOS is position 0)")
    positions: list[int] = Field(description="The positions (columns) the summaries cover")
    top_predictions: list[TopToken] = Field(description="Top-k next-token predictions at the last position")
    hooks: list[HookSummary]
    not_fired: list[str] | None = Field(
        None,
        description="Requested hook points that exist but did not fire on "
        "this model's forward pass (e.g. hook_pos_embed under "
        "rotary embeddings)",
    )

    def explain(self) -> str:
        return (
            "norms: L2 norm of each activation per layer (row) and position (column), >= 0, in the model's units; "
            "attention patterns: mean entropy in nats per head (0 = one source, ln(n) = uniform)"
        )

    def heatmaps(self) -> list[Heatmap]:
        maps = []
        for summary in self.hooks[:MAX_CACHE_HEATMAPS]:
            rows = layer_labels(summary.layers)
            if summary.norms is not None:
                maps.append(
                    Heatmap(
                        name=f"norms-{summary.hook}",
                        title=f"{summary.hook}: L2 norm per position",
                        values=[list(row) for row in summary.norms],
                        rows=rows,
                        columns=position_labels(self.positions, self.tokens),
                        row_axis="layer",
                        column_axis="position",
                        units="L2 norm",
                        signed=False,
                    )
                )
            elif summary.entropy is not None:
                n_heads = len(summary.entropy[0]) if summary.entropy else 0
                maps.append(
                    Heatmap(
                        name=f"entropy-{summary.hook}",
                        title=f"{summary.hook}: mean attention entropy per head",
                        values=[list(row) for row in summary.entropy],
                        rows=rows,
                        columns=[str(h) for h in range(n_heads)],
                        row_axis="layer",
                        column_axis="head",
                        units="entropy (nats)",
                        signed=False,
                    )
                )
        return maps


# ---- head_attribution ----------------------------------------------------------------------------


class OtherComponents(BaseModel):
    embed: Rounded = Field(description="Token embedding")
    pos_embed: Rounded | None = Field(None, description="Learned positional embedding (null: none, e.g. rotary)")
    mlp: list[Rounded] | None = Field(
        None, description="Each layer's MLP output, in layer order (null: attention-only model)"
    )
    attn_bias: Rounded = Field(description="The attention output biases b_O of all layers together")
    unembed_bias: Rounded = Field(description="The unembedding bias b_U (not scaled by the final norm)")


class HeadAttribution(Result):
    metric: str = Field(description="What is attributed, e.g. logit(' Paris') - logit(' Rome')")
    position: int = Field(description="The position read (non-negative)")
    token: str = Field(description="The token at that position")
    heads: Grid = Field(
        description="Layers x heads: each head's direct contribution to the metric, through the "
        "final norm's cached scale (positive: pushes towards answer)"
    )
    top_heads: list[HeadScore] = Field(description="The top_k heads by absolute contribution, sign kept")
    other: OtherComponents = Field(description="Direct contributions of everything else in the residual stream")
    heads_total: Rounded = Field(description="Sum over all heads")
    total: Rounded = Field(description="Sum of every component (heads, other)")
    actual: Rounded = Field(description="The metric computed from the model's real logits")
    explained: bool = Field(description="Whether total equals actual within the tolerance")
    note: str = Field(description="How well the decomposition accounts for the real value")
    by_source: SourceSplit | None = Field(
        default=None, description="With by_source=true: one head's cell split over the source positions it reads"
    )
    baseline: BaselineComparison | None = Field(
        default=None,
        description="With baseline_prompt: every number above is prompt minus baseline; this has both sides",
    )
    spread: GridSpread | None = Field(
        default=None, description="With pairs: how each cell of `heads` varies over the pairs"
    )
    pairs: list[PairMetrics] | None = Field(
        default=None,
        description="With pairs: each pair's metric on its prompt (and on its corrupted_prompt, the baseline)",
    )
    warnings: list[str] = warnings_field()

    def explain(self) -> str:
        return (
            f"heads[layer][head]: that head's direct contribution to {self.metric} at position {self.position}, "
            "in logits; positive pushes towards the answer; total sums every component"
        )

    def heatmaps(self) -> list[Heatmap]:
        n_heads = len(self.heads[0]) if self.heads else 0
        versus = ", prompt minus baseline" if self.baseline is not None else ""
        over = f", mean over {self.spread.n_pairs} pairs" if self.spread is not None else ""
        maps = [
            Heatmap(
                name="heads",
                title=f"Direct logit attribution to {self.metric} at position {self.position} {self.token!r}"
                f"{versus}{over}",
                values=[list(row) for row in self.heads],
                rows=[str(layer) for layer in range(len(self.heads))],
                columns=[str(head) for head in range(n_heads)],
                row_axis="layer",
                column_axis="head",
                units="direct contribution (logits)",
                signed=True,
            )
        ]
        if self.by_source is not None and self.by_source.sources:
            maps.append(self.source_heatmap(self.by_source, versus))
        return maps

    def source_heatmap(self, split: SourceSplit, versus: str) -> Heatmap:
        """by_source: the one head's cell split over the source positions listed, in position order."""
        sources = sorted(split.sources, key=lambda part: part.position)
        return Heatmap(
            name="by_source",
            title=f"L{split.layer}H{split.head}'s direct contribution to {self.metric} at position {self.position} "
            f"{self.token!r}, by source position{versus}",
            values=[[part.contribution for part in sources]],
            rows=[f"L{split.layer}H{split.head}"],
            columns=[f"{part.position} {part.token!r}" for part in sources],
            row_axis="head",
            column_axis="source position",
            units="direct contribution (logits)",
            signed=True,
            annotations=[[f"a={part.attention:.2f}" for part in sources]],
            notes=[
                "cell text: the head's attention weight to that source",
                f"the {len(sources)} largest |contribution|; the rest sum to {split.rest:.3g} (score {split.score:.3g})",
            ],
        )


# ---- logit_lens ----------------------------------------------------------------------------------


class AnswerTrajectory(BaseModel):
    token: str
    id: int
    probs: list[Rounded] = Field(description="Probability of the answer at each row")
    ranks: list[int] = Field(description="Rank of the answer at each row (1 = top)")


class TopTokens(BaseModel):
    """A top-k list as columns: tokens[i], ids[i] and probs[i] are the i-th most likely token."""

    tokens: list[str] = Field(description="The tokens' strings, most likely first")
    ids: list[int] = Field(description="The token ids")
    probs: list[Rounded] = Field(description="Softmax probabilities 0..1")


class LogitLens(Result):
    position: int = Field(description="The position read (non-negative)")
    token: str = Field(description="The token at that position")
    rows: list[str] = Field(
        description="Row labels: 'L_pre' is the residual stream entering layer L; "
        "'final' is the last layer's output, i.e. the model's real prediction"
    )
    top: list[TopTokens] = Field(
        description="Per row, the top-k tokens after the final norm and unembedding, as columns (the i-th token, "
        "id and probability belong together)"
    )
    answer: AnswerTrajectory | None = Field(None, description="The answer's probability and rank per row")
    warnings: list[str] = warnings_field()

    def explain(self) -> str:
        text = "prob: softmax probability 0..1 of each token, read off the residual stream before each layer"
        if self.answer is not None:
            text += f"; answer.ranks: rank of {self.answer.token!r} per row (1 = top prediction)"
        return text + "; the 'final' row is the model's real prediction"

    def heatmaps(self) -> list[Heatmap]:
        rows: list[str] = []
        values: list[list[float | None]] = []
        notes: list[str] = []
        annotations: list[list[str]] = []
        if self.answer is not None:
            rows.append(f"p({self.answer.token!r})")
            values.append(list(self.answer.probs))
            annotations.append([f"#{rank}" for rank in self.answer.ranks])
            notes.append(f"row p({self.answer.token!r}): cell text = the answer's rank (#1 = top)")
        rows.append("top-1")
        values.append([row.probs[0] if row.probs else None for row in self.top])
        annotations.append([row.tokens[0] if row.tokens else "" for row in self.top])
        notes.append("row top-1: cell text = the top token")
        return [
            Heatmap(
                name="lens",
                title=f"Logit lens at position {self.position} {self.token!r}",
                values=values,
                rows=rows,
                columns=[label.removesuffix("_pre") for label in self.rows],
                row_axis="",
                column_axis="residual stream entering layer (final = model output)",
                units="probability",
                signed=False,
                value_range=(0.0, 1.0),
                annotations=annotations,
                notes=notes,
            )
        ]


# ---- attention_pattern ---------------------------------------------------------------------------


class AttendedSource(BaseModel):
    position: int
    token: str
    weight: Rounded = Field(description="Attention weight (the row sums to 1 over sources 0..query)")


class QueryAttention(BaseModel):
    position: int = Field(description="Query position")
    token: str
    entropy: Rounded = Field(description="Entropy of this query's attention, nats")
    top: list[AttendedSource] = Field(description="The most-attended source positions, highest weight first")


class AttentionPattern(Result):
    layer: int
    head: int
    kv_head: int = Field(
        description="The key/value head this query head reads (differs from head under grouped-query attention)"
    )
    n_tokens: int = Field(description="Prompt length, BOS included")
    mean_entropy: Rounded = Field(
        description="Mean entropy (nats) over the listed query positions; 0 = one source only, ln(n) = uniform"
    )
    queries: list[QueryAttention]

    def explain(self) -> str:
        return (
            f"weight: share 0..1 of L{self.layer}H{self.head}'s attention from each query position to a source "
            "position (each query's weights over all sources sum to 1); entropy in nats (0 = one source)"
        )

    def heatmaps(self) -> list[Heatmap]:
        tokens: dict[int, str] = {q.position: q.token for q in self.queries}
        for query in self.queries:
            for source in query.top:
                tokens[source.position] = source.token
        n = self.n_tokens
        values: list[list[float | None]] = [[None] * n for _ in self.queries]
        for row, query in enumerate(self.queries):
            for source in query.top:
                values[row][source.position] = source.weight
        token_list = [tokens.get(position) for position in range(n)]
        labels = [f"{p} {t!r}" if t is not None else str(p) for p, t in enumerate(token_list)]
        return [
            Heatmap(
                name="pattern",
                title=f"Attention of L{self.layer}H{self.head}: top sources per query",
                values=values,
                rows=position_labels([q.position for q in self.queries], token_list),
                columns=labels,
                row_axis="query position",
                column_axis="source position",
                units="attention weight",
                signed=False,
                value_range=(0.0, 1.0),
                notes=["hatched: a source outside the top_k listed for that query (its weight is not reported)"],
            )
        ]
