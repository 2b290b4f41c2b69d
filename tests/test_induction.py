"""induction_scores on the toy model: the known circuit is found, the grids equal an independent computation
from run_with_cache patterns (random mode) and detect_head (prompt mode), one forward pass, determinism,
errors, and calls through a real MCP client."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformer_lens.head_detector import detect_head

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.loading.specs import BUILTIN_DIR
from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.server.app import build_server
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.reading.induction_scores import find_targets, induction_scores, repeated_random_tokens
from tests.mcp_client import MODES, call_tool, error_text, result_data
from tests.shared import assert_grid_close, by_hand

CIRCUIT_FILE = BUILTIN_DIR / "toy_induction" / "circuit.json"


def circuit() -> dict:
    return json.loads(CIRCUIT_FILE.read_text())


def test_known_circuit_ranks_first(toy: ToolContext) -> None:
    known = circuit()
    result = induction_scores(toy, seq_len=20, n_seqs=16)
    assert [result.top_induction[0].layer, result.top_induction[0].head] == known["induction_head"]
    assert result.top_induction[0].score > 0.5
    assert [result.top_previous_token[0].layer, result.top_previous_token[0].head] == known["previous_token_head"]
    assert result.loss_second_repeat is not None
    assert result.loss_first_repeat > 4 and result.loss_second_repeat < result.loss_first_repeat / 4
    assert result.mode == "random" and (result.n_seqs, result.n_tokens, result.seq_len) == (16, 41, 20)
    assert len(result.top_induction) == min(10, toy.model.cfg.n_layers * toy.model.cfg.n_heads)  # capped at all heads
    scores = [h.score for h in result.top_duplicate_token]
    assert scores == sorted(scores, reverse=True)


def test_random_mode_equals_patterns_by_hand(toy: ToolContext) -> None:
    result = induction_scores(toy, seq_len=22, n_seqs=6, seed=3)
    tokens, _ = repeated_random_tokens(toy, 22, 6, 3)
    grids, first, copy = by_hand(toy, tokens)
    assert_grid_close(result.induction, grids["induction"], "induction")
    assert_grid_close(result.duplicate_token, grids["duplicate"], "duplicate")
    assert_grid_close(result.previous_token, grids["previous"], "previous")
    assert math.isclose(result.loss_first_repeat, first, rel_tol=1e-3)
    assert math.isclose(result.loss_second_repeat, copy, rel_tol=1e-3, abs_tol=1e-4)
    p = result.positions
    assert (p.induction, p.duplicate_token, p.previous_token, p.first_seen, p.copyable) == (
        6 * 22,
        6 * 22,
        6 * 44,
        6 * 22,
        6 * 21,
    )


def test_random_tokens_are_seeded_ordinary_and_distinct(toy: ToolContext) -> None:
    tokens, pool = repeated_random_tokens(toy, 20, 8, 5)
    again, _ = repeated_random_tokens(toy, 20, 8, 5)
    other, _ = repeated_random_tokens(toy, 20, 8, 6)
    assert torch.equal(tokens, again) and not torch.equal(tokens, other)
    tokenizer = toy.model.bridge.tokenizer
    assert tokens.shape == (8, 41) and (tokens[:, 0] == tokenizer.bos_token_id).all()
    assert torch.equal(tokens[:, 1:21], tokens[:, 21:])
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    assert not special & set(tokens[:, 1:].flatten().tolist())
    assert all(len(set(row[1:21].tolist())) == 20 for row in tokens)
    assert "plain word" in pool
    first = induction_scores(toy, seq_len=20, seed=5).model_dump()
    assert first == induction_scores(toy, seq_len=20, seed=5).model_dump()
    assert first != induction_scores(toy, seq_len=20, seed=6).model_dump()


def test_example_prompt_reproduces_sequence_zero(toy: ToolContext) -> None:
    result = induction_scores(toy, seq_len=12, n_seqs=3, seed=1)
    tokens, _ = repeated_random_tokens(toy, 12, 3, 1)
    assert result.example_prompt is not None
    assert toy.model.bridge.to_tokens(result.example_prompt)[0].tolist() == tokens[0].tolist()


def test_one_batched_forward_pass(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    bridge = toy.model.bridge
    calls: list[tuple[int, ...]] = []
    original = bridge.forward

    def counting_forward(input, *args, **kwargs):
        calls.append(tuple(input.shape))
        return original(input, *args, **kwargs)

    monkeypatch.setattr(bridge, "forward", counting_forward)
    hooks_before = count_hooks(bridge)
    induction_scores(toy, seq_len=20, n_seqs=7)
    assert calls == [(7, 41)]
    calls.clear()
    induction_scores(toy, prompt="w1 w2 w3 w4 w1 w2 w3 w4")
    assert calls == [(1, 9)]
    assert count_hooks(bridge) == hooks_before


def test_find_targets_rules() -> None:
    # positions: 0 BOS, 1 a, 2 b, 3 a, 4 a, 5 b, 6 c
    targets = find_targets(torch.tensor([[0, 10, 11, 10, 10, 11, 12]]))

    def pairs(kind: str) -> list[tuple[int, int]]:
        _, q, k = targets.index[kind]
        return sorted(zip(q.tolist(), k.tolist(), strict=False))

    assert pairs("previous_token") == [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 5)]
    assert pairs("duplicate_token") == [(3, 1), (4, 1), (4, 3), (5, 2)]  # every earlier occurrence
    # after-occurrence targets only where they lie before the query: 4 -> 4 (after a@3) is dropped
    assert pairs("induction") == [(3, 2), (4, 2), (5, 3)]
    assert targets.n_queries == {"induction": 3, "duplicate_token": 3, "previous_token": 6}
    assert targets.first_seen[1].tolist() == [1, 2, 6]
    assert targets.copyable[1].tolist() == [5]  # b@5 follows a@4, and a@1 was followed by b


@pytest.mark.parametrize("prompt", ["w1 w2 w3 w4 w5 w6 w7 w1 w2 w3 w4 w5 w6 w7", "w9 w3 w8 w9 w3 w8 w9 w3 w8 w2 w9 w3"])
@pytest.mark.parametrize(
    "kind, field",
    [
        ("previous_token_head", "previous_token"),
        ("duplicate_token_head", "duplicate_token"),
        ("induction_head", "induction"),
    ],
)
def test_prompt_mode_agrees_with_detect_head(toy: ToolContext, prompt: str, kind: str, field: str) -> None:
    result = induction_scores(toy, prompt=prompt)
    assert result.mode == "prompt" and result.seq_len is None and result.example_prompt is None
    queries = getattr(result.positions, field)
    with torch.no_grad():
        detected = detect_head(toy.model.bridge, prompt, kind)  # attention on targets / all attention (every row)
    # ours averages over the queries that have a target, detect_head over all rows
    assert_grid_close(getattr(result, field), detected * result.n_tokens / queries, kind)


def test_prompt_mode_losses(toy: ToolContext) -> None:
    prompt = "w1 w2 w3 w4 w5 w6 w7 w1 w2 w3 w4 w5 w6 w7"
    result = induction_scores(toy, prompt=prompt)
    tokens = toy.model.bridge.to_tokens(prompt)
    with torch.no_grad():
        logits = toy.model.bridge(tokens)
    losses = -logits.log_softmax(-1)[0, :-1].gather(-1, tokens[0, 1:, None])[:, 0]
    assert math.isclose(result.loss_first_repeat, losses[0:7].mean().item(), rel_tol=1e-3)
    assert math.isclose(result.loss_second_repeat, losses[8:].mean().item(), rel_tol=1e-3, abs_tol=1e-4)
    assert (result.positions.first_seen, result.positions.copyable) == (7, 6)
    assert result.top_induction[0].score > 0.5


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            {"seq_len": 40},
            r"seq_len=40 is out of range: use 2..23\. Each sequence is 2\*seq_len\+1 tokens and must fit in 48 "
            r"\(model context n_ctx=48",
        ),  # 81 tokens do not fit the toy's context (the default shrinks to fit it instead)
        ({"seq_len": 1}, "seq_len=1 is out of range"),
        ({"seq_len": 20, "n_seqs": 0}, "n_seqs=0 is out of range"),
        ({"seq_len": 20, "top_k": 0}, "top_k=0 is out of range"),
        ({"seq_len": 20, "seed": -1}, "seed=-1 is out of range"),
        ({"prompt": "w1 w2 w3 w4"}, "no repeated token"),
        ({"prompt": "w1 w1"}, "no repeated token"),  # back to back: nothing in between
        ({"prompt": ""}, "prompt is empty"),
    ],
)
def test_bad_arguments(toy: ToolContext, arguments: dict, message: str) -> None:
    with pytest.raises(LensError, match=message):
        induction_scores(toy, **arguments)


def test_token_cap(toy_host: ModelHost) -> None:
    limits = Limits(max_induction_tokens=300)
    with toy_host.use() as model:
        tc = ToolContext(model, limits)
        induction_scores(tc, seq_len=20, n_seqs=7)  # 287 tokens
        with pytest.raises(
            LensError,
            match=r"8 x 41 = 328 tokens is over the limit of 300 "
            r"\(LENS_MCP_MAX_INDUCTION_TOKENS\); use n_seqs <= 7",
        ):
            induction_scores(tc, seq_len=20, n_seqs=8)


@pytest.mark.parametrize("mode", MODES)
async def test_through_mcp(toy_host: ModelHost, mode: str) -> None:
    server = build_server(toy_host)
    known = circuit()
    data = result_data(await call_tool(server, "induction_scores", {"seq_len": 20, "n_seqs": 8, "top_k": 3}, mode=mode))
    assert [data["top_induction"][0]["layer"], data["top_induction"][0]["head"]] == known["induction_head"]
    cfg = toy_host.model.cfg
    assert len(data["top_previous_token"]) == 3
    assert len(data["induction"]) == cfg.n_layers and len(data["induction"][0]) == cfg.n_heads
    assert data["loss_second_repeat"] < data["loss_first_repeat"] / 4
    prompt = result_data(
        await call_tool(
            server, "induction_scores", {"prompt": "w4 w8 w15 w16 w23 w42 w4 w8 w15 w16 w23 w42"}, mode=mode
        )
    )
    assert prompt["mode"] == "prompt" and prompt["positions"]["induction"] == 6
    assert "no repeated token" in error_text(
        await call_tool(server, "induction_scores", {"prompt": "w1 w2"}, mode=mode)
    )
    assert "seq_len=40 is out of range: use 2..23" in error_text(
        await call_tool(server, "induction_scores", {"seq_len": 40}, mode=mode)
    )


def test_the_default_seq_len_fits_the_loaded_model(toy: ToolContext) -> None:
    """The toy model's context is 48 tokens: the default repeat length shrinks to fit it (2*23+1 = 47)."""
    result = induction_scores(toy)
    assert result.seq_len == (toy.model.cfg.n_ctx - 1) // 2 == 23
    assert result.top_induction[0].score > 0.5  # the planted induction head still shows at that length
