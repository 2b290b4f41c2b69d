"""Every result says in one line what its main number means; answers without a leading space warn."""

from __future__ import annotations

import pytest
import torch
from mcp import Client

from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from lens_mcp.tools.causal.ablate_heads import ablate_heads
from lens_mcp.tools.causal.patch_sweep import patch_sweep
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.logit_lens import logit_lens
from tests.mcp_client import call_tool, result_data

PROMPT = "w1 w2 w3 w1 w2"
TOY_CALLS = {
    "model_info": {},
    "tokenize": {"text": "w3"},
    "run_with_cache": {"prompt": PROMPT},
    "head_attribution": {"prompt": PROMPT, "answer": " w3"},
    "logit_lens": {"prompt": PROMPT, "answer": " w3"},
    "attention_pattern": {"prompt": PROMPT, "layer": 1, "head": 2},
    "patch_sweep": {"clean_prompt": PROMPT, "corrupted_prompt": "w1 w2 w3 w4 w2", "answer": " w3", "wrong_answer": " w4"},
    "ablate_heads": {"prompt": PROMPT, "heads": [[1, 2]], "answer": " w3"},
    "induction_scores": {"seq_len": 10},
    "edge_attribution": {"clean_prompt": PROMPT, "corrupted_prompt": "w1 w2 w3 w4 w2", "answer": " w3", "wrong_answer": " w4"},
    "circuit_faithfulness": {"clean_prompt": PROMPT, "corrupted_prompt": "w1 w2 w3 w4 w2", "answer": " w3", "wrong_answer": " w4", "nodes": ["L1H2"]},
    "circuits": {},
}  # fmt: skip


async def test_every_tool_declares_and_fills_meaning(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    async with Client(server) as client:
        tools = (await client.list_tools()).tools
    for tool in tools:
        schema = tool.output_schema or {}
        assert "meaning" in schema.get("properties", {}), tool.name
        if tool.name not in TOY_CALLS and tool.name != "load_model":
            # not called here (e.g. needs an SAE): its result model must make the tool pass a meaning
            assert "meaning" in schema.get("required", []), f"{tool.name}: add a toy call to TOY_CALLS"
    for name, arguments in TOY_CALLS.items():
        data = result_data(await call_tool(server, name, arguments))
        meaning = data["meaning"]
        assert list(data)[0] == "meaning", name  # first, where an agent reads first
        assert meaning and "\n" not in meaning and len(meaning) < 400, (name, meaning)


def test_patch_sweep_meaning_follows_normalization(toy: ToolContext) -> None:
    arguments = TOY_CALLS["patch_sweep"]
    normalized = patch_sweep(toy, **arguments)
    raw = patch_sweep(toy, **arguments, normalize=False)
    assert "1 = this clean activation alone restores the clean behaviour" in normalized.meaning
    assert raw.meaning.startswith("metric (logit(' w3') - logit(' w4')")
    noised = patch_sweep(toy, **arguments, direction="noise")
    assert "1 = this corrupted activation alone fully breaks the clean behaviour" in noised.meaning
    assert normalized.warnings == [] and raw.warnings == []  # the toy vocabulary has no space variants


EIFFEL = "The Eiffel Tower is in the city of"
COLOSSEUM = "The Colosseum is in the city of"


def _probs(smol: ToolContext, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return smol.model.bridge(smol.model.bridge.to_tokens(prompt))[0, -1].float().softmax(dim=-1)


def _id(smol: ToolContext, text: str) -> int:
    ids = smol.model.bridge.to_tokens(text, prepend_bos=False)[0]
    assert len(ids) == 1
    return int(ids[0])


@pytest.mark.slow
def test_answer_without_leading_space_warns_with_both_probabilities(smol: ToolContext) -> None:
    probs = _probs(smol, EIFFEL)
    p_bare, p_space = float(probs[_id(smol, "Paris")]), float(probs[_id(smol, " Paris")])
    assert p_space > 10 * p_bare  # the premise, computed independently
    expected = f"answer: 'Paris' has p={p_bare:.2g} here, ' Paris' p={p_space:.2g}: did you mean ' Paris'?"

    assert head_attribution(smol, EIFFEL, "Paris").warnings == [expected]
    assert logit_lens(smol, EIFFEL, answer="Paris", top_k=1).warnings == [expected]
    assert ablate_heads(smol, EIFFEL, [[0, 0]], "Paris").warnings == [expected]
    assert head_attribution(smol, EIFFEL, " Paris", " Rome").warnings == []

    rome = _probs(smol, COLOSSEUM)  # patch_sweep reads wrong_answer on the corrupted prompt
    p_rome, p_space_rome = float(rome[_id(smol, "Rome")]), float(rome[_id(smol, " Rome")])
    sweep = patch_sweep(smol, EIFFEL, COLOSSEUM, " Paris", "Rome", layers=[0], positions=[-1])
    assert sweep.warnings == [
        f"wrong_answer: 'Rome' has p={p_rome:.2g} here, ' Rome' p={p_space_rome:.2g}: did you mean ' Rome'?"
    ]


@pytest.mark.slow
def test_answer_that_is_only_single_token_with_a_space_is_refused_with_the_fix(smol: ToolContext) -> None:
    from lens_mcp.errors import LensError

    with pytest.raises(LensError, match="' Barcelona' is a single token: use that") as caught:
        head_attribution(smol, EIFFEL, "Barcelona")
    assert len(smol.model.bridge.to_tokens("Barcelona", prepend_bos=False)[0]) > 1  # the premise
    assert "answer must be a single token" in str(caught.value)
