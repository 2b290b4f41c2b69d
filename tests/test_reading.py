"""The read-only tools on the toy model: run_with_cache, head_attribution, logit_lens,
attention_pattern. Numbers are checked against TransformerLens's own computations (ActivationCache helpers on
an independent run_with_cache); bad input through a real MCP client in both client modes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.server.app import build_server
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.reading import run_with_cache as run_with_cache_module
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.logit_lens import logit_lens
from lens_mcp.tools.reading.run_with_cache import run_with_cache
from tests.mcp_client import MODES, call_tool, error_text, result_data
from tests.shared import (
    TOY_ANSWER,
    TOY_PROMPT,
    TOY_WRONG,
    check_attention_pattern,
    check_head_attribution,
    check_logit_lens,
    check_run_with_cache_norms,
    leak_reports,
)

# ---- independent references: TransformerLens on its own filtered run_with_cache -------------------------


# ---- numbers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wrong", "position"), [(TOY_WRONG, -1), (None, -1), (TOY_WRONG, 7), (None, 3)])
def test_head_attribution_matches_transformer_lens(toy: ToolContext, wrong: str | None, position: int) -> None:
    result = check_head_attribution(toy, TOY_PROMPT, TOY_ANSWER, wrong, position)
    assert len(result.heads) == toy.model.cfg.n_layers and len(result.heads[0]) == toy.model.cfg.n_heads
    assert len(result.top_heads) == min(10, toy.model.cfg.n_layers * toy.model.cfg.n_heads)
    assert result.metric == (f"logit({TOY_ANSWER!r}) - logit({wrong!r})" if wrong else f"logit({TOY_ANSWER!r})")


def test_head_attribution_top_k(toy: ToolContext) -> None:
    result = head_attribution(toy, TOY_PROMPT, TOY_ANSWER, TOY_WRONG, top_k=3)
    assert len(result.top_heads) == 3
    assert abs(result.top_heads[0].score) >= abs(result.top_heads[1].score) >= abs(result.top_heads[2].score)


@pytest.mark.parametrize(("position", "answer"), [(-1, TOY_ANSWER), (4, None), (0, "w3")])
def test_logit_lens_matches_accumulated_resid(toy: ToolContext, position: int, answer: str | None) -> None:
    result = check_logit_lens(toy, TOY_PROMPT, position, answer)
    assert (result.answer is None) == (answer is None)


def test_logit_lens_unembeds_one_position_only(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    from lens_mcp.tools.reading import logit_lens as lens_module

    shapes = []
    real_unembed = lens_module.unembed

    def spy(tc: ToolContext, normalized: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(normalized.shape))
        return real_unembed(tc, normalized)

    monkeypatch.setattr(lens_module, "unembed", spy)
    logit_lens(toy, TOY_PROMPT)
    assert shapes == [(toy.model.cfg.n_layers + 1, toy.model.cfg.d_model)]


@pytest.mark.parametrize(
    ("layer", "head", "top_k", "queries"), [(1, 0, 3, None), (-1, -1, 2, [-1, 2, 0]), (0, 2, 100, [9])]
)
def test_attention_pattern_matches_the_cache(
    toy: ToolContext, layer: int, head: int, top_k: int, queries: list[int] | None
) -> None:
    result = check_attention_pattern(toy, TOY_PROMPT, layer, head, top_k, queries)
    assert result.layer == layer % toy.model.cfg.n_layers and result.head == head % toy.model.cfg.n_heads
    assert result.kv_head == result.head  # no grouped-query attention here


@pytest.mark.parametrize(
    ("hooks", "layers", "positions"),
    [
        (["resid_post"], None, None),
        (["resid_pre", "attn_out", "z", "q", "k", "v"], [1], [-1, 0]),
        (["pattern", "attn_scores"], None, [3, -1]),
        (["blocks.1.attn.hook_z", "hook_embed", "blocks.*.ln1.hook_scale"], [0], None),
    ],
)
def test_run_with_cache_norms_match_cached_tensors(
    toy: ToolContext, hooks: list[str], layers: list[int] | None, positions: list[int] | None
) -> None:
    result = check_run_with_cache_norms(toy, TOY_PROMPT, hooks, layers, positions)
    assert result.hooks


def test_run_with_cache_groups_and_layers(toy: ToolContext) -> None:
    result = run_with_cache(
        toy,
        TOY_PROMPT,
        hooks=["blocks.1.attn.hook_z", "hook_embed", "blocks.*.hook_resid_post", "resid_post"],
        layers=[0],
    )
    by_hook = {s.hook: s for s in result.hooks}
    assert by_hook["z"].layers == [1]  # exact names are kept whatever layers= says
    assert by_hook["hook_embed"].layers == [None]
    assert by_hook["resid_post"].layers == [0]  # the glob and the family name the same hook point: once
    assert len(result.hooks) == 3


def test_run_with_cache_hooks_only_what_was_asked(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    real = run_with_cache_module.summarizing_forward

    def spy(tc: ToolContext, tokens: torch.Tensor, names: Any, summarize: Any) -> torch.Tensor:
        seen.append(list(names))
        return real(tc, tokens, names, summarize)

    monkeypatch.setattr(run_with_cache_module, "summarizing_forward", spy)
    run_with_cache(toy, TOY_PROMPT, hooks=["pattern"])
    assert seen == [[f"blocks.{layer}.attn.hook_pattern" for layer in range(toy.model.cfg.n_layers)]]
    assert count_hooks(toy.model.bridge) == 0


# ---- through the MCP client -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_tools_through_the_client(toy_host: ModelHost, mode: str) -> None:
    server = build_server(toy_host)
    calls = {
        "run_with_cache": {"prompt": TOY_PROMPT},
        "head_attribution": {"prompt": TOY_PROMPT, "answer": TOY_ANSWER, "wrong_answer": TOY_WRONG},
        "logit_lens": {"prompt": TOY_PROMPT, "answer": TOY_ANSWER},
        "attention_pattern": {"prompt": TOY_PROMPT, "layer": 1, "head": 0},
    }
    for name, arguments in calls.items():
        data = result_data(await call_tool(server, name, arguments, mode=mode))
        assert len(json.dumps(data)) < 8000, name
    data = result_data(await call_tool(server, "head_attribution", calls["head_attribution"], mode=mode))
    assert data["explained"] is True and abs(data["total"] - data["actual"]) < 1e-3
    assert leak_reports() == []


TOO_LONG = " ".join(f"w{i % 200 + 1}" for i in range(300))

BAD_CALLS = [
    ("head_attribution", {"prompt": TOY_PROMPT, "answer": "w5 w6"}, ["answer must be a single token", "'w5'"]),
    (
        "head_attribution",
        {"prompt": TOY_PROMPT, "answer": TOY_ANSWER, "wrong_answer": "w1 w2"},
        ["wrong_answer must be a single token"],
    ),
    (
        "head_attribution",
        {"prompt": TOY_PROMPT, "answer": TOY_ANSWER, "wrong_answer": TOY_ANSWER},
        ["wrong_answer is the same token"],
    ),
    ("head_attribution", {"prompt": TOY_PROMPT, "answer": TOY_ANSWER, "position": 11}, ["position=11", "-1"]),
    ("head_attribution", {"prompt": TOY_PROMPT, "answer": TOY_ANSWER, "top_k": 0}, ["top_k=0", "1.."]),
    ("head_attribution", {"prompt": "", "answer": TOY_ANSWER}, ["prompt is empty"]),
    ("head_attribution", {"prompt": TOO_LONG, "answer": TOY_ANSWER}, ["prompt is 301 tokens", "shorten"]),
    ("logit_lens", {"prompt": TOY_PROMPT, "answer": "w5 w6"}, ["answer must be a single token"]),
    ("logit_lens", {"prompt": TOY_PROMPT, "position": -12}, ["position=-12", "out of range"]),
    ("logit_lens", {"prompt": TOY_PROMPT, "top_k": 101}, ["top_k=101", "1..100"]),
    ("logit_lens", {"prompt": ""}, ["prompt is empty"]),
    ("logit_lens", {"prompt": TOO_LONG}, ["prompt is 301 tokens"]),
    ("attention_pattern", {"prompt": TOY_PROMPT, "layer": 2, "head": 0}, ["layer=2", "2 layers", "0..1"]),
    ("attention_pattern", {"prompt": TOY_PROMPT, "layer": 0, "head": 64}, ["head=64", "heads, so use 0.."]),
    (
        "attention_pattern",
        {"prompt": TOY_PROMPT, "layer": 0, "head": 0, "query_positions": [11]},
        ["query_positions=11", "out of range"],
    ),
    (
        "attention_pattern",
        {"prompt": TOY_PROMPT, "layer": 0, "head": 0, "query_positions": []},
        ["query_positions", "empty"],
    ),
    ("attention_pattern", {"prompt": "", "layer": 0, "head": 0}, ["prompt is empty"]),
    ("attention_pattern", {"prompt": TOO_LONG, "layer": 0, "head": 0}, ["prompt is 301 tokens"]),
    ("run_with_cache", {"prompt": TOY_PROMPT, "hooks": ["resid"]}, ["hooks", "'resid'", "resid_post", "pattern"]),
    ("run_with_cache", {"prompt": TOY_PROMPT, "hooks": ["blocks.9.*"]}, ["matches no hook point", "resid_pre"]),
    ("run_with_cache", {"prompt": TOY_PROMPT, "hooks": ["blocks.0.attn.hook_result"]}, ["never fires", "'z'"]),
    ("run_with_cache", {"prompt": TOY_PROMPT, "hooks": []}, ["hooks", "non-empty list"]),
    ("run_with_cache", {"prompt": TOY_PROMPT, "layers": [2]}, ["layers=2", "0..1"]),
    ("run_with_cache", {"prompt": TOY_PROMPT, "positions": [20]}, ["positions=20", "out of range"]),
    ("run_with_cache", {"prompt": ""}, ["prompt is empty"]),
    ("run_with_cache", {"prompt": TOO_LONG}, ["prompt is 301 tokens"]),
]


@pytest.mark.parametrize("mode", MODES)
async def test_bad_input_is_a_tool_error_naming_the_argument(toy_host: ModelHost, mode: str) -> None:
    server = build_server(toy_host)
    for name, arguments, fragments in BAD_CALLS:
        message = error_text(await call_tool(server, name, arguments, mode=mode))
        assert "unexpectedly" not in message, (name, arguments, message)
        for fragment in fragments:
            assert fragment in message, (name, arguments, message)
    assert leak_reports() == []


def test_run_with_cache_reports_hooks_that_did_not_fire(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    def skip_embed(tc: ToolContext, tokens: torch.Tensor, names: Any, summarize: Any) -> torch.Tensor:
        # as on a rotary model, where hook_pos_embed exists but never fires
        return real(tc, tokens, [n for n in names if n != "hook_pos_embed"], summarize)

    real = run_with_cache_module.summarizing_forward
    monkeypatch.setattr(run_with_cache_module, "summarizing_forward", skip_embed)
    result = run_with_cache(toy, TOY_PROMPT, hooks=["hook_pos_embed", "resid_pre"])
    assert result.not_fired == ["hook_pos_embed"]
    assert [s.hook for s in result.hooks] == ["resid_pre"]
    assert run_with_cache(toy, TOY_PROMPT).not_fired is None
