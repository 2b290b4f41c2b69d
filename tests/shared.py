"""What several test modules share: the toy model's prompts, and the independent references tools are checked
against (TransformerLens's own functions, hand-written hooks, hand calculations). Fast and slow tests both
import from here; no test module imports another."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from transformer_lens import patching

from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.hook_names import FAMILY_TEMPLATES, hook_name
from lens_mcp.tools.reading.attention_pattern import attention_pattern
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.logit_lens import logit_lens
from lens_mcp.tools.reading.run_with_cache import run_with_cache

# ---- prompts for the toy model (word-level vocabulary w0..w253) ---------------------------------------------

P = "w1 w2 w3 w4 w5 w1 w2 w3"  # 9 tokens with BOS
# An induction-shaped pair: the clean prompt repeats "... w53 w64", the corrupted one "... w53 w77".
CLEAN = "w20 w31 w42 w53 w64 w20 w31 w42 w53"
CORRUPTED = "w20 w31 w42 w53 w77 w20 w31 w42 w53"
ANSWER, WRONG = " w64", " w77"
SWEEP = {"clean_prompt": CLEAN, "corrupted_prompt": CORRUPTED, "answer": ANSWER, "wrong_answer": WRONG}
# A repeated random sequence: the toy model's induction heads predict the second half.
TOY_PROMPT = "w12 w87 w33 w140 w5 w61 w12 w87 w33 w140"
TOY_ANSWER, TOY_WRONG = "w5", "w61"
TIMING_FIELDS = {"seconds", "load_seconds", "throughput"}


def untimed(data: Any) -> Any:
    """A result without its timing fields, at any depth (a cost estimate includes measured seconds too)."""
    if isinstance(data, dict):
        return {key: untimed(value) for key, value in data.items() if key not in TIMING_FIELDS}
    if isinstance(data, list):
        return [untimed(value) for value in data]
    return data


# 32 mixed calls, four of them malformed (tests/test_concurrency.py, bench/bench_concurrency.py).
MIXED: list[tuple[str, dict[str, Any]]] = [
    ("model_info", {}),
    ("tokenize", {"text": P}),
    ("tokenize", {"text": "w7 w8 w9", "prepend_bos": False}),
    ("run_with_cache", {"prompt": P, "hooks": ["resid_post", "pattern"]}),
    ("run_with_cache", {"prompt": CLEAN, "hooks": ["z", "attn_out"], "layers": [1], "positions": [-1, 2]}),
    ("head_attribution", {"prompt": CLEAN, "answer": " w64", "wrong_answer": " w77"}),
    ("head_attribution", {"prompt": P, "answer": " w4", "position": 6}),
    ("logit_lens", {"prompt": P, "answer": " w4"}),
    ("logit_lens", {"prompt": CLEAN, "position": 4, "top_k": 2}),
    ("attention_pattern", {"prompt": CLEAN, "layer": 1, "head": 2}),
    ("attention_pattern", {"prompt": P, "layer": 0, "head": 1, "query_positions": [1, -1]}),
    ("patch_sweep", {**SWEEP, "component": "heads"}),
    ("patch_sweep", {**SWEEP, "component": "resid_pre"}),
    ("patch_sweep", {**SWEEP, "component": "heads_by_pos", "layers": [1]}),
    ("patch_sweep", {**SWEEP, "component": "attn_out", "metric": "prob"}),
    ("ablate_heads", {"prompt": CLEAN, "heads": [[1, 2]], "answer": " w64", "wrong_answer": " w77"}),
    (
        "ablate_heads",
        {"prompt": CLEAN, "heads": [[0, 1], [1, 2]], "answer": " w64", "mode": "mean", "individually": True},
    ),
    ("induction_scores", {"seq_len": 10, "n_seqs": 4}),
    ("induction_scores", {"prompt": P}),
    # a few malformed calls in the mix: errors must not disturb their neighbours
    ("attention_pattern", {"prompt": P, "layer": 5, "head": 0}),
    ("patch_sweep", {**SWEEP, "corrupted_prompt": "w1 w2"}),
    ("tokenize", {"text": ""}),
    ("head_attribution", {"prompt": P, "answer": " w4 w5"}),
]
MIXED = (MIXED * 2)[:32]


# ---- hook leaks ---------------------------------------------------------------------------------------------

LEAK_LOGGER = "lens_mcp.model_host"


class LeakRecorder(logging.Handler):
    """Records ModelHost's "a tool left N hooks on the model" reports (it removes the hooks, so counting hooks
    after a call through the server cannot see a leak; its report can)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []
        self.test_start = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "hooks on the model" in message:
            self.reports.append(message)


