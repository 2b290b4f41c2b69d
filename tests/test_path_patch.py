"""path_patch on the toy model: 'all_heads' equals TransformerLens's get_act_patch_direct_path for q, k and v;
the other receiver forms equal a hand-written multi-pass hook implementation; the planted circuit (L0H1
previous-token head -> L1H2 induction head's keys -> logits) is what the tool finds; the MCP surface and
bad input."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import torch
from transformer_lens import patching

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.schemas.common import round_sig
from lens_mcp.server.app import build_server
from lens_mcp.tools.causal._engine import PatchEngine
from lens_mcp.tools.causal.path_patch import path_patch, run_path_patch
from lens_mcp.tools.core.context import ToolContext
from tests.mcp_client import call_tool, error_text, result_data
from tests.path_refs import TOL, Edit, hand_path_patch

# The induction pair of the patching tests: the prompts differ at position 5 (w64 / w77).
CLEAN = "w20 w31 w42 w53 w64 w20 w31 w42 w53"
CORRUPTED = "w20 w31 w42 w53 w77 w20 w31 w42 w53"
ANSWER, WRONG = " w64", " w77"
# A pair that breaks the induction circuit's key: in the corrupted prompt w64 follows w99, not w53, so only the
# previous-token head's output at position 5 tells the induction head where to look.
KEY_CLEAN = "w20 w31 w42 w53 w64 w20 w31 w42 w53"
KEY_CORRUPTED = "w20 w31 w42 w99 w64 w20 w31 w42 w53"


def values_by_path(run: Any) -> dict[tuple[tuple[int, int], tuple[Any, ...]], float]:
    return {(sender, receivers): float(v) for (sender, receivers), v in zip(run.paths, run.values, strict=True)}


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_all_heads_equals_transformer_lens_direct_path(toy: ToolContext, component: str) -> None:
    bridge = toy.model.bridge
    tokens = bridge.to_tokens([KEY_CLEAN, KEY_CORRUPTED])
    a, b = bridge.to_single_token(ANSWER), bridge.to_single_token(" w99")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, a] - logits[0, -1, b]

    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(tokens[:1])
        _, corrupted_cache = bridge.run_with_cache(tokens[1:])
    references = []
    for head in range(int(toy.model.cfg.n_heads)):
        reference = patching.get_act_patch_direct_path(
            bridge, tokens[1:], clean_cache, corrupted_cache, metric, 0, head, component, verbose=False
        )
        run = run_path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, " w99", [[0, head]], "all_heads", component)
        assert run.form == "receivers" and len(run.paths) == toy.model.cfg.n_heads  # every head of layer 1
        assert run.stats.method == "driven"
        ours = torch.zeros_like(reference)
        for (_, (receiver,)), value in zip(run.paths, run.values, strict=True):
            ours[receiver.layer, receiver.head] = value
        assert float((ours[1:] - reference[1:]).abs().max()) <= TOL
        references.append(reference)
    # The planted circuit: the previous-token head's write changes the induction head's keys, by a lot.
    assert component != "k" or float(references[1][1, 2] - run.corrupted_metric) > 1.0


def test_the_planted_circuit_is_found(toy: ToolContext) -> None:
    # Which heads feed the induction head's keys? The previous-token head L0H1, and it restores ~all of it.
    keys = path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, None, [[1, 2]], "k", metric="logprob")
    assert keys.axes == ["sender_layer", "sender_head"] and keys.layers == [0]
    assert keys.top_paths[0].sender == (0, 1) and keys.top_paths[0].receiver == "L1H2.k"
    assert keys.grid[0][1] == pytest.approx(1.0, abs=0.1)
    assert max(abs(keys.grid[0][h]) for h in (0, 2)) < 0.05
    # Through the queries or values of L1H2 the previous-token head carries nothing here.
    for receiver_input in ("q", "v"):
        other = path_patch(
            toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, [[0, 1]], [[1, 2]], receiver_input, None, "prob"
        )
        assert abs(other.grid[0][1]) < 0.05
    # Direct paths to the logits: only the induction head writes the answer.
    direct = path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, None, "logits", metric="logprob")
    assert direct.layers == [0, 1] and direct.top_paths[0].sender == (1, 2)
    assert direct.grid[1][2] == pytest.approx(1.0, abs=0.1)
    # Who reads L0H1, and through which input: L1H2's keys, no other head.
    readers = path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, [[0, 1]], "all_heads", "k", metric="logprob")
    assert readers.axes == ["receiver_layer", "receiver_head"] and readers.layers == [1]
    assert readers.top_paths[0].receiver == "L1H2.k"


@pytest.mark.parametrize(
    ("receivers", "receiver_input", "edits"),
    [
        ([[1, 2]], "k", [("blocks.1.attn.hook_k_input", 2)]),
        ([[1, 0], [1, 2]], "q", [("blocks.1.attn.hook_q_input", 0), ("blocks.1.attn.hook_q_input", 2)]),
        ([[1, 2], [1, 1]], "v", [("blocks.1.attn.hook_v_input", 2), ("blocks.1.attn.hook_v_input", 1)]),
        ("logits", "q", [("blocks.1.hook_resid_post", None)]),
        ({"resid": 1}, "q", [("blocks.1.hook_resid_pre", None)]),
    ],
)
def test_receiver_forms_equal_hand_written_hooks(
    toy: ToolContext, receivers: Any, receiver_input: str, edits: list[Edit]
) -> None:
    run = run_path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, " w99", None, receivers, receiver_input)
    assert run.form == "senders"
    expected_senders = 2 * toy.model.cfg.n_heads if receivers == "logits" else toy.model.cfg.n_heads
    assert len(run.paths) == expected_senders
    for (sender, _), value in zip(run.paths, run.values, strict=True):
        if sender[0] >= 1 and receivers != "logits":
            continue
        reference = hand_path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, sender, edits, wrong=" w99")
        assert abs(float(value) - reference) <= TOL, (sender, float(value), reference)


def test_positions_restrict_where_the_sender_write_is_patched(toy: ToolContext) -> None:
    for positions in ([5], [6, 7, 8, 9], [-1]):
        run = run_path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, [[0, 1]], [[1, 2]], "k", positions, "logprob")
        edits: list[Edit] = [("blocks.1.attn.hook_k_input", 2)]
        reference = hand_path_patch(
            toy, KEY_CLEAN, KEY_CORRUPTED, (0, 1), edits, wrong=None, positions=[p % 10 for p in positions]
        )
        assert abs(float(run.values[0]) - reference) <= TOL
    # The key at position 5 is the one the induction head needs; later positions carry nothing of it.
    at_5 = path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, [[0, 1]], [[1, 2]], "k", [5], "logprob")
    later = path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, [[0, 1]], [[1, 2]], "k", [6, 7, 8], "logprob")
    assert at_5.grid[0][1] == pytest.approx(1.0, abs=0.1) and abs(later.grid[0][1]) < 0.05
    assert at_5.positions == [5]
    logits = path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, [[1, 2]], "logits", positions=[3], metric="prob")
    assert logits.grid[0][2] == 0 and any("last position" in note for note in logits.notes)


def test_result_is_normalized_rounded_and_null_without_a_path(toy: ToolContext) -> None:
    run = run_path_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, [[0, 1], [1, 0]], {"resid": 1})
    result = path_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, [[0, 1], [1, 0]], {"resid": 1})
    span = run.clean_metric - run.corrupted_metric
    assert result.normalized and result.axes == ["sender_layer", "sender_head"] and result.layers == [0, 1]
    assert result.grid[0][1] == round_sig((float(run.values[0]) - run.corrupted_metric) / span)
    # L1H0 writes after the residual stream entering block 1: no path (null), as are the heads not asked for.
    assert result.grid[1] == [None, None, None] and result.grid[0][0] is None
    assert any("no path" in note for note in result.notes) and "null" in result.meaning
    raw = path_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, [[0, 1]], {"resid": 1}, normalize=False)
    assert raw.grid[0][1] == round_sig(float(run.values[0])) and not raw.normalized
    # Several senders into every head: a sender x receiver layer x receiver head grid.
    both = path_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, [[0, 1], [0, 2]], "all_heads", "v")
    assert both.axes == ["sender", "receiver_layer", "receiver_head"] and both.senders == [[0, 1], [0, 2]]
    assert len(both.grid) == 2 and len(both.grid[0]) == 1 and len(both.grid[0][0]) == toy.model.cfg.n_heads


def test_identical_prompts_change_nothing(toy: ToolContext) -> None:
    result = path_patch(toy, CLEAN, CLEAN, ANSWER, WRONG, None, [[1, 2]], "k")
    assert not result.normalized and "cannot be normalized" in result.notes[-1]
    assert all(value == result.corrupted_metric for value in result.grid[0])
    assert result.forward_passes == 1  # the clean and corrupted runs; every sender's write is zero


def test_the_hooked_fallback_gives_the_same_paths(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    driven = run_path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, None, [[1, 2], [1, 0]], "k", metric="prob")
    prepare = PatchEngine.prepare

    def no_blocks(self: PatchEngine) -> None:
        prepare(self)
        self.driven_ok = False

    monkeypatch.setattr(PatchEngine, "prepare", no_blocks)
    hooked = run_path_patch(toy, KEY_CLEAN, KEY_CORRUPTED, ANSWER, None, None, [[1, 2], [1, 0]], "k", metric="prob")
    assert hooked.stats.method == "hooked" and driven.stats.method == "driven"
    assert float((hooked.values - driven.values).abs().max()) <= TOL


def test_batches_of_one_row_give_the_same_paths(toy: ToolContext) -> None:
    reference = run_path_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, [[0, 0]], "all_heads", "q")
    small = ToolContext(toy.model, Limits(max_batch_sequences=1))
    run = run_path_patch(small, CLEAN, CORRUPTED, ANSWER, WRONG, [[0, 0]], "all_heads", "q")
    assert run.stats.forward_passes > reference.stats.forward_passes
    assert float((run.values - reference.values).abs().max()) <= TOL


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"receivers": "everything"}, "receivers"),
        ({"receivers": {"mlp": 1}}, "receivers"),
        ({"receivers": [[1, 3]]}, "receivers[0][1] (head)=3 is out of range"),
        ({"receivers": [[5, 0]]}, "receivers[0][0] (layer)=5 is out of range"),
        ({"senders": [[0, 7]]}, "senders[0][1] (head)=7"),
        ({"senders": [1, 2]}, "senders[0]=1 is invalid"),
        ({"senders": []}, "non-empty list"),
        ({"senders": [[1, 0]], "receivers": [[1, 2]]}, "no path"),
        ({"receivers": {"resid": 0}}, "no head comes before it"),
        ({"senders": [[1, 1]], "receivers": "all_heads"}, "no head comes after"),
        ({"receivers": "all_heads"}, "senders=null"),
        ({"receiver_input": "o"}, "receiver_input"),
        ({"positions": [12]}, "positions=12 is out of range"),
        ({"wrong_answer": None}, "needs wrong_answer"),
        ({"corrupted_prompt": "w1 w2"}, "same length"),
        ({"answer": "w1 w2"}, "single token"),
    ],
)
def test_bad_input_is_refused_readably_and_leaves_no_hook(
    toy_host: ModelHost, arguments: dict[str, Any], expected: str
) -> None:
    base = {
        "clean_prompt": CLEAN,
        "corrupted_prompt": CORRUPTED,
        "answer": ANSWER,
        "wrong_answer": WRONG,
        "receivers": [[1, 2]],
    }
    result = anyio.run(call_tool, build_server(toy_host), "path_patch", {**base, **arguments})
    assert expected in error_text(result)
    with toy_host.use() as model:
        assert count_hooks(model.bridge) == 0


def test_through_mcp(toy_host: ModelHost) -> None:
    arguments = {
        "clean_prompt": KEY_CLEAN,
        "corrupted_prompt": KEY_CORRUPTED,
        "answer": ANSWER,
        "wrong_answer": " w99",
        "receivers": [[1, 2]],
        "receiver_input": "k",
    }
    data = result_data(anyio.run(call_tool, build_server(toy_host), "path_patch", arguments))
    assert data["axes"] == ["sender_layer", "sender_head"] and data["receivers"] == "L1H2.k"
    assert data["top_paths"][0]["sender"] == [0, 1] and data["grid"][0][1] > 0.9
    with toy_host.use() as model:
        direct = path_patch(ToolContext(model), KEY_CLEAN, KEY_CORRUPTED, ANSWER, " w99", None, [[1, 2]], "k")
        assert data["grid"] == direct.model_dump(mode="json")["grid"]
        assert count_hooks(model.bridge) == 0
    resid = result_data(
        anyio.run(call_tool, build_server(toy_host), "path_patch", {**arguments, "receivers": {"resid": 1}})
    )
    assert resid["receivers"] == "resid_pre[1]" and resid["receiver_input"] is None


def test_too_many_paths_are_refused_before_any_forward_pass(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_run(self: PatchEngine) -> None:
        raise AssertionError("ran a forward pass")

    monkeypatch.setattr(PatchEngine, "prepare", no_run)
    small = ToolContext(toy.model, Limits(max_sweep_cells=2))
    with pytest.raises(LensError, match="over the cap"):
        run_path_patch(small, CLEAN, CORRUPTED, ANSWER, WRONG, None, "logits")


# A second key-breaking pair, one token longer: w14 follows w13 in the clean prompt, w98 in the corrupted one.
KEY_CLEAN_2 = "w10 w11 w12 w13 w14 w15 w10 w11 w12 w13"
KEY_CORRUPTED_2 = "w10 w11 w12 w98 w14 w15 w10 w11 w12 w13"
ANSWER_2 = " w14"


@pytest.fixture()
def fixed_speed(toy: ToolContext) -> Any:
    """The toy model with a known throughput (1,000 token-layers per second) and no fixed cost per block call (else
    the one measured on this machine), restored afterwards."""
    saved = toy.model.throughput, toy.model.block_call_seconds
    toy.model.throughput, toy.model.block_call_seconds = 1000.0, 0.0
    yield toy
    toy.model.throughput, toy.model.block_call_seconds = saved


def test_pairs_give_the_mean_and_spread_of_single_pair_runs(toy: ToolContext) -> None:
    pairs = [
        {"clean_prompt": KEY_CLEAN, "corrupted_prompt": KEY_CORRUPTED, "answer": ANSWER, "wrong_answer": " w99"},
        {"clean_prompt": KEY_CLEAN_2, "corrupted_prompt": KEY_CORRUPTED_2, "answer": ANSWER_2, "wrong_answer": " w98"},
    ]
    result = path_patch(toy, senders=None, receivers=[[1, 2]], receiver_input="k", pairs=pairs)
    runs = [
        run_path_patch(
            toy, p["clean_prompt"], p["corrupted_prompt"], p["answer"], p["wrong_answer"], None, [[1, 2]], "k"
        )
        for p in pairs
    ]
    clean = sum(r.clean_metric for r in runs) / 2
    corrupted = sum(r.corrupted_metric for r in runs) / 2
    per_pair = torch.stack([(r.values.double() - r.corrupted_metric) / (clean - corrupted) for r in runs])
    assert result.grid == [[round_sig(v) for v in per_pair.mean(0).tolist()]]
    assert result.spread is not None and result.spread.n_pairs == 2
    assert result.spread.min == [[round_sig(v) for v in per_pair.min(0).values.tolist()]]
    assert result.spread.max == [[round_sig(v) for v in per_pair.max(0).values.tolist()]]
    assert result.pairs is not None and [p.clean_metric for p in result.pairs] == [
        round_sig(r.clean_metric) for r in runs
    ]
    assert result.clean_metric == round_sig(clean) and "over 2 pairs, pooled" in result.meaning
    # The planted circuit holds on both pairs: L0H1 into L1H2's keys restores about all of each.
    assert result.top_paths[0].sender == (0, 1) and float(per_pair[:, 1].min()) > 0.8
    # Pairs of different lengths line up only when positions count from the end.
    with pytest.raises(LensError, match="count positions from the end|Count positions from the end"):
        path_patch(toy, senders=None, receivers=[[1, 2]], receiver_input="k", positions=[5], pairs=pairs)
    from_end = path_patch(toy, senders=[[0, 1]], receivers=[[1, 2]], receiver_input="k", positions=[-1], pairs=pairs)
    assert from_end.grid is not None and from_end.grid[0][1] is not None
    with pytest.raises(LensError, match="not both"):
        path_patch(toy, KEY_CLEAN, senders=None, receivers=[[1, 2]], pairs=pairs)


def test_dry_run_estimates_the_work_without_computing(
    fixed_speed: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    tc = fixed_speed

    def no_run(self: PatchEngine) -> None:
        raise AssertionError("ran a forward pass")

    monkeypatch.setattr(PatchEngine, "prepare", no_run)
    result = path_patch(tc, KEY_CLEAN, KEY_CORRUPTED, ANSWER, " w99", None, [[1, 2]], "k", dry_run=True)
    assert result.dry_run and result.grid is None and result.cost is not None and result.method == "dry_run"
    # Hand count: the clean and corrupted runs (2 x 10 tokens x 2 blocks), then 3 senders of layer 0, each a row
    # through block 1 only, over the 6 positions from the first differing token (position 4) on, plus the control
    # row of the same depth.
    assert abs(result.cost.work_units - (2 * 10 * 2 + 3 * 1 * 6 + 1 * 6)) <= 1
    assert result.cost.seconds == pytest.approx(result.cost.work_units / 1000.0, rel=0.05)
    assert result.cost.cells == 3 and result.n_paths == 3
    small = ToolContext(tc.model, Limits(max_work_units=40))
    with pytest.raises(LensError, match="refused before computing.*fewer senders"):
        path_patch(small, KEY_CLEAN, KEY_CORRUPTED, ANSWER, " w99", None, [[1, 2]], "k")
