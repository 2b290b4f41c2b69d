"""induction_scores on SmolLM2-135M (grouped-query attention: 9 query heads share 3 key/value heads):
grids against patterns from run_with_cache computed here by hand, and against
transformer_lens.head_detector.detect_head on a string prompt."""

from __future__ import annotations

import math
import time

import pytest
import torch
from transformer_lens.head_detector import detect_head

from lens_mcp.errors import LensError
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.reading.induction_scores import induction_scores, repeated_random_tokens
from tests.shared import assert_grid_close, by_hand

pytestmark = pytest.mark.slow

PROMPT = (
    "The old sailor told a story about the storm. Everyone listened quietly. "
    "The old sailor told a story about the storm."
)


def test_random_mode_equals_patterns_by_hand(smol: ToolContext) -> None:
    started = time.perf_counter()
    result = induction_scores(smol)  # defaults: seq_len 40, n_seqs 8, seed 0
    elapsed = time.perf_counter() - started
    tokens, _ = repeated_random_tokens(smol, 40, 8, 0)
    grids, first, copy = by_hand(smol, tokens)
    assert_grid_close(result.induction, grids["induction"], "induction")
    assert_grid_close(result.duplicate_token, grids["duplicate"], "duplicate")
    assert_grid_close(result.previous_token, grids["previous"], "previous")
    assert math.isclose(result.loss_first_repeat, first, rel_tol=1e-3)
    assert result.loss_second_repeat is not None and math.isclose(result.loss_second_repeat, copy, rel_tol=1e-3)
    assert result.loss_second_repeat < result.loss_first_repeat / 2
    assert len(result.induction) == 30 and len(result.induction[0]) == 9
    top = result.top_induction[0]
    assert top.score == max(max(row) for row in result.induction) and top.score > 0.5
    assert result.positions.induction == 8 * 40 and result.positions.copyable == 8 * 39
    print(
        f"\n135M defaults: {elapsed:.2f}s; induction {result.top_induction[:3]}; previous "
        f"{result.top_previous_token[:3]}; duplicate {result.top_duplicate_token[:3]}; "
        f"loss {result.loss_first_repeat} -> {result.loss_second_repeat}"
    )


def test_random_tokens_are_ordinary_words(smol: ToolContext) -> None:
    tokens, pool = repeated_random_tokens(smol, 40, 8, 0)
    tokenizer = smol.model.bridge.tokenizer
    assert "space followed by letters" in pool
    assert (tokens[:, 0] == tokenizer.bos_token_id).all()
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    assert not special & set(tokens[:, 1:].flatten().tolist())
    for row in tokens:
        assert len(set(row[1:41].tolist())) == 40
        assert all(tokenizer.decode([t]).startswith(" ") for t in row[1:].tolist())


@pytest.mark.parametrize(
    "kind, field",
    [
        ("previous_token_head", "previous_token"),
        ("duplicate_token_head", "duplicate_token"),
        ("induction_head", "induction"),
    ],
)
def test_prompt_mode_agrees_with_detect_head(smol: ToolContext, kind: str, field: str) -> None:
    result = induction_scores(smol, prompt=PROMPT)
    n_tokens = result.n_tokens
    queries = {
        "previous_token": result.positions.previous_token,
        "duplicate_token": result.positions.duplicate_token,
        "induction": result.positions.induction,
    }[field]
    tokens = smol.model.bridge.to_tokens(PROMPT)[0].tolist()
    for a, b in zip(tokens, tokens[1:], strict=False):
        assert a != b  # no back-to-back repeat, where detect_head's induction pattern differs by design
    with torch.no_grad():
        detected = detect_head(smol.model.bridge, PROMPT, kind)  # "mul": attention on targets / all attention (n rows)
    # ours averages over the queries that have a target; detect_head over every row
    assert_grid_close(getattr(result, field), detected * n_tokens / queries, kind)


def test_pattern_memory_cap(smol: ToolContext) -> None:
    # 32 x 2001 = 64,032 tokens pass the token cap, but one layer's pattern would be 32 x 9 x 2001^2 weights
    with pytest.raises(LensError, match=r"attention pattern would hold .* use n_seqs <= 7 or a smaller seq_len"):
        induction_scores(smol, seq_len=1000, n_seqs=32)