SESSION_LEAKS = LeakRecorder()
"""Installed for the whole test session by conftest.py, which fails any test during which a report appears
(unless the test is marked leaks_hooks)."""


def leak_reports() -> list[str]:
    """The "left N hooks" reports logged since the current test started."""
    return SESSION_LEAKS.reports[SESSION_LEAKS.test_start :]


@contextmanager
def recording_leaks() -> Iterator[LeakRecorder]:
    recorder = LeakRecorder()
    logger = logging.getLogger(LEAK_LOGGER)
    logger.addHandler(recorder)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)


# ---- read-only tools: TransformerLens on its own filtered run_with_cache ------------------------------------

REL = 2e-3  # results are rounded to 4 significant digits


ABS = 2e-5


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
    bridge = tc.model.bridge
    tokens = bridge.to_tokens(prompt)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith(_REFERENCE_SUFFIXES))
    return tokens, logits, cache


def token_id(tc: ToolContext, text: str) -> int:
    ids = tc.model.bridge.to_tokens(text, prepend_bos=False)[0]
    assert len(ids) == 1
    return int(ids[0])


def reference_direction(tc: ToolContext, answer: str, wrong: str | None) -> torch.Tensor:
    W_U = tc.model.bridge.W_U.detach()
    direction = W_U[:, token_id(tc, answer)]
    return direction - W_U[:, token_id(tc, wrong)] if wrong is not None else direction


