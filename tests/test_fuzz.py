"""Fuzzing: generated arguments for tokenize, attention_pattern, run_with_cache and patch_sweep (plus
the answer-taking reading tools, and arbitrary JSON through a real client) on the toy model. The contract: a
valid result (finite JSON under the response cap) or a LensError/ToolError that says what to fix; never any
other exception, and never a hook left on the model.

Runs derandomized (the same examples every run). LENS_MCP_FUZZ_EXAMPLES=500 explores more, with fresh
random examples."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcp import Client
from pydantic import BaseModel

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.server.adapter import compact_result
from lens_mcp.server.app import build_server
from lens_mcp.tools.causal._components import COMPONENT_FAMILY
from lens_mcp.tools.causal.patch_sweep import patch_sweep
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.hook_names import FAMILY_TEMPLATES
from lens_mcp.tools.model.tokenize import tokenize
from lens_mcp.tools.reading.attention_pattern import attention_pattern
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.logit_lens import logit_lens
from lens_mcp.tools.reading.run_with_cache import run_with_cache
from tests.shared import leak_reports

_EXAMPLES = os.environ.get("LENS_MCP_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_EXAMPLES or 40),
    deadline=None,
    database=None,
    derandomize=_EXAMPLES is None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LIMITS = Limits(max_response_chars=20_000)  # small enough that some generated calls meet the cap


# ---- strategies: mostly valid values (so that results are checked too), often malformed ones -------------------
def mostly(valid: st.SearchStrategy[Any], malformed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """valid most of the time (one_of would pick the malformed branch as often as the valid one)."""
    return st.integers(0, 5).flatmap(lambda k: malformed if k == 5 else valid)


WORDS = [f"w{i}" for i in range(254)]
word = st.one_of(st.sampled_from(WORDS[:40]), st.sampled_from(WORDS), st.sampled_from(["<|bos|>", "<|unk|>", "zz"]))
word_text = st.lists(word, min_size=0, max_size=60).map(" ".join)
short_word_text = st.lists(st.sampled_from(WORDS[:30]), min_size=1, max_size=14).map(" ".join)
odd_text = st.one_of(
    st.text(max_size=40),  # any unicode, control characters included
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "So", "Co"]), max_size=20),
    st.tuples(
        word_text, st.sampled_from(["\ud800", "\udfff", "\x00", "\u202e", "\ufeff", "\n\t", "🦄"]), word_text
    ).map("".join),
    st.sampled_from(["", " ", "   ", "\x00", "w1 " * 30000]),
)
non_string = st.one_of(st.none(), st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2))
text_argument = mostly(short_word_text, st.one_of(word_text, odd_text, odd_text, non_string))

huge = st.sampled_from([2**31, -(2**31), 2**63, -(2**63) - 1, 10**30, -(10**30)])
index = st.one_of(st.integers(-6, 50), st.integers(-(10**12), 10**12), huge)
float_number = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1.0, 2.5, 1e300]), st.floats())
malformed_int = st.one_of(index, index, float_number, st.sampled_from([None, True, "1", "abc", [1]]))
malformed_list = st.one_of(
    st.lists(st.one_of(index, float_number), max_size=6), st.sampled_from([[], "all", 3, [None], [[0]]])
)


def int_argument(low: int, high: int) -> st.SearchStrategy[Any]:
    return mostly(st.integers(low, high), malformed_int)


def int_list(low: int, high: int) -> st.SearchStrategy[Any]:
    return mostly(st.one_of(st.none(), st.lists(st.integers(low, high), min_size=1, max_size=5)), malformed_list)


answer = mostly(
    st.sampled_from([f" w{i}" for i in range(30)]),
    st.one_of(st.sampled_from([" w4 w5", "", " ", "<|unk|>", "<|bos|>", "zz", "w5"]), odd_text, non_string),
)

HOOK_NAMES = [
    "blocks.0.attn.hook_z",
    "blocks.1.hook_resid_post",
    "hook_embed",
    "blocks.*.hook_resid_post",
    "*",
    "blocks.?.attn.hook_[pq]*",
    "ln_final.hook_scale",
    "blocks.0.mlp.hook_post",
]
BAD_HOOK_NAMES = ["blocks.0.attn.hook_result", "blocks.9.hook_resid_pre", "[", "**", "hook_nothing", ""]
hooks = mostly(
    st.lists(st.sampled_from(list(FAMILY_TEMPLATES) + HOOK_NAMES), min_size=1, max_size=3),
    st.one_of(
        st.lists(st.one_of(st.sampled_from(BAD_HOOK_NAMES), st.text(max_size=24)), max_size=3),
        st.text(max_size=24),
        st.none(),
        st.just([]),
        st.just(5),
    ),
)


# ---- the contract -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_host() -> ModelHost:
    host = ModelHost(LIMITS)
    host.load("toy-induction", device="cpu")
    return host


def check_contract(host: ModelHost, fn: Callable[..., BaseModel], **arguments: Any) -> BaseModel | None:
    """The result (also checked to serialize as finite JSON), or None for a LensError; anything else raises."""
    result: BaseModel | None = None
    with host.use() as model:
        try:
            result = fn(ToolContext(model, host.limits), **arguments)
        except LensError as exc:
            message = str(exc)
            assert message.strip() and len(message) < 4000, message[:500]
    assert leak_reports() == []
    event(f"{fn.__name__}: {'result' if result is not None else 'LensError'}")
    if result is not None:
        try:
            compact_result(result, host.limits)  # allow_nan=False: a NaN/inf in a result raises ValueError here
        except LensError as exc:
            assert "Narrow the call" in str(exc)
    return result


@FUZZ
@given(text=st.one_of(text_argument, odd_text), prepend_bos=mostly(st.booleans(), st.sampled_from([None, 0, 1])))
def test_fuzz_tokenize(fuzz_host: ModelHost, text: Any, prepend_bos: Any) -> None:
    result = check_contract(fuzz_host, tokenize, text=text, prepend_bos=prepend_bos)
    if result is not None:
        assert isinstance(text, str) and 1 <= result.n_tokens <= fuzz_host.model.cfg.n_ctx


@FUZZ
@given(
    prompt=text_argument,
    layer=int_argument(-2, 1),
    head=int_argument(-3, 2),
    top_k=int_argument(1, 10),
    query_positions=int_list(-2, 1),
)
def test_fuzz_attention_pattern(
    fuzz_host: ModelHost, prompt: Any, layer: Any, head: Any, top_k: Any, query_positions: Any
) -> None:
    result = check_contract(
        fuzz_host,
        attention_pattern,
        prompt=prompt,
        layer=layer,
        head=head,
        top_k=top_k,
        query_positions=query_positions,
    )
    if result is not None:
        assert 0 <= result.layer < 2 and 0 <= result.head < 3
        for row in result.queries:
            assert all(0 <= source.position <= row.position for source in row.top)


@FUZZ
@given(prompt=text_argument, hooks=hooks, layers=int_list(-2, 1), positions=int_list(-2, 1), top_k=int_argument(1, 10))
def test_fuzz_run_with_cache(
    fuzz_host: ModelHost, prompt: Any, hooks: Any, layers: Any, positions: Any, top_k: Any
) -> None:
    result = check_contract(
        fuzz_host, run_with_cache, prompt=prompt, hooks=hooks, layers=layers, positions=positions, top_k=top_k
    )
    if result is not None:
        assert len(result.tokens) >= 1 and all(0 <= p < len(result.tokens) for p in result.positions)


word_pairs = st.one_of(
    short_word_text.map(lambda text: (text, text)),  # identical prompts: an unnormalizable sweep
    st.tuples(short_word_text, st.sampled_from(WORDS[:30])).map(  # one word swapped: the usual corrupted prompt
        lambda pair: (pair[0], " ".join(pair[0].split()[:-1] + [pair[1]]))
    ),
    st.tuples(text_argument, text_argument),
)
sweep_prompts = mostly(word_pairs, st.tuples(st.one_of(odd_text, non_string), text_argument))


@FUZZ
@given(
    prompts=sweep_prompts,
    answer=answer,
    wrong_answer=answer,
    component=mostly(st.sampled_from(list(COMPONENT_FAMILY)), st.sampled_from(["bogus", "", None, "z"])),
    layers=int_list(-2, 1),
    positions=int_list(-2, 1),
    metric=mostly(st.sampled_from(["logit_diff", "prob", "logprob"]), st.sampled_from(["", "acc", None])),
    normalize=st.booleans(),
)
def test_fuzz_patch_sweep(
    fuzz_host: ModelHost,
    prompts: tuple[Any, Any],
    answer: Any,
    wrong_answer: Any,
    component: Any,
    layers: Any,
    positions: Any,
    metric: Any,
    normalize: bool,
) -> None:
    result = check_contract(
        fuzz_host,
        patch_sweep,
        clean_prompt=prompts[0],
        corrupted_prompt=prompts[1],
        answer=answer,
        wrong_answer=wrong_answer,
        component=component,
        layers=layers,
        positions=positions,
        metric=metric,
        normalize=normalize,
    )
    if result is not None:
        assert len(result.grid) == len(result.layers) and 0 <= result.skipped_cells <= result.n_cells
        assert len(result.clean_tokens) == len(result.corrupted_tokens)


@FUZZ
@given(
    prompt=text_argument,
    answer=answer,
    wrong_answer=st.one_of(st.none(), answer),
    position=int_argument(-2, 1),
    top_k=int_argument(1, 10),
)
def test_fuzz_answer_tools(
    fuzz_host: ModelHost, prompt: Any, answer: Any, wrong_answer: Any, position: Any, top_k: Any
) -> None:
    check_contract(
        fuzz_host,
        head_attribution,
        prompt=prompt,
        answer=answer,
        wrong_answer=wrong_answer,
        position=position,
        top_k=top_k,
    )
    check_contract(fuzz_host, logit_lens, prompt=prompt, answer=answer, position=position, top_k=top_k)


# ---- arbitrary JSON arguments through a real client ---------------------------------------------------------
PARAMETERS = [
    "text",
    "prompt",
    "hooks",
    "layers",
    "positions",
    "top_k",
    "layer",
    "head",
    "query_positions",
    "answer",
    "wrong_answer",
    "position",
    "clean_prompt",
    "corrupted_prompt",
    "component",
    "metric",
    "normalize",
    "heads",
    "mode",
    "individually",
    "seq_len",
    "n_seqs",
    "seed",
    "prepend_bos",
    "bogus",
]
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    huge,
    st.floats(allow_nan=False, allow_infinity=False),
    word_text,
    st.text(max_size=12),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)
TOOLS = [
    "model_info",
    "tokenize",
    "run_with_cache",
    "head_attribution",
    "logit_lens",
    "attention_pattern",
    "patch_sweep",
    "ablate_heads",
    "induction_scores",
]


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 2))
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(TOOLS), st.dictionaries(st.sampled_from(PARAMETERS), json_value, max_size=6)),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_any_json_through_the_client(fuzz_host: ModelHost, calls: list[tuple[str, dict[str, Any]]]) -> None:
    """Every call gets an answer (a result or a readable error) and the session stays usable."""

    async def run() -> None:
        async with Client(build_server(fuzz_host)) as client:
            with anyio.fail_after(60):
                for name, arguments in calls:
                    result = await client.call_tool(name, arguments)
                    if result.is_error:
                        text = result.content[0].text
                        assert "failed unexpectedly" not in text and "validation error for" not in text, text
                    assert leak_reports() == []
                alive = await client.call_tool("tokenize", {"text": "w1 w2"})
                assert not alive.is_error

    anyio.run(run)
