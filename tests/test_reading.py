"""The read-only tools (issue 3) on the toy model: run_with_cache, head_attribution, logit_lens,
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
from lens_mcp.tools.core.hook_names import FAMILY_TEMPLATES, hook_name
from lens_mcp.tools.reading import run_with_cache as run_with_cache_module
from lens_mcp.tools.reading.attention_pattern import attention_pattern
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.logit_lens import logit_lens
from lens_mcp.tools.reading.run_with_cache import run_with_cache
from tests.mcp_client import MODES, call_tool, error_text, result_data

# A repeated random sequence: the toy model's induction heads predict the second half.
TOY_PROMPT = "w12 w87 w33 w140 w5 w61 w12 w87 w33 w140"
TOY_ANSWER, TOY_WRONG = "w5", "w61"
REL = 2e-3  # results are rounded to 4 significant digits
ABS = 2e-5

# ---- independent references: TransformerLens on its own filtered run_with_cache -------------------------

_REFERENCE_SUFFIXES = (
    "hook_z",
    "hook_scale",
    "hook_embed",
    "hook_pos_embed",
    "hook_mlp_out",
    "hook_resid_pre",
    "hook_resid_post",
    "hook_pattern",
)


def reference_run(tc: ToolContext, prompt: str) -> tuple[torch.Tensor, torch.Tensor, Any]:
    bridge = tc.bridge
    tokens = bridge.to_tokens(prompt)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith(_REFERENCE_SUFFIXES))
    return tokens, logits, cache


def token_id(tc: ToolContext, text: str) -> int:
    ids = tc.bridge.to_tokens(text, prepend_bos=False)[0]
    assert len(ids) == 1
    return int(ids[0])


def reference_direction(tc: ToolContext, answer: str, wrong: str | None) -> torch.Tensor:
    W_U = tc.bridge.W_U.detach()
    direction = W_U[:, token_id(tc, answer)]
    return direction - W_U[:, token_id(tc, wrong)] if wrong is not None else direction


def reference_head_grid(tc: ToolContext, cache: Any, pos: int, direction: torch.Tensor) -> torch.Tensor:
    """cache.stack_head_results + cache.apply_ln_to_stack at pos, projected on the direction: (layers, heads)."""
    with torch.no_grad():
        stack = cache.stack_head_results(layer=-1, pos_slice=pos)
        stack = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=pos)
        return (stack @ direction).reshape(tc.cfg.n_layers, tc.cfg.n_heads)


def reference_decomposition(cache: Any, pos: int, direction: torch.Tensor) -> dict[str, float]:
    """TransformerLens's full residual decomposition at pos (MLPs whole), each projected on the direction."""
    with torch.no_grad():
        stack, labels = cache.get_full_resid_decomposition(
            expand_neurons=False, apply_ln=True, pos_slice=pos, return_labels=True
        )
        values = (stack @ direction).reshape(len(labels))
    return dict(zip(labels, values.tolist(), strict=True))


def reference_lens_logits(tc: ToolContext, cache: Any, pos: int) -> torch.Tensor:
    """accumulated_resid(apply_ln=True) at pos through W_U + b_U: (n_layers + 1, d_vocab)."""
    with torch.no_grad():
        resid = cache.accumulated_resid(apply_ln=True, pos_slice=pos)  # (layers + 1, batch, d_model)
        return (resid[:, 0] @ tc.bridge.W_U + tc.bridge.b_U).float()