def reference_head_grid(tc: ToolContext, cache: Any, pos: int, direction: torch.Tensor) -> torch.Tensor:
    """cache.stack_head_results + cache.apply_ln_to_stack at pos, projected on the direction: (layers, heads)."""
    with torch.no_grad():
        stack = cache.stack_head_results(layer=-1, pos_slice=pos)
        stack = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=pos)
        return (stack @ direction).reshape(tc.model.cfg.n_layers, tc.model.cfg.n_heads)


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
        return (resid[:, 0] @ tc.model.bridge.W_U + tc.model.bridge.b_U).float()


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
        (int(i) // tc.model.cfg.n_heads, int(i) % tc.model.cfg.n_heads) for i in best
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
            [parts[f"{layer}_mlp_out"] for layer in range(tc.model.cfg.n_layers)], rel=REL, abs=ABS
        )
    assert result.other.attn_bias == pytest.approx(parts.get("bias", 0.0), rel=REL, abs=ABS)
    # total = every component; actual = the real logits; on fp32 they agree to 1e-3 and the result says so
    a = token_id(tc, answer)
    actual = float(logits[0, pos, a] - (logits[0, pos, token_id(tc, wrong)] if wrong is not None else 0.0))
    b_U = tc.model.bridge.b_U.detach()
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
    n_layers = tc.model.cfg.n_layers
    assert result.rows == [f"{layer}_pre" for layer in range(n_layers)] + ["final"]
    lens = reference_lens_logits(tc, cache, pos)
    # the last row is the model's real output
    assert lens[-1] == pytest.approx(logits[0, pos].float(), abs=1e-3)
    real_probs = logits[0, pos].float().softmax(-1)
    real_top = real_probs.topk(top_k)
    assert result.top[-1].ids == real_top.indices.tolist()
    assert result.top[-1].probs == pytest.approx(real_top.values.tolist(), rel=REL, abs=ABS)
    probs = lens.softmax(-1)
    for row, tops in enumerate(result.top):
        expected = probs[row].topk(top_k)
        assert len(tops.tokens) == len(tops.ids) == len(tops.probs) == top_k
        assert tops.probs == pytest.approx(expected.values.tolist(), rel=REL, abs=ABS)
        assert tops.tokens == [tc.model.bridge.tokenizer.decode([i]) for i in tops.ids]
        # ids may only differ among (near-)tied probabilities
        for got, i, p in zip(tops.ids, expected.indices.tolist(), expected.values.tolist(), strict=True):
            assert got == i or float(probs[row, got]) == pytest.approx(p, rel=1e-4, abs=1e-9)
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
    pattern = cache["pattern", layer % tc.model.cfg.n_layers][0, head % tc.model.cfg.n_heads].float()
    strings = tc.model.bridge.to_str_tokens(tokens[0])
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
    tokens = tc.model.bridge.to_tokens(prompt)
    n = tokens.shape[-1]
    names = {id(summary): row_names(summary) for summary in result.hooks}
    with torch.no_grad():  # one independent run caching exactly the rows the summary reports
        logits, cache = tc.model.bridge.run_with_cache(
            tokens, names_filter=[n for rows in names.values() for n in rows]
        )
    pos = [p % n for p in positions] if positions is not None else list(range(n))
    assert result.positions == pos
    assert result.tokens == tc.model.bridge.to_str_tokens(tokens[0])
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
                assert summary.entropy is not None and summary.top_source is not None
                assert summary.entropy[row] == pytest.approx(
                    (-(pattern * logs).sum(-1)).mean(-1).tolist(), rel=REL, abs=1e-5
                )
                assert summary.top_source[row] == pattern.argmax(-1).tolist()
        else:
            axis = 2 if rows[0].endswith("hook_attn_scores") else 1
            for row, name in enumerate(rows):
                tensor = cache[name]
                tensor = torch.where(torch.isfinite(tensor), tensor, torch.zeros_like(tensor))
                assert summary.norms is not None
                assert summary.norms[row] == pytest.approx(norms_by_position(tensor, axis, pos), rel=REL, abs=ABS)
    return result


# ---- patching: TransformerLens's patching functions and hand-written ablation hooks ---------------------

TOL = 1e-4


TL_FUNCTIONS = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "heads": "get_act_patch_attn_head_out_all_pos",
    "heads_by_pos": "get_act_patch_attn_head_out_by_pos",
}


def transformer_lens_values(
    tc: ToolContext,
    component: str,
    cells: list[tuple[int, Any, Any]],
    metric: str = "logit_diff",
    clean: str = CLEAN,
    corrupted: str = CORRUPTED,
    answer: str = ANSWER,
    wrong: str = WRONG,
) -> torch.Tensor:
    """TransformerLens's patching function for `component`, on exactly `cells` (layer, head, position)."""
    bridge = tc.model.bridge
    tokens = bridge.to_tokens([clean, corrupted])
    a, b = bridge.to_single_token(answer), bridge.to_single_token(wrong)

    def tl_metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[0, -1].float()
        if metric == "logit_diff":
            return last[a] - last[b]
        logprob = last.log_softmax(-1)[a]
        return logprob.exp() if metric == "prob" else logprob

    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(tokens[:1])
        if component in ("heads", "heads_by_pos"):
            if component == "heads":
                index = pd.DataFrame([(layer, head) for layer, head, _ in cells], columns=["layer", "head"])
            else:
                index = pd.DataFrame(
                    [(layer, pos, head) for layer, head, pos in cells], columns=["layer", "pos", "head"]
                )
        else:
            index = pd.DataFrame([(layer, pos) for layer, _, pos in cells], columns=["layer", "pos"])
        if component == "resid_post":  # TransformerLens has no named function for it: the generic one
            return patching.generic_activation_patch(
                bridge,
                tokens[1:],
                clean_cache,
                tl_metric,
                patch_setter=patching.layer_pos_patch_setter,
                activation_name="resid_post",
                index_df=index,
            )
        function = getattr(patching, TL_FUNCTIONS[component])
        return function(bridge, tokens[1:], clean_cache, tl_metric, index_axis_names=None, index_df=index)


