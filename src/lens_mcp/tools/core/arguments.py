"""The public arguments that several tools share, declared once: one type, one description, one wording in
every tool's schema (tool and argument names are a public API)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from lens_mcp.tools.core.metrics import MetricName
from lens_mcp.tools.core.patching import Direction

Prompt = Annotated[str, Field(description="The text to run (BOS is prepended)")]
CleanPrompt = Annotated[
    str | None,
    Field(
        description="The clean prompt, whose activations are patched in (denoise), e.g. 'The Eiffel Tower is in "
        "the city of' (or pass pairs)"
    ),
]
CorruptedPrompt = Annotated[
    str | None,
    Field(
        description="The corrupted prompt; must tokenize to the clean prompt's length, e.g. 'The Colosseum is in "
        "the city of'"
    ),
]
Answer = Annotated[str | None, Field(description="The clean prompt's answer, one token (e.g. ' Paris')")]
WrongAnswer = Annotated[
    str | None,
    Field(
        description="The competing answer (the corrupted prompt's), one token (e.g. ' Rome'); needed for "
        "metric='logit_diff'"
    ),
]
TargetAnswer = Annotated[str, Field(description="The expected next token, one token (e.g. ' Paris')")]
CompetingAnswer = Annotated[
    str | None,
    Field(
        description="A competing token (' Rome'); attribute logit(answer) - logit(wrong_answer). Omitted: "
        "logit(answer) alone"
    ),
]
PatchMetric = Annotated[
    MetricName,
    Field(
        description="logit_diff: logit(answer) - logit(wrong_answer); prob / logprob: of answer. At the last position"
    ),
]
Normalize = Annotated[
    bool,
    Field(
        description="Normalize so 0 = no effect and 1 = the full clean - corrupted difference (restored when "
        "denoising, destroyed when noising); with pairs, pooled: (mean patched - mean corrupted) / (mean clean - "
        "mean corrupted)"
    ),
]
PatchDirection = Annotated[
    Direction,
    Field(
        description="denoise: clean activation into the corrupted run (1 = restores the clean behaviour); noise: "
        "corrupted activation into the clean run (1 = fully breaks it)"
    ),
]
SweepLayers = Annotated[list[int] | None, Field(description="Layers (null: all; negative counts from the end)")]
SweepPositions = Annotated[
    list[int] | None,
    Field(description="Positions (null: all; BOS is 0, -1 the last); not used by per-head components"),
]
DryRun = Annotated[
    bool, Field(description="Only estimate the cost (work, passes, seconds, result size); compute nothing")
]
Position = Annotated[int, Field(description="Position to read (-1 = last)")]
Layer = Annotated[int, Field(description="Layer (0-based; -1 = last)")]
Head = Annotated[int, Field(description="Query head in that layer (0..n_heads-1 from model_info)")]
