"""path_patch on SmolLM2-135M (rotary embeddings, RMSNorm, grouped-query attention: 9 query heads share 3
key/value heads), on an IOI pair: query receivers against TransformerLens's get_act_patch_direct_path (which
refuses k/v on grouped-query models), key/value receivers (per key/value head), a receiver set spanning two
layers, logits and resid receivers against hand-written hooks through the bridge's own per-head input copies."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformer_lens import patching

from lens_mcp.errors import LensError
from lens_mcp.tools.causal.path_patch import path_patch, run_path_patch
from lens_mcp.tools.core.context import ToolContext
from tests.path_refs import TOL, Edit, hand_path_patch

pytestmark = pytest.mark.slow

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Tom gave a drink to"
ANSWER, WRONG = " Mary", " John"


def test_query_receivers_equal_transformer_lens(smol: ToolContext) -> None:
    bridge = smol.model.bridge
    tokens = bridge.to_tokens([CLEAN, CORRUPTED])
    a, b = bridge.to_single_token(ANSWER), bridge.to_single_token(WRONG)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, a] - logits[0, -1, b]

    names = ["blocks.27.attn.hook_z"]
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(tokens[:1], names_filter=names)
        _, corrupted_cache = bridge.run_with_cache(tokens[1:], names_filter=names)
    reference = patching.get_act_patch_direct_path(
        bridge, tokens[1:], clean_cache, corrupted_cache, metric, 27, 4, "q", verbose=False
    )
    run = run_path_patch(smol, CLEAN, CORRUPTED, ANSWER, WRONG, [[27, 4]], "all_heads", "q")
    assert len(run.paths) == 2 * 9 and run.stats.method == "driven"
    ours = torch.zeros_like(reference)
    for (_, (receiver,)), value in zip(run.paths, run.values, strict=True):
        ours[receiver.layer, receiver.head] = value
    assert float((ours[28:] - reference[28:]).abs().max()) <= TOL
    assert float((reference[28:] - run.corrupted_metric).abs().max()) > 1e-3  # the paths do something


def test_transformer_lens_refuses_key_value_receivers_under_grouped_query_attention(smol: ToolContext) -> None:
    """Why k/v receivers are key/value heads here, checked against the bridge's own per-head input copies."""
    with pytest.raises(ValueError, match="GQA"):
        patching.get_act_patch_direct_path(smol.model.bridge, None, None, None, None, 27, 4, "k", verbose=False)


@pytest.mark.parametrize("component", ["k", "v"])
def test_key_value_receivers_are_key_value_heads(smol: ToolContext, component: str) -> None:
    run = run_path_patch(smol, CLEAN, CORRUPTED, ANSWER, WRONG, [[26, 3]], "all_heads", component)
    assert len(run.paths) == 3 * 3  # layers 27-29, 3 key/value heads each
    for (sender, (receiver,)), value in list(zip(run.paths, run.values, strict=True))[::4]:
        edits: list[Edit] = [(f"blocks.{receiver.layer}.attn.hook_{component}_input", receiver.head)]
        reference = hand_path_patch(smol, CLEAN, CORRUPTED, sender, edits, ANSWER, WRONG)
        assert abs(float(value) - reference) <= TOL
    result = path_patch(smol, CLEAN, CORRUPTED, ANSWER, WRONG, [[26, 3]], "all_heads", component)
    assert result.heads == [0, 1, 2] and any("query heads 3j..3j+2" in note for note in result.notes)
    with pytest.raises(LensError, match="key/value heads 0..2"):
        run_path_patch(smol, CLEAN, CORRUPTED, ANSWER, WRONG, [[26, 3]], [[28, 5]], component)


@pytest.mark.parametrize(
    ("receivers", "receiver_input", "edits"),
    [
        (
            [[27, 2], [29, 4]],
            "q",
            [("blocks.27.attn.hook_q_input", 2), ("blocks.29.attn.hook_q_input", 4)],
        ),
        ([[28, 0], [29, 2]], "k", [("blocks.28.attn.hook_k_input", 0), ("blocks.29.attn.hook_k_input", 2)]),
        ("logits", "q", [("blocks.29.hook_resid_post", None)]),
        ({"resid": 20}, "q", [("blocks.20.hook_resid_pre", None)]),
    ],
)
def test_receiver_forms_equal_hand_written_hooks(
    smol: ToolContext, receivers: Any, receiver_input: str, edits: list[Edit]
) -> None:
    senders = [[0, 1], [9, 5], [19, 8], [26, 0], [28, 3]]
    run = run_path_patch(smol, CLEAN, CORRUPTED, ANSWER, WRONG, senders, receivers, receiver_input)
    for (sender, _), value in zip(run.paths, run.values, strict=True):
        after = [(name, head) for name, head in edits if int(name.split(".")[1]) > sender[0]]
        if not after:
            assert torch.isnan(value)
            continue
        reference = hand_path_patch(smol, CLEAN, CORRUPTED, sender, after, ANSWER, WRONG)
        assert abs(float(value) - reference) <= TOL, (sender, float(value), reference)


def test_name_mover_style_call_end_to_end(smol: ToolContext) -> None:
    """Every head into the logits (the direct writers), then every earlier head into the strongest writer's
    queries at the last position: the two calls of an IOI analysis, with sane shapes and values."""
    direct = path_patch(smol, CLEAN, CORRUPTED, ANSWER, WRONG, None, "logits")
    assert direct.axes == ["sender_layer", "sender_head"] and len(direct.layers) == 30 and direct.method == "readout"
    writer = direct.top_paths[0].sender
    assert abs(direct.top_paths[0].value) > 0.05
    queries = path_patch(smol, CLEAN, CORRUPTED, ANSWER, WRONG, None, [list(writer)], "q", positions=[-1])
    assert queries.layers == list(range(writer[0])) and queries.positions == [14] and queries.grid is not None
    assert all(len(row) == 9 for row in queries.grid)