def hand_ablation(tc: ToolContext, prompt: str, heads: list[tuple[int, int]], mode: str) -> torch.Tensor:
    """Last-position logits with `heads` ablated by a hand-written hook on hook_z."""
    bridge = tc.model.bridge
    tokens = bridge.to_tokens(prompt)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_z"))
        hooks = []
        for layer, head in heads:
            mean = cache[f"blocks.{layer}.attn.hook_z"][0, :, head].mean(0)

            def hook(z: torch.Tensor, hook: Any, head: int = head, mean: torch.Tensor = mean) -> torch.Tensor:
                z = z.clone()
                z[:, :, head] = 0.0 if mode == "zero" else mean
                return z

            hooks.append((f"blocks.{layer}.attn.hook_z", hook))
        return bridge.run_with_hooks(tokens, fwd_hooks=hooks)[0, -1]


# ---- induction: scores and losses by hand ------------------------------------------------------------------


def assert_grid_close(grid: list[list[float]], expected: torch.Tensor, what: str) -> None:
    """`grid` (rounded to 4 significant digits) equals `expected` (layers x heads)."""
    assert (len(grid), len(grid[0])) == tuple(expected.shape), what
    for layer, row in enumerate(grid):
        for head, value in enumerate(row):
            want = float(expected[layer, head])
            assert math.isclose(value, want, rel_tol=6e-4, abs_tol=2e-5), (what, layer, head, value, want)


def by_hand(tc: ToolContext, tokens: torch.Tensor) -> tuple[dict[str, torch.Tensor], float, float]:
    """Scores and losses of a random-mode batch (BOS + half + half, no token twice in a half), computed here
    from the patterns and logits of bridge.run_with_cache."""
    seq_len = (tokens.shape[1] - 1) // 2
    with torch.no_grad():
        logits, cache = tc.model.bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    second = torch.arange(seq_len + 1, 2 * seq_len + 1)  # queries of the second repeat
    everything = torch.arange(1, 2 * seq_len + 1)
    grids = {
        kind: torch.zeros(tc.model.cfg.n_layers, tc.model.cfg.n_heads)
        for kind in ("induction", "duplicate", "previous")
    }
    for layer in range(tc.model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == (tokens.shape[0], tc.model.cfg.n_heads, tokens.shape[1], tokens.shape[1])
        grids["induction"][layer] = pattern[:, :, second, second - seq_len + 1].mean(dim=(0, 2))
        grids["duplicate"][layer] = pattern[:, :, second, second - seq_len].mean(dim=(0, 2))
        grids["previous"][layer] = pattern[:, :, everything, everything - 1].mean(dim=(0, 2))
    losses = -logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # [:, p-1]: token p
    first = losses[:, 0:seq_len].mean().item()  # tokens 1..seq_len
    copy = losses[:, seq_len + 1 :].mean().item()  # tokens seq_len+2..2*seq_len (the first is unpredictable)
    return grids, first, copy


# ---- patch_sweep head inputs and ablate_heads modes ----------------------------------------------------------
HEAD_FUNCTIONS = {
    "q": "get_act_patch_attn_head_q_all_pos",
    "k": "get_act_patch_attn_head_k_all_pos",
    "v": "get_act_patch_attn_head_v_all_pos",
    "pattern": "get_act_patch_attn_head_pattern_all_pos",
    "heads": "get_act_patch_attn_head_out_all_pos",
}


def tl_head_values(
    tc: ToolContext,
    component: str,
    cells: list,
    direction: str = "denoise",
    clean: str = CLEAN,
    corrupted: str = CORRUPTED,
    answer: str = ANSWER,
    wrong: str = WRONG,
) -> torch.Tensor:
    """TransformerLens's per-head patching function; noising = the same function with the roles swapped
    (the corrupted run's cache patched into the clean tokens)."""
    bridge = tc.model.bridge
    tokens = bridge.to_tokens([clean, corrupted])
    source, base = (0, 1) if direction == "denoise" else (1, 0)
    a, b = bridge.to_single_token(answer), bridge.to_single_token(wrong)
    index = pd.DataFrame([(layer, head) for layer, head, _ in cells], columns=["layer", "head"])
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens[source : source + 1])
        function = getattr(patching, HEAD_FUNCTIONS[component])
        return function(
            bridge,
            tokens[base : base + 1],
            cache,
            lambda logits: logits[0, -1, a] - logits[0, -1, b],
            index_axis_names=None,
            index_df=index,
        )


