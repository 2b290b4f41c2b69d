"""The read-only tools on SmolLM2-135M: grouped-query attention (9 query heads, 3 key/value heads),
RMSNorm, no biases. Same independent TransformerLens references as tests/test_reading.py, plus result sizes."""

from __future__ import annotations

import json

import pytest
import torch

from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.server.app import build_server
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.reading import run_with_cache as run_with_cache_module
from lens_mcp.tools.reading.attention_pattern import attention_pattern
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.logit_lens import logit_lens
from lens_mcp.tools.reading.run_with_cache import run_with_cache
from tests.mcp_client import call_tool, error_text, result_data
from tests.shared import (
    check_attention_pattern,
    check_head_attribution,
    check_logit_lens,
    check_run_with_cache_norms,
)

pytestmark = pytest.mark.slow

EIFFEL = "The Eiffel Tower is in the city of"
MAX_DEFAULT_CHARS = 8000  # about 2,000 tokens


def test_the_model_is_grouped_query(smol: ToolContext) -> None:
    bridge = smol.model.bridge
    assert (smol.model.cfg.n_heads, smol.model.cfg.n_key_value_heads) == (9, 3)
    assert tuple(bridge.W_O.shape) == (30, 9, 64, 576)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(
            bridge.to_tokens(EIFFEL),
            names_filter=["blocks.0.attn.hook_z", "blocks.0.attn.hook_k", "blocks.0.attn.hook_pattern"],
        )
    assert cache["blocks.0.attn.hook_z"].shape[2] == 9
    assert cache["blocks.0.attn.hook_k"].shape[2] == 3
    assert cache["blocks.0.attn.hook_pattern"].shape[1] == 9


@pytest.mark.parametrize(("wrong", "position"), [(" Rome", -1), (None, -1), (" Rome", 5)])
def test_head_attribution_matches_transformer_lens(smol: ToolContext, wrong: str | None, position: int) -> None:
    result = check_head_attribution(smol, EIFFEL, " Paris", wrong, position)
    assert len(result.heads) == 30 and all(len(row) == 9 for row in result.heads)
    assert result.other.pos_embed is None and result.other.mlp is not None and len(result.other.mlp) == 30
    assert result.other.attn_bias == 0.0 and result.other.unembed_bias == 0.0  # no biases in this model


def test_head_attribution_eiffel_is_explained(smol: ToolContext) -> None:
    result = head_attribution(smol, EIFFEL, " Paris", " Rome")
    assert result.actual > 0  # ' Paris' beats ' Rome'
    assert abs(result.total - result.actual) < 1e-3 and result.explained


@pytest.mark.parametrize(("position", "answer"), [(-1, " Paris"), (4, None)])
def test_logit_lens_final_row_is_the_model_output(smol: ToolContext, position: int, answer: str | None) -> None:
    result = check_logit_lens(smol, EIFFEL, position, answer)
    if answer is not None:
        assert result.top[-1].tokens[0] == " Paris"
        assert result.answer.ranks[-1] == 1


@pytest.mark.parametrize(
    ("hooks", "layers", "positions"),
    [
        (["resid_post"], None, None),
        (["z", "k", "v", "q", "mlp_post"], [0, 14, -1], [-1, 3]),
        (["pattern", "attn_scores"], [2, -1], None),
        (["blocks.7.attn.hook_rot_k", "ln_final.hook_scale", "blocks.2*.hook_resid_mid"], None, [0, -1]),
    ],
)
def test_run_with_cache_norms_match_cached_tensors(
    smol: ToolContext, hooks: list[str], layers: list[int] | None, positions: list[int] | None
) -> None:
    check_run_with_cache_norms(smol, EIFFEL, hooks, layers, positions)


def test_run_with_cache_holds_one_family(smol: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    hooked: list[list[str]] = []
    kept: list[dict] = []
    real = run_with_cache_module.summarizing_forward

    def spy(tc: ToolContext, tokens: torch.Tensor, names: list[str], summarize):
        hooked.append(list(names))

        def record(name: str, tensor: torch.Tensor) -> None:
            summarize(name, tensor)
            kept.append({"name": name})

        return real(tc, tokens, names, record)

    monkeypatch.setattr(run_with_cache_module, "summarizing_forward", spy)
    result = run_with_cache(smol, EIFFEL)
    assert hooked == [[f"blocks.{layer}.hook_resid_post" for layer in range(30)]]
    assert [k["name"] for k in kept] == hooked[0]  # each fired once, reduced to norms on the spot
    assert [s.hook for s in result.hooks] == ["resid_post"]
    assert count_hooks(smol.model.bridge) == 0


@pytest.mark.parametrize(("layer", "head"), [(0, 0), (5, 7), (-1, 8), (15, 4)])
def test_attention_pattern_matches_the_cache_on_gqa(smol: ToolContext, layer: int, head: int) -> None:
    result = check_attention_pattern(smol, EIFFEL, layer, head, 3, None)
    assert result.kv_head == (head % 9) // 3


def test_default_results_are_small(smol: ToolContext) -> None:
    sizes = {
        "run_with_cache": run_with_cache(smol, EIFFEL),
        "head_attribution": head_attribution(smol, EIFFEL, " Paris", " Rome"),
        "logit_lens": logit_lens(smol, EIFFEL, answer=" Paris"),
        "attention_pattern": attention_pattern(smol, EIFFEL, 5, 7),
    }
    for name, result in sizes.items():
        text = json.dumps(result.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)
        assert len(text) < MAX_DEFAULT_CHARS, (name, len(text))


async def test_through_the_client(smol_host: ModelHost) -> None:
    server = build_server(smol_host)
    data = result_data(
        await call_tool(server, "head_attribution", {"prompt": EIFFEL, "answer": " Paris", "wrong_answer": " Rome"})
    )
    assert data["explained"] and data["top_heads"]
    data = result_data(await call_tool(server, "logit_lens", {"prompt": EIFFEL, "answer": " Paris"}))
    assert data["top"][-1]["tokens"][0] == " Paris"
    message = error_text(await call_tool(server, "head_attribution", {"prompt": EIFFEL, "answer": "Barcelona"}))
    assert "answer must be a single token" in message and "' Barcelona' is a single token" in message
    message = error_text(await call_tool(server, "attention_pattern", {"prompt": EIFFEL, "layer": 30, "head": 0}))
    assert "layer=30" in message and "0..29" in message
    message = error_text(await call_tool(server, "attention_pattern", {"prompt": EIFFEL, "layer": 0, "head": 9}))
    assert "head=9" in message and "0..8" in message
