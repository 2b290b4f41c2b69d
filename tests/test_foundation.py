"""The foundation through a real MCP client, on the toy model: tools/list, model_info, tokenize,
load_model success and failure, start-up failure, the shared conventions."""

from __future__ import annotations

import math
import time

import pytest
from mcp import Client

from lens_mcp.limits import Limits
from lens_mcp.loading.specs import BUILTIN_DIR
from lens_mcp.model_host import ModelHost
from lens_mcp.schemas.common import round_sig
from lens_mcp.server.app import StartupModel, build_server
from lens_mcp.server.instructions import INSTRUCTIONS
from tests.mcp_client import MODES, call_tool, error_text, result_data
from tests.shared import leak_reports

TOY_DIR = str(BUILTIN_DIR / "toy_induction")


@pytest.mark.parametrize("mode", MODES)
async def test_tools_list_has_schemas_and_annotations(toy_host: ModelHost, mode: str) -> None:
    async with Client(build_server(toy_host), mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert {"model_info", "load_model", "tokenize"} <= set(tools)
    tokenize = tools["tokenize"]
    assert tokenize.input_schema["required"] == ["text"]
    assert tokenize.input_schema["properties"]["text"]["description"]
    assert tokenize.input_schema["properties"]["prepend_bos"]["default"] is True
    assert "ctx" not in tokenize.input_schema["properties"]
    assert set(tokenize.output_schema["properties"]) >= {"n_tokens", "tokens", "is_single_token"}
    assert tokenize.annotations.read_only_hint is True
    assert tools["model_info"].annotations.read_only_hint is True
    assert tools["load_model"].annotations.read_only_hint is False
    for tool in tools.values():
        assert tool.description and len(tool.description.encode()) < 2048


@pytest.mark.parametrize("mode", MODES)
async def test_model_info_matches_the_bridge(toy_host: ModelHost, mode: str) -> None:
    info = result_data(await call_tool(build_server(toy_host), "model_info", mode=mode))
    cfg = toy_host.model.cfg
    assert (info["n_layers"], info["n_heads"], info["d_model"], info["d_head"]) == (
        cfg.n_layers,
        cfg.n_heads,
        cfg.d_model,
        cfg.d_head,
    )
    assert info["n_kv_heads"] == cfg.n_heads
    assert info["d_vocab"] == cfg.d_vocab and info["n_ctx"] == cfg.n_ctx
    assert info["name"] == "toy-induction" and info["source"] == "builtin"
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert {"resid_pre", "pattern", "z", "attn_out"} <= set(info["hook_families"])
    assert info["max_prompt_tokens"] == min(Limits().max_prompt_tokens, cfg.n_ctx)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("text", ["w1 w2 w3", "w7", "w1  w2\tw3 w4"])
async def test_tokenize_equals_the_tokenizer(toy_host: ModelHost, mode: str, text: str) -> None:
    tokenizer = toy_host.model.tokenizer
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    data = result_data(await call_tool(build_server(toy_host), "tokenize", {"text": text}, mode=mode))
    assert [pair[0] for pair in data["tokens"]] == [tokenizer.bos_token_id, *expected]
    assert [pair[1] for pair in data["tokens"][1:]] == [tokenizer.decode([i]) for i in expected]
    assert data["n_tokens"] == len(expected) + 1
    assert data["is_single_token"] == (len(expected) == 1)
    no_bos = result_data(
        await call_tool(build_server(toy_host), "tokenize", {"text": text, "prepend_bos": False}, mode=mode)
    )
    assert [pair[0] for pair in no_bos["tokens"]] == expected


async def test_tokenize_rejects_empty_text(toy_host: ModelHost) -> None:
    message = error_text(await call_tool(build_server(toy_host), "tokenize", {"text": ""}))
    assert "text is empty" in message


@pytest.mark.parametrize("mode", MODES)
async def test_load_model_failures_keep_the_previous_model(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    host = ModelHost()
    host.load("toy-induction")
    server = build_server(host)
    async with Client(server, mode=mode) as client:
        bad_path = await client.call_tool("load_model", {"model": "/no/such/model/folder"})
        assert bad_path.is_error and "no such file or folder" in bad_path.content[0].text
        started = time.perf_counter()
        offline = await client.call_tool("load_model", {"model": "EleutherAI/pythia-70m"})
        assert time.perf_counter() - started < 10, "an offline hub name must fail fast"
        assert offline.is_error
        assert "cannot be reached" in offline.content[0].text and "save_pretrained" in offline.content[0].text
        gguf = await client.call_tool("load_model", {"model": "/tmp/missing-model.gguf"})
        assert gguf.is_error and "no such file" in gguf.content[0].text
        still = result_data(await client.call_tool("model_info", {}))
        assert still["name"] == "toy-induction"
        tokens = result_data(await client.call_tool("tokenize", {"text": "w1 w2"}))
        assert tokens["n_tokens"] == 3


async def test_load_model_from_a_local_folder_swaps_the_model() -> None:
    host = ModelHost()
    server = build_server(host, StartupModel("/definitely/missing"))
    messages: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with Client(server) as client:
        failed = await client.call_tool("model_info", {})
        assert failed.is_error and "no model is loaded" in failed.content[0].text
        assert "load_model" in failed.content[0].text
        info = result_data(await client.call_tool("load_model", {"model": TOY_DIR}, progress_callback=on_progress))
        assert info["source"] == "local" and info["n_layers"] == 2
        assert info["load_seconds"] > 0
        assert any("loaded" in m for m in messages)
        assert result_data(await client.call_tool("model_info", {}))["name"] == TOY_DIR


def test_builtin_model_has_a_known_circuit_file() -> None:
    assert (BUILTIN_DIR / "toy_induction" / "circuit.json").is_file()
    assert sum(p.stat().st_size for p in (BUILTIN_DIR / "toy_induction").iterdir()) < 2_000_000


def test_round_sig_keeps_four_significant_digits() -> None:
    assert round_sig(123456.0) == 123500.0
    assert round_sig(0.000123456) == 0.0001235
    assert round_sig(-2.718281) == -2.718
    assert round_sig(0.0) == 0.0
    assert math.isnan(round_sig(float("nan")))


def test_instructions_fit_claude_code() -> None:
    assert len(INSTRUCTIONS.encode()) < 2048


def test_limits_come_from_env_then_flags() -> None:
    limits = Limits.from_env({"LENS_MCP_MAX_SWEEP_CELLS": "7", "LENS_MCP_MAX_TOP_K": "9"}, max_top_k=3)
    assert limits.max_sweep_cells == 7 and limits.max_top_k == 3
    with pytest.raises(ValueError):
        Limits.from_env({"LENS_MCP_MAX_TOP_K": "lots"})
    with pytest.raises(ValueError):
        Limits.from_env({}, max_top_k=0)


def test_no_hook_is_left_after_calls(toy_host: ModelHost) -> None:
    assert leak_reports() == []
