"""MCP prompts (the standard investigations) and resources (model facts), through a real client session."""

from __future__ import annotations

import json

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from lens_mcp.server.instructions import INSTRUCTIONS
from lens_mcp.server.prompts import PROMPTS
from lens_mcp.tools.core.hook_names import FAMILY_TEMPLATES
from tests.mcp_client import MODES, result_data


@pytest.mark.parametrize("mode", MODES)
async def test_prompts_are_listed_with_their_arguments(toy_host: ModelHost, mode: str) -> None:
    async with Client(build_server(toy_host), mode=mode) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
    assert set(prompts) == {"locate_fact", "find_induction_circuit", "explain_prediction", "find_circuit"}
    arguments = {arg.name: arg for arg in prompts["locate_fact"].arguments or []}
    assert {name for name, arg in arguments.items() if arg.required} == {"prompt", "answer"}
    assert {"corrupted_prompt", "wrong_answer"} <= set(arguments)
    for prompt in prompts.values():
        assert prompt.title and prompt.description and len(prompt.description.encode()) < 2048
        assert all(arg.description for arg in prompt.arguments or [])


async def test_locate_fact_renders_the_plan_with_the_arguments(toy_host: ModelHost) -> None:
    async with Client(build_server(toy_host)) as client:
        full = await client.get_prompt(
            "locate_fact",
            {
                "prompt": "The Eiffel Tower is in the city of",
                "answer": " Paris",
                "corrupted_prompt": "The Colosseum is in the city of",
                "wrong_answer": " Rome",
            },
        )
        minimal = await client.get_prompt("locate_fact", {"prompt": "The Eiffel Tower is in", "answer": " Paris"})
    text = full.messages[0].content.text
    assert full.messages[0].role == "user"
    assert "'The Eiffel Tower is in the city of'" in text and "' Paris'" in text
    assert "'The Colosseum is in the city of'" in text and "' Rome'" in text
    order = [text.index(tool) for tool in ("tokenize", "logit_lens", "patch_sweep", "head_attribution")]
    assert order == sorted(order) and "resid_pre" in text
    # what the features at the subject mean, read from their exemplars, after the sweep
    assert text.index("patch_sweep") < text.index("search_features") < text.index("feature_exemplars(feature=")
    assert "none given" in minimal.messages[0].content.text  # tells the agent to build the corrupted prompt


async def test_other_prompts_render(toy_host: ModelHost) -> None:
    async with Client(build_server(toy_host)) as client:
        induction = (await client.get_prompt("find_induction_circuit", {"seq_len": "20"})).messages[0].content.text
        default = (await client.get_prompt("find_induction_circuit", {})).messages[0].content.text
        explain = (await client.get_prompt("explain_prediction", {"prompt": "w1 w2 w1"})).messages[0].content.text
    assert "induction_scores(seq_len=20)" in induction and "seq_len=" not in default
    assert "ablate_heads" in induction and "attention_pattern" in induction
    assert "'w1 w2 w1'" in explain and "head_attribution" in explain
    assert all(tool in explain for tool in ("feature_attribution(", "search_features(", "feature_exemplars("))
    assert {fn.__name__ for fn, _ in PROMPTS} == {
        "locate_fact",
        "find_induction_circuit",
        "explain_prediction",
        "find_circuit",
    }


@pytest.mark.parametrize("mode", MODES)
async def test_model_info_resource_matches_the_tool(toy_host: ModelHost, mode: str) -> None:
    async with Client(build_server(toy_host), mode=mode) as client:
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"lens://model/info", "lens://model/hooks", "lens://server/limits"} <= uris
        read = await client.read_resource("lens://model/info")
        tool = result_data(await client.call_tool("model_info", {}))
    assert read.contents[0].mime_type == "application/json"
    assert json.loads(read.contents[0].text) == tool


async def test_hooks_resource_is_compact_and_complete(toy_host: ModelHost) -> None:
    async with Client(build_server(toy_host)) as client:
        hooks = json.loads((await client.read_resource("lens://model/hooks")).contents[0].text)
    model = toy_host.model
    assert model is not None
    n_layers = model.cfg.n_layers
    expanded = {t.format(layer=layer) for t in hooks["per_layer"] for layer in range(n_layers)}
    expanded |= {t.format(layer=layer) for t, layers in hooks.get("some_layers_only", {}).items() for layer in layers}
    expanded |= set(hooks["other"])
    assert expanded == set(model.bridge.hook_dict)  # every hook point, nothing invented
    assert hooks["n_hook_points"] == len(model.bridge.hook_dict)
    assert "blocks.{layer}.hook_resid_pre" in hooks["per_layer"]
    assert hooks["families"]["resid_pre"] == FAMILY_TEMPLATES["resid_pre"]
    assert len(hooks["per_layer"]) + len(hooks["other"]) < len(model.bridge.hook_dict)


async def test_limits_resource(toy_host: ModelHost) -> None:
    async with Client(build_server(toy_host)) as client:
        limits = json.loads((await client.read_resource("lens://server/limits")).contents[0].text)
    assert limits == Limits().__dict__


async def test_resources_wait_for_the_load_and_explain_a_failed_one() -> None:
    host = ModelHost(Limits())
    host.load_in_background("toy-induction", device="cpu")  # still loading when the read arrives
    async with Client(build_server(host)) as client:
        info = json.loads((await client.read_resource("lens://model/info")).contents[0].text)
    assert info["name"] == "toy-induction"

    failed = ModelHost(Limits())
    failed.load_in_background("/no/such/model.gguf")
    async with Client(build_server(failed)) as client:
        with pytest.raises(MCPError, match="no model is loaded"):
            await client.read_resource("lens://model/hooks")


def test_instructions_mention_the_prompts_and_resources() -> None:
    assert len(INSTRUCTIONS.encode()) < 2048
    assert "lens://model/hooks" in INSTRUCTIONS and "locate_fact" in INSTRUCTIONS