def hand_logits(
    tc: ToolContext, prompt: str, heads: list[tuple[int, int]], mode: str, source: str | None
) -> torch.Tensor:
    """Full logits [pos, vocab] of `prompt` with `heads`' z replaced by a hand-written hook."""
    bridge = tc.model.bridge
    tokens = bridge.to_tokens(prompt)
    with torch.no_grad():
        _, own = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_z"))
        other = None
        if source is not None:
            _, other = bridge.run_with_cache(bridge.to_tokens(source), names_filter=lambda n: n.endswith("attn.hook_z"))
        hooks = []
        for layer, head in heads:
            name = f"blocks.{layer}.attn.hook_z"
            if mode == "zero":
                value: Any = 0.0
            elif mode == "mean":
                value = own[name][0, :, head].mean(0)
            elif mode == "resample":
                assert other is not None
                value = other[name][0, :, head]
            else:
                assert other is not None
                value = other[name][0, :, head].mean(0)

            def hook(z: torch.Tensor, hook: Any, head: int = head, value: Any = value) -> torch.Tensor:
                z = z.clone()
                z[0, :, head] = value
                return z

            hooks.append((name, hook))
        return bridge.run_with_hooks(tokens, fwd_hooks=hooks)[0]


def loss(tc: ToolContext, logits: torch.Tensor, prompt: str, positions: list[int]) -> float:
    tokens = tc.model.bridge.to_tokens(prompt)[0]
    logprobs = logits.float().log_softmax(-1)
    return float(-torch.stack([logprobs[p - 1, tokens[p]] for p in positions]).mean())


# ---- SAEs ---------------------------------------------------------------------------------------------------


def write_sae_folder(
    folder: Path,
    d_in: int,
    hook: str,
    d_sae: int = 32,
    seed: int = 0,
    centred: bool | None = True,
    normalize: str | None = None,
) -> dict[str, torch.Tensor]:
    """A random ReLU SAE in SAELens's disk format (cfg.json + sae_weights.safetensors) reading `hook`; returns its
    weights (W_enc, b_enc, W_dec, b_dec). `centred`: what cfg.json says of the residual stream it was trained on
    (model_from_pretrained_kwargs.center_writing_weights; None leaves it out); `normalize`: normalize_activations."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in**0.5,
        "b_enc": torch.full((d_sae,), 0.05),
        "W_dec": torch.randn(d_sae, d_in, generator=gen) / d_in**0.5,
        "b_dec": torch.randn(d_in, generator=gen) * 0.01,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg: dict[str, Any] = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "metadata": {"hook_name": hook}}
    if centred is not None:
        cfg["model_from_pretrained_kwargs"] = {"center_writing_weights": centred}
    if normalize is not None:
        cfg["normalize_activations"] = normalize
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def pooled_from_singles(values: torch.Tensor, clean: list[float], corrupted: list[float]) -> torch.Tensor:
    """Each pair's value in a dataset's pooled units, from single-pair normalized values [pairs, cells]: a single
    call divides the pair's change by its own gap; the dataset divides it by mean clean - mean corrupted."""
    gaps = torch.tensor(clean, dtype=torch.float64) - torch.tensor(corrupted, dtype=torch.float64)
    return values.double() * gaps[:, None] / gaps.mean()