def check_head_attribution(tc: ToolContext, prompt: str, answer: str, wrong: str | None, position: int) -> Any:
    tokens, logits, cache = reference_run(tc, prompt)
    pos = position % tokens.shape[-1]
    result = head_attribution(tc, prompt, answer, wrong, position=position)
    direction = reference_direction(tc, answer, wrong)
    grid = reference_head_grid(tc, cache, pos, direction)
    assert result.position == pos
    assert torch.tensor(result.heads) == pytest.approx(grid, rel=REL, abs=ABS)
    # top heads: the largest |value| of the reference grid, with their signs
    flat = grid.flatten()
    best = flat.abs().argsort(descending=True)[: len(result.top_heads)]
    assert [(h.layer, h.head) for h in result.top_heads] == [
        (int(i) // tc.cfg.n_heads, int(i) % tc.cfg.n_heads) for i in best
    ]
    assert [h.score for h in result.top_heads] == pytest.approx(flat[best].tolist(), rel=REL, abs=ABS)
    # the other components against TransformerLens's decomposition
    parts = reference_decomposition(cache, pos, direction)
    assert result.other.embed == pytest.approx(parts["embed"], rel=REL, abs=ABS)
    if "pos_embed" in parts:
        assert result.other.pos_embed == pytest.approx(parts["pos_embed"], rel=REL, abs=ABS)
    else:
        assert result.other.pos_embed is None
    if result.other.mlp is not None:
        assert result.other.mlp == pytest.approx(
            [parts[f"{layer}_mlp_out"] for layer in range(tc.cfg.n_layers)], rel=REL, abs=ABS
        )
    assert result.other.attn_bias == pytest.approx(parts.get("bias", 0.0), rel=REL, abs=ABS)
    # total = every component; actual = the real logits; on fp32 they agree to 1e-3 and the result says so
    a = token_id(tc, answer)
    actual = float(logits[0, pos, a] - (logits[0, pos, token_id(tc, wrong)] if wrong is not None else 0.0))
    b_U = tc.bridge.b_U.detach()
    unembed_bias = float(b_U[a] - (b_U[token_id(tc, wrong)] if wrong is not None else 0.0))
    assert result.other.unembed_bias == pytest.approx(unembed_bias, rel=REL, abs=ABS)
    assert sum(parts.values()) + unembed_bias == pytest.approx(actual, abs=1e-3)  # TL's own closure
    assert result.actual == pytest.approx(actual, rel=REL, abs=ABS)
    assert result.total == pytest.approx(actual, rel=REL, abs=1e-3)
    assert result.heads_total == pytest.approx(float(grid.sum()), rel=REL, abs=1e-4)
    assert result.explained is True and "total equals actual" in result.note
    return result


def check_logit_lens(tc: ToolContext, prompt: str, position: int, answer: str | None, top_k: int = 5) -> Any:
    tokens, logits, cache = reference_run(tc, prompt)
    pos = position % tokens.shape[-1]
    result = logit_lens(tc, prompt, position=position, top_k=top_k, answer=answer)
    n_layers = tc.cfg.n_layers
    assert result.rows == [f"{layer}_pre" for layer in range(n_layers)] + ["final"]
    lens = reference_lens_logits(tc, cache, pos)
    # the last row is the model's real output
    assert lens[-1] == pytest.approx(logits[0, pos].float(), abs=1e-3)
    real_probs = logits[0, pos].float().softmax(-1)
    real_top = real_probs.topk(top_k)
    assert [t.id for t in result.top[-1]] == real_top.indices.tolist()
    assert [t.prob for t in result.top[-1]] == pytest.approx(real_top.values.tolist(), rel=REL, abs=ABS)
    probs = lens.softmax(-1)
    for row, tops in enumerate(result.top):
        expected = probs[row].topk(top_k)
        assert [t.prob for t in tops] == pytest.approx(expected.values.tolist(), rel=REL, abs=ABS)
        assert [t.token for t in tops] == [tc.bridge.tokenizer.decode([i]) for i in (t.id for t in tops)]
        # ids may only differ among (near-)tied probabilities
        for t, i, p in zip(tops, expected.indices.tolist(), expected.values.tolist(), strict=True):
            assert t.id == i or float(probs[row, t.id]) == pytest.approx(p, rel=1e-4, abs=1e-9)
    if answer is not None:
        a = token_id(tc, answer)
        assert result.answer is not None and result.answer.id == a
        assert result.answer.probs == pytest.approx(probs[:, a].tolist(), rel=REL, abs=1e-9)
        assert result.answer.ranks == ((lens > lens[:, a : a + 1]).sum(-1) + 1).tolist()
        assert result.answer.ranks[-1] == int((logits[0, pos] > logits[0, pos, a]).sum()) + 1
    return result


def check_attention_pattern(
    tc: ToolContext, prompt: str, layer: int, head: int, top_k: int, query_positions: list[int] | None
) -> Any:
    tokens, _, cache = reference_run(tc, prompt)
    n = tokens.shape[-1]
    pattern = cache["pattern", layer % tc.cfg.n_layers][0, head % tc.cfg.n_heads].float()
    strings = tc.bridge.to_str_tokens(tokens[0])
    result = attention_pattern(tc, prompt, layer, head, top_k=top_k, query_positions=query_positions)
    queries = [q % n for q in query_positions] if query_positions is not None else list(range(n))
    assert [q.position for q in result.queries] == queries
    entropies = []
    for q in result.queries:
        row = pattern[q.position]
        assert float(row[q.position + 1 :].sum()) == 0.0  # causal: nothing after the query
        expected = row.topk(min(top_k, q.position + 1))
        assert [s.weight for s in q.top] == pytest.approx(expected.values.tolist(), rel=REL, abs=ABS)
        for s in q.top:
            assert s.weight == pytest.approx(float(row[s.position]), rel=REL, abs=ABS)
            assert s.token == strings[s.position]
        assert q.token == strings[q.position]
        entropy = float(-(row[row > 0] * row[row > 0].log()).sum())
        assert q.entropy == pytest.approx(entropy, rel=REL, abs=1e-5)
        entropies.append(entropy)
    assert result.mean_entropy == pytest.approx(sum(entropies) / len(entropies), rel=REL, abs=1e-5)
    return result


def norms_by_position(tensor: torch.Tensor, axis: int, positions: list[int]) -> list[float]:
    rows = tensor.float().movedim(axis, 0)[positions]
    return rows.reshape(len(positions), -1).norm(dim=1).tolist()


def row_names(summary: Any) -> list[str]:
    """The hook name of each row of a run_with_cache summary."""
    if summary.hook in FAMILY_TEMPLATES:
        return [hook_name(summary.hook, layer) for layer in summary.layers]
    if "{layer}" in summary.hook:
        return [summary.hook.format(layer=layer) for layer in summary.layers]
    assert summary.layers == [None]
    return [summary.hook]


def check_run_with_cache_norms(
    tc: ToolContext, prompt: str, hooks: list[str], layers: list[int] | None, positions: list[int] | None
) -> Any:
    result = run_with_cache(tc, prompt, hooks=hooks, layers=layers, positions=positions)
    tokens = tc.bridge.to_tokens(prompt)
    n = tokens.shape[-1]
    names = {id(summary): row_names(summary) for summary in result.hooks}
    with torch.no_grad():  # one independent run caching exactly the rows the summary reports
        logits, cache = tc.bridge.run_with_cache(tokens, names_filter=[n for rows in names.values() for n in rows])
    pos = [p % n for p in positions] if positions is not None else list(range(n))
    assert result.positions == pos
    assert result.tokens == tc.bridge.to_str_tokens(tokens[0])
    top = logits[0, -1].float().softmax(-1).topk(5)
    assert [t.id for t in result.top_predictions] == top.indices.tolist()
    assert [t.prob for t in result.top_predictions] == pytest.approx(top.values.tolist(), rel=REL, abs=ABS)
    for summary in result.hooks:
        rows = names[id(summary)]
        assert list(cache[rows[0]].shape) == summary.shape
        if summary.entropy is not None:
            for row, name in enumerate(rows):
                pattern = cache[name][0].float()[:, pos, :]  # heads x queries x sources
                logs = torch.where(pattern > 0, pattern.log(), torch.zeros_like(pattern))
                assert summary.entropy[row] == pytest.approx(
                    (-(pattern * logs).sum(-1)).mean(-1).tolist(), rel=REL, abs=1e-5
                )
                assert summary.top_source[row] == pattern.argmax(-1).tolist()
        else:
            axis = 2 if rows[0].endswith("hook_attn_scores") else 1
            for row, name in enumerate(rows):
                tensor = cache[name]
                tensor = torch.where(torch.isfinite(tensor), tensor, torch.zeros_like(tensor))
                assert summary.norms[row] == pytest.approx(norms_by_position(tensor, axis, pos), rel=REL, abs=ABS)
    return result


# ---- numbers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wrong", "position"), [(TOY_WRONG, -1), (None, -1), (TOY_WRONG, 7), (None, 3)])
def test_head_attribution_matches_transformer_lens(toy: ToolContext, wrong: str | None, position: int) -> None:
    result = check_head_attribution(toy, TOY_PROMPT, TOY_ANSWER, wrong, position)
    assert len(result.heads) == toy.cfg.n_layers and len(result.heads[0]) == toy.cfg.n_heads
    assert len(result.top_heads) == min(10, toy.cfg.n_layers * toy.cfg.n_heads)
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
    assert shapes == [(toy.cfg.n_layers + 1, toy.cfg.d_model)]


@pytest.mark.parametrize(
    ("layer", "head", "top_k", "queries"), [(1, 0, 3, None), (-1, -1, 2, [-1, 2, 0]), (0, 2, 100, [9])]
)
def test_attention_pattern_matches_the_cache(
    toy: ToolContext, layer: int, head: int, top_k: int, queries: list[int] | None
) -> None:
    result = check_attention_pattern(toy, TOY_PROMPT, layer, head, top_k, queries)
    assert result.layer == layer % toy.cfg.n_layers and result.head == head % toy.cfg.n_heads
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
    assert seen == [[f"blocks.{layer}.attn.hook_pattern" for layer in range(toy.cfg.n_layers)]]
    assert count_hooks(toy.bridge) == 0


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
    assert count_hooks(toy_host.model.bridge) == 0


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
    assert count_hooks(toy_host.model.bridge) == 0


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
