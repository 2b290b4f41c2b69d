"""head_attribution: direct logit attribution of every attention head (and of everything else in the residual
stream) to logit(answer) - logit(wrong_answer) at one position.

Each component's output at the position is divided by the final norm's scale cached on this very run (and
centred first when the final norm is a LayerNorm), then projected on W_U[:, answer] - W_U[:, wrong]: the
convention of TransformerLens's `apply_ln_to_stack`. Head outputs are z @ W_O per query head, so grouped-query
models (fewer key/value heads) need nothing special.

Whatever a block does between the heads' summed output and the residual stream is frozen on this very run, as
the final norm is: a norm after the sublayer (Gemma 2, OLMo 2) by its cached scale and its weight, a residual
multiplier (Granite) by its value, so the heads' terms sum exactly to the attention output. A linear output
transform (a logit scale) multiplies every term; a soft cap does not distribute over a sum, so on soft-capped
models the pre-cap logits (`slope * raw`) are attributed and the result says so."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from lens_mcp.schemas.reading import HeadAttribution
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.pairs import PairsArgument
from lens_mcp.tools.reading._head_sources import attribution_call


def head_attribution(
    tc: ToolContext,
    prompt: Annotated[str | None, Field(description="The text to run (BOS is prepended). Or pass pairs")] = None,
    answer: Annotated[
        str | None, Field(description="The expected next token, one token (usually with a leading space: ' Paris')")
    ] = None,
    wrong_answer: Annotated[
        str | None,
        Field(
            description=(
                "A competing token (' Rome'); attribute logit(answer) - logit(wrong_answer). "
                "Omitted: attribute logit(answer) alone"
            )
        ),
    ] = None,
    position: Annotated[int, Field(description="Position whose prediction is attributed (-1 = last)")] = -1,
    top_k: Annotated[int, Field(description="How many heads to list by absolute contribution")] = 10,
    by_source: Annotated[
        bool,
        Field(description="Also split one head's cell over the source positions it attends to (layer/head below)"),
    ] = False,
    layer: Annotated[int | None, Field(description="With by_source: the head's layer. Default: the top head's")] = None,
    head: Annotated[int | None, Field(description="With by_source: the head. Default: the top head")] = None,
    baseline_prompt: Annotated[
        str | None,
        Field(
            description="Attribute prompt minus this prompt (same answer tokens): separates heads that push the "
            "answer on any prompt from heads that carry what differs (e.g. the subject)"
        ),
    ] = None,
    pairs: PairsArgument = None,
) -> HeadAttribution:
    """Direct logit attribution: how much each attention head writes logit(answer) - logit(wrong_answer) (or
    logit(answer)) into the residual stream at `position`, through the final norm's scale taken from the same
    run (TransformerLens's apply_ln_to_stack convention). Returns the layer x head grid, the top_k heads by
    absolute value (sign kept: positive pushes towards answer), the direct contributions of the embeddings, each
    MLP and the biases, their sum `total`, and `actual` (the metric from the model's real logits); `explained`
    and `note` say whether total matches actual (within 1e-3 on fp32). Norms after each sublayer (Gemma 2, OLMo 2)
    are frozen on this run like the final norm; on soft-capped models (Gemma) every number is the pre-cap logit
    difference, as `metric` says. Direct effects only: a head that matters through later layers can score near 0
    here; patch it to see its total effect.
    by_source=true: the head (layer, head; default the top one) split over source positions: attention weight x
    value through W_O, in the grid's units; the parts sum to its cell. baseline_prompt: every number is prompt
    minus baseline (a head that pushes the answer on any prompt nets out). pairs=[{clean_prompt, answer,
    wrong_answer, corrupted_prompt?}]: the mean grid over pairs (corrupted_prompt, if given, is each pair's
    baseline) with its spread and each pair's metric."""

    return attribution_call(
        tc, prompt, answer, wrong_answer, position, top_k, by_source, layer, head, baseline_prompt, pairs
    )
