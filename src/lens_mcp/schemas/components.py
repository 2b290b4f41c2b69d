"""Schemas of the tools that read what one component writes and reads: head_output, neuron_attribution,
mlp_neurons, and the parts head_attribution adds (by_source, baseline_prompt)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lens_mcp.schemas.common import Result, Rounded


class TokenEffect(BaseModel):
    token: str
    id: int
    logit: Rounded = Field(description="Direct contribution to this token's logit (frozen final-norm scale)")


# ---- head_attribution extras ---------------------------------------------------------------------


class SourcePart(BaseModel):
    position: int = Field(description="Source (key) position")
    token: str
    attention: Rounded = Field(description="The head's attention weight from the read position to this source")
    contribution: Rounded = Field(
        description="attention x (value at this source) through W_O, projected like the grid: this source's "
        "share of the head's score (with a baseline: prompt minus baseline at this position)"
    )


class SourceSplit(BaseModel):
    layer: int
    head: int
    kv_head: int = Field(description="The key/value head this query head reads (grouped-query attention)")
    score: Rounded = Field(description="The head's cell of the grid; the parts below sum to it")
    sources: list[SourcePart] = Field(description="The top_k source positions by absolute contribution")
    rest: Rounded = Field(description="Sum of the contributions of the sources not listed")
    meaning: str


class HeadPair(BaseModel):
    layer: int
    head: int
    prompt_score: Rounded = Field(description="The head's direct contribution on the prompt")
    baseline_score: Rounded = Field(description="The head's direct contribution on the baseline prompt")
    difference: Rounded = Field(description="prompt_score - baseline_score (the grid's cell)")


class BaselineComparison(BaseModel):
    baseline_position: int = Field(description="The position read on the baseline prompt")
    baseline_token: str
    prompt_actual: Rounded = Field(description="The metric on the prompt")
    baseline_actual: Rounded = Field(description="The metric on the baseline prompt")
    top_heads: list[HeadPair] = Field(description="The top_k heads of the difference grid, with both scores")
    meaning: str


# ---- head_output ---------------------------------------------------------------------------------


class OVReadout(BaseModel):
    source_position: int = Field(description="The source position whose value the OV circuit carries")
    source_token: str
    attention: Rounded = Field(description="The head's attention weight from the read position to this source")
    promoted: list[TokenEffect] = Field(description="Tokens whose logits the head's write from this source raises most")
    suppressed: list[TokenEffect] = Field(description="Tokens whose logits it lowers most")
    source_token_rank: int = Field(
        description="Rank of the source's own token among all tokens by this write (1 = raised most, "
        "d_vocab = lowered most)"
    )
    source_token_logit: Rounded = Field(description="The write's direct contribution to the source token's logit")
    behaviour: Literal["copying", "suppression", "neither"] = Field(
        description="copying: the source token is among the top 10 raised; suppression: among the 10 lowered"
    )


class HeadOutput(Result):
    layer: int
    head: int
    kv_head: int = Field(description="The key/value head this query head reads (grouped-query attention)")
    position: int = Field(description="The position read (non-negative)")
    token: str
    output_norm: Rounded = Field(description="L2 norm of the head's output z @ W_O at the position")
    promoted: list[TokenEffect] = Field(description="The top_k tokens the head's output raises most at the position")
    suppressed: list[TokenEffect] = Field(description="The top_k tokens it lowers most")
    ov: OVReadout = Field(description="The head's OV circuit applied to one source position's value")
    meaning: str = Field()  # required here (the base defaults it to "")
    note: str = Field("", description="Caveats of this readout on this model")


# ---- neuron_attribution / mlp_neurons ------------------------------------------------------------


class NeuronScore(BaseModel):
    layer: int
    neuron: int
    activation: Rounded = Field(
        description="The neuron's activation (hook_post: act(pre), or act(gate) x up for a gated MLP)"
    )
    attribution: Rounded = Field(description="activation x W_out row . direction: its direct effect on the metric")


class NeuronAttribution(Result):
    metric: str = Field(description="What is attributed, e.g. logit(' Paris') - logit(' Rome')")
    position: int
    token: str
    layers: list[int] = Field(description="The MLP layers searched")
    top_neurons: list[NeuronScore] = Field(description="The top_k neurons by absolute attribution, sign kept")
    layer_totals: list[Rounded] = Field(
        description="Per searched layer: the sum over all its neurons (its MLP's direct effect, less b_out)"
    )
    bias_totals: list[Rounded] = Field(description="Per searched layer: b_out's direct effect (0 without b_out)")
    actual: Rounded = Field(description="The metric from the model's real logits")
    meaning: str = Field()  # required here (the base defaults it to "")
    note: str = Field("", description="Caveats of this readout on this model")


class MLPNeuron(BaseModel):
    neuron: int
    activation: Rounded = Field(description="hook_post: act(pre), or act(gate) x up for a gated MLP")
    promoted: list[TokenEffect] = Field(description="Tokens this neuron's write (activation x W_out row) raises most")
    suppressed: list[TokenEffect] = Field(description="Tokens it lowers most")


class MLPNeurons(Result):
    layer: int
    position: int
    token: str
    d_mlp: int = Field(description="Neurons in this layer")
    gated: bool = Field(description="Whether the MLP is gated (activation = act(gate) x up)")
    neurons: list[MLPNeuron] = Field(description="The top_k neurons by absolute activation at the position")
    meaning: str = Field()  # required here (the base defaults it to "")
    note: str = Field("", description="Caveats of this readout on this model")
