"""attribution_patch on the toy model: the estimates equal TransformerLens's attribution patching (node
granularity) and gradients taken by TransformerLens's backward hooks, the verified cells equal the exact
patching engine (patch_sweep) and TransformerLens's patching functions, the planted induction head comes out
on top, rank agreement against pandas, bad input through a real MCP client, and no hook or gradient leaks."""

from __future__ import annotations

import itertools
import math
from typing import Any, cast

import anyio
import pandas as pd
import pytest
import torch
from transformer_lens import patching
from transformer_lens.tools.analysis.attribution_patching import (
    EdgeAttributionConfig,
    cache_activation_and_gradient,
)
from transformer_lens.tools.analysis.attribution_patching import (
    attribution_patch as tl_attribution_patch,
)

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.schemas.common import round_sig
from lens_mcp.server.app import build_server
from lens_mcp.tools.causal import attribution_patch as attribution_patch_module
from lens_mcp.tools.causal.attribution_patch import (
    PairRun,
    agreement,
    attribution_patch,
    classify,
    estimate_effects,
    resolve_grid,
    spearman,
)
from lens_mcp.tools.causal.patch_sweep import run_sweep
from lens_mcp.tools.core import grids
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import measured_throughput
from lens_mcp.tools.core.metrics import resolve_metric
from tests.mcp_client import call_tool, error_text, result_data
from tests.shared import pooled_from_singles

CLEAN = "w20 w31 w42 w53 w64 w20 w31 w42 w53"
CORRUPTED = "w20 w31 w42 w53 w77 w20 w31 w42 w53"
ANSWER, WRONG = " w64", " w77"
TOL = 1e-4
COMPONENTS = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos"]


def raw_estimates(
    tc: ToolContext, component: str, direction: str = "denoise", clean: str = CLEAN, corrupted: str = CORRUPTED
) -> tuple[torch.Tensor, list[Any], torch.Tensor]:
    """Our unrounded per-cell estimates (grad . delta), the cells, and the [clean, corrupted] tokens."""
    tokens = tc.model.bridge.to_tokens([clean, corrupted])
    pair = PairRun(tokens, resolve_metric(tc, ANSWER, WRONG))
    grid = resolve_grid(tc, component, None, None, [int(tokens.shape[-1])])
    return estimate_effects(tc, [pair], grid, direction).values[0], grid.cells, tokens


def tl_metric_fn(tc: ToolContext) -> Any:
    a, b = tc.model.bridge.to_single_token(ANSWER), tc.model.bridge.to_single_token(WRONG)
    return lambda logits: logits[0, -1, a] - logits[0, -1, b]


def tl_node_scores(tc: ToolContext, source: torch.Tensor, receiver: torch.Tensor) -> dict[Any, float]:
    """TransformerLens's attribution patching, node granularity: grad at `receiver` . (source - receiver)."""
    result = tl_attribution_patch(
        tc.model.bridge, source, receiver, tl_metric_fn(tc), EdgeAttributionConfig(granularity="node")
    )
    return {(node.kind, node.layer, node.head, node.position): score for node, score in result.node_scores.items()}


@pytest.mark.parametrize("split", [False, True], ids=["one pass", "source rows apart"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("component", ["heads_by_pos", "heads", "mlp_out"])
def test_estimates_equal_transformer_lens_attribution_patch(
    toy: ToolContext, component: str, direction: str, split: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The source rows run with the receiving rows in one pass, or in a forward pass of their own without gradients.
    monkeypatch.setattr(attribution_patch_module, "SPLIT_MIN_TOKENS", 0 if split else 10**9)
    values, cells, tokens = raw_estimates(toy, component, direction)
    # Denoising: gradient at the corrupted run, clean - corrupted. Noising swaps the roles of the two prompts.
    source, receiver = (tokens[:1], tokens[1:]) if direction == "denoise" else (tokens[1:], tokens[:1])
    scores = tl_node_scores(toy, source, receiver)
    n_tokens = int(tokens.shape[-1])
    expected = []
    for layer, head, position in cells:
        if component == "mlp_out":
            expected.append(scores[("mlp_out", layer, None, position)])
        elif position is None:  # heads: the head at every position
            expected.append(sum(scores[("attn_head_out", layer, head, p)] for p in range(n_tokens)))
        else:
            expected.append(scores[("attn_head_out", layer, head, position)])
    assert torch.allclose(values, torch.tensor(expected), atol=TOL, rtol=0)
    assert float(values.abs().max()) > 0.1 or component == "mlp_out"  # the toy's MLPs are zero


@pytest.mark.parametrize("metric", ["logprob", "prob"])
def test_probability_metrics_equal_transformer_lens(toy: ToolContext, metric: str) -> None:
    tokens = toy.model.bridge.to_tokens([CLEAN, CORRUPTED])
    pair = PairRun(tokens, resolve_metric(toy, ANSWER, None, metric))
    grid = resolve_grid(toy, "heads_by_pos", None, None, [int(tokens.shape[-1])])
    values = estimate_effects(toy, [pair], grid, "denoise").values[0]
    a = toy.model.bridge.to_single_token(ANSWER)

    def metric_fn(logits: torch.Tensor) -> torch.Tensor:
        logprob = logits[0, -1].log_softmax(-1)[a]
        return logprob.exp() if metric == "prob" else logprob

    result = tl_attribution_patch(toy.model.bridge, tokens[:1], tokens[1:], metric_fn, EdgeAttributionConfig("node"))
    scores = {(n.kind, n.layer, n.head, n.position): v for n, v in result.node_scores.items()}
    expected = torch.tensor([scores[("attn_head_out", layer, head, pos)] for layer, head, pos in grid.cells])
    assert torch.allclose(values, expected, atol=TOL, rtol=0)
    assert float(expected.abs().max()) > 1e-3


@pytest.mark.parametrize("component", ["resid_pre", "resid_mid", "resid_post", "attn_out"])
def test_residual_estimates_equal_gradients_from_transformer_lens_backward_hooks(
    toy: ToolContext, component: str
) -> None:
    values, cells, tokens = raw_estimates(toy, component)
    names = [f"blocks.{layer}.hook_{component}" for layer in range(toy.model.cfg.n_layers)]
    with torch.enable_grad():
        corrupted = cache_activation_and_gradient(toy.model.bridge, tokens[1:], tl_metric_fn(toy), names_filter=names)
    with torch.no_grad():
        _, clean_cache = toy.model.bridge.run_with_cache(tokens[:1], names_filter=names)
    expected = []
    for layer, _, position in cells:
        name = f"blocks.{layer}.hook_{component}"
        grad = corrupted.gradients[name]
        assert grad is not None
        delta = clean_cache[name] - corrupted.activations[name]
        expected.append(float((grad * delta)[0, position].sum()))
    assert torch.allclose(values, torch.tensor(expected), atol=TOL, rtol=0)


def test_the_grid_uses_patch_sweeps_normalization_and_rounding(toy: ToolContext) -> None:
    values, _, _ = raw_estimates(toy, "heads_by_pos")
    result = attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads_by_pos", verify_top=0)
    span = result.clean_metric - result.corrupted_metric
    n_layers, n_heads = toy.model.cfg.n_layers, toy.model.cfg.n_heads
    expected = (values / span).reshape(n_layers, n_heads, -1).tolist()
    grid = cast("list[list[list[float]]]", result.grid)  # heads_by_pos: layers x heads x positions
    flat_grid = [v for layer in grid for row in layer for v in row]
    flat_expected = [round_sig(v) for layer in expected for row in layer for v in row]
    assert flat_grid == pytest.approx(flat_expected, rel=2e-3, abs=1e-6)  # span from rounded metrics here
    assert result.axes == ["layer", "head", "position"] and result.normalized and result.direction == "denoise"
    assert result.verified == [] and result.agreement is None
    # Positions before the first differing token have bitwise equal activations: exactly zero.
    assert all(grid[layer][head][p] == 0 for layer in range(n_layers) for head in range(n_heads) for p in range(5))
    raw = attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads", verify_top=0, normalize=False)
    assert not raw.normalized and "estimated metric" in raw.meaning
    # Raw values are the receiving (corrupted) run's metric plus the estimated change.
    per_head = raw_estimates(toy, "heads")[0] + raw.corrupted_metric
    assert raw.grid is not None
    assert [v for row in raw.grid for v in row] == pytest.approx(per_head.tolist(), rel=1e-3)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_the_planted_induction_head_comes_first_and_is_verified(toy: ToolContext, direction: str) -> None:
    result = attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads", verify_top=4, direction=direction)
    top = result.top_cells[0]
    assert (top.layer, top.head) == (1, 2)  # L1H2, the induction head
    first = result.verified[0]
    assert (first.layer, first.head) == (1, 2) and first.problem is None
    assert first.exact == pytest.approx(1.0, abs=0.02) and first.estimate == pytest.approx(1.0, abs=0.05)
    assert [(v.layer, v.head) for v in result.verified] == [(c.layer, c.head) for c in result.top_cells[:4]]
    assert result.agreement is not None and result.agreement.n_verified == 4
    assert direction in result.meaning or ("breaks" in result.meaning) == (direction == "noise")


@pytest.mark.parametrize("component", ["heads_by_pos", "resid_pre", "heads"])
def test_verified_cells_equal_patch_sweep(toy: ToolContext, component: str) -> None:
    result = attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component, verify_top=8)
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component)
    span = sweep.clean_metric - sweep.corrupted_metric
    exact = {
        cell: (float(v) - sweep.corrupted_metric) / span for cell, v in zip(sweep.cells, sweep.values, strict=True)
    }
    assert len(result.verified) == min(8, len(sweep.cells))  # the toy has 6 heads
    for cell in result.verified:
        reference = exact[(cell.layer, cell.head, cell.position)]
        # Equal up to float noise of the batch shape (raw difference under 1e-5 of the metric).
        assert abs(cell.exact - reference) <= 1e-5 / abs(span) + abs(reference) * 1e-3, (cell, reference)


def test_noising_verified_cells_equal_transformer_lens_patching(toy: ToolContext) -> None:
    """Noising = patching the corrupted run's activation into the clean run: TransformerLens's function with the
    prompts' roles swapped is the reference; normalized (clean - patched) / (clean - corrupted)."""
    result = attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads_by_pos", verify_top=6, direction="noise")
    tokens = toy.model.bridge.to_tokens([CLEAN, CORRUPTED])
    metric = tl_metric_fn(toy)
    cells = [(c.layer, c.position, c.head) for c in result.verified]
    with torch.no_grad():
        _, corrupted_cache = toy.model.bridge.run_with_cache(tokens[1:])
        clean_value = float(metric(toy.model.bridge(tokens[:1])))
        corrupted_value = float(metric(toy.model.bridge(tokens[1:])))
        patched = patching.get_act_patch_attn_head_out_by_pos(
            toy.model.bridge,
            tokens[:1],
            corrupted_cache,
            metric,
            index_axis_names=None,
            index_df=pd.DataFrame(cells, columns=["layer", "pos", "head"]),
        )
    expected = (clean_value - patched) / (clean_value - corrupted_value)
    got = torch.tensor([c.exact for c in result.verified])
    assert torch.allclose(got, expected.float(), atol=1e-4, rtol=2e-3)
    assert result.verified[0].exact == pytest.approx(1.0, abs=0.02)  # L1H2 at the last position breaks it all


def pandas_spearman(x: list[float], y: list[float]) -> float:
    """Spearman = Pearson correlation of average ranks (pandas' own spearman needs scipy)."""
    return float(pd.Series(x).rank().corr(pd.Series(y).rank()))


def test_rank_agreement_matches_pandas_and_hand_counts() -> None:
    estimates = [0.9, -0.3, 0.25, 0.1, 0.02, 0.4]
    exacts = [1.0, 0.2, 0.3, -0.05, 0.01, 0.1]
    problems = [classify(e, x, 0.01) for e, x in zip(estimates, exacts, strict=True)]
    # -0.3 vs 0.2 and 0.1 vs -0.05: wrong sign; 0.4 vs 0.1: off by 3x; 0.02 vs 0.01: both tiny... no, over 0.01.
    assert problems == [None, "sign", None, "sign", "magnitude", "magnitude"]
    result = agreement(estimates, exacts, problems)
    expected = pandas_spearman(estimates, exacts)
    assert result.spearman == pytest.approx(round_sig(expected))
    # top 3 by |estimate|: 0, 5, 1; by |exact|: 0, 2, 1 -> {0, 1} shared
    assert (result.top_k, result.top_k_overlap, result.sign_wrong, result.magnitude_wrong) == (3, 2, 2, 2)
    ties = spearman([1, 1, 2, 3], [1, 2, 2, 3])
    assert ties == pytest.approx(pandas_spearman([1, 1, 2, 3], [1, 2, 2, 3]))
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    assert classify(0.004, -0.003, 0.01) is None  # both under the floor: agree


def test_no_hook_gradient_or_mode_leaks_even_when_the_metric_fails(toy: ToolContext) -> None:
    before = count_hooks(toy.model.bridge)
    tokens = toy.model.bridge.to_tokens([CLEAN, CORRUPTED])
    good = resolve_metric(toy, ANSWER, WRONG)

    def broken(logits: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("metric failed inside the hooked pass")

    grid = resolve_grid(toy, "heads_by_pos", None, None, [int(tokens.shape[-1])])
    with pytest.raises(RuntimeError, match="metric failed"):
        estimate_effects(toy, [PairRun(tokens, broken)], grid, "denoise")
    assert count_hooks(toy.model.bridge) == before
    with torch.no_grad():  # as the server calls tools: gradients come back off afterwards
        attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre", verify_top=3)
        assert not torch.is_grad_enabled()
    assert count_hooks(toy.model.bridge) == before
    assert all(p.grad is None for p in toy.model.bridge.parameters())  # no parameter gradient was accumulated
    # The failed call left the model usable: the same estimate as before it.
    assert estimate_effects(toy, [PairRun(tokens, good)], grid, "denoise").values.abs().max() > 0.5


def test_a_model_in_training_mode_is_refused(toy: ToolContext) -> None:
    toy.model.bridge.train()
    try:
        with pytest.raises(LensError, match="training mode"):
            attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG)
    finally:
        toy.model.bridge.eval()


def test_an_impossible_call_is_refused_before_any_forward_pass(
    toy: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured_throughput(toy)  # the cost estimate's own probe (measured once per model) is not the call's work
    calls: list[int] = []
    monkeypatch.setattr(toy.model.bridge, "forward", lambda *a, **k: calls.append(1))
    little_work = ToolContext(toy.model, Limits(max_work_units=10))
    with pytest.raises(LensError, match=r"refused before computing.*max_work_units=10.*layers=\[\.\.\.\]"):
        attribution_patch(little_work, CLEAN, CORRUPTED, ANSWER, WRONG, "heads_by_pos")
    few_cells = ToolContext(toy.model, Limits(max_sweep_cells=10))
    with pytest.raises(LensError, match="max_sweep_cells"):
        attribution_patch(few_cells, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre")
    assert calls == []


LONG_CLEAN = " ".join(f"w{i}" for i in range(10, 50))
LONG_LATE = LONG_CLEAN.rsplit(" ", 1)[0] + " w99"  # differs at the last word only
LONG_EARLY = "w10 w98 " + LONG_CLEAN.split(" ", 2)[2]  # differs at the second word
LONG_PAIRS = [
    {"clean_prompt": LONG_CLEAN, "corrupted_prompt": LONG_LATE, "answer": ANSWER, "wrong_answer": WRONG},
    {"clean_prompt": LONG_CLEAN, "corrupted_prompt": LONG_EARLY, "answer": ANSWER, "wrong_answer": WRONG},
]


def dense_flat(grid: Any) -> list[float]:
    """A nested grid's values, row-major."""
    return [v for layer in grid for row in layer for v in row]


def test_a_mostly_zero_grid_comes_back_sparse_equal_to_the_dense_one_and_to_transformer_lens(
    toy: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = attribution_patch(toy, LONG_CLEAN, LONG_LATE, ANSWER, WRONG, "heads_by_pos", verify_top=0)
    assert result.grid is None and result.sparse is not None and result.layer_max is None
    assert result.sparse.axes == ["layer", "head", "position"] == result.axes
    assert len(result.model_dump_json()) <= toy.limits.max_response_chars
    sparse = result.sparse.dense(result.axis_values(), fill=0.0)
    assert 0 < len(result.sparse.values) < result.n_cells // 2
    # Independent: TransformerLens's attribution patching, normalized by the clean - corrupted gap.
    tokens = toy.model.bridge.to_tokens([LONG_CLEAN, LONG_LATE])
    scores = tl_node_scores(toy, tokens[:1], tokens[1:])
    span = result.clean_metric - result.corrupted_metric
    assert result.clean_metric is not None and result.corrupted_metric is not None
    expected = [scores[("attn_head_out", *cell)] / span for cell in itertools.product(*result.axis_values())]
    assert sparse == pytest.approx(expected, rel=2e-3, abs=TOL)
    # The same call with sparse grids turned off gives the dense grid: equal cell for cell.
    monkeypatch.setattr(grids, "SPARSE_MIN_CELLS", 10**9)
    dense = attribution_patch(toy, LONG_CLEAN, LONG_LATE, ANSWER, WRONG, "heads_by_pos", verify_top=0)
    assert dense.sparse is None and dense.grid is not None
    assert dense_flat(dense.grid) == sparse
    assert dense.top_cells == result.top_cells
    [picture] = result.heatmaps()  # drawn from the sparse cells, the others hatched
    assert any("hatched" in note for note in picture.notes)
    assert [v for row in picture.values for v in row] == [None if v == 0 else v for v in sparse]


def test_a_sparse_dataset_grid_keeps_each_cells_spread(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    result = attribution_patch(toy, component="heads_by_pos", pairs=LONG_PAIRS, verify_top=0)
    assert result.grid is None and result.spread is None and result.sparse is not None
    monkeypatch.setattr(grids, "SPARSE_MIN_CELLS", 10**9)
    dense = attribution_patch(toy, component="heads_by_pos", pairs=LONG_PAIRS, verify_top=0)
    assert dense.grid is not None and dense.spread is not None
    axis_values = result.axis_values()
    assert result.sparse.dense(axis_values, fill=0.0) == dense_flat(dense.grid)
    listed = set(zip(*result.sparse.coords, strict=True))
    for name in ("std", "min", "max"):
        column = getattr(result.sparse, name)
        assert column is not None and len(column) == len(result.sparse.values)
        full = dense_flat(getattr(dense.spread, name))
        shown = [full[i] for i, cell in enumerate(itertools.product(*axis_values)) if cell in listed]
        assert column == shown


def test_a_grid_over_the_response_cap_returns_its_top_cells_and_a_summary(toy: ToolContext) -> None:
    """The call the cost estimate used to refuse for its size comes back within the cap."""
    cap = 6_000
    roomy = ToolContext(toy.model, Limits(max_response_chars=1_000_000))
    full = attribution_patch(roomy, LONG_CLEAN, LONG_EARLY, ANSWER, WRONG, "heads_by_pos", verify_top=3)
    assert full.sparse is not None and len(full.model_dump_json()) > cap - 2_000
    small = ToolContext(toy.model, Limits(max_response_chars=cap))
    summarized = attribution_patch(small, LONG_CLEAN, LONG_EARLY, ANSWER, WRONG, "heads_by_pos", verify_top=3)
    assert summarized.grid is None and summarized.sparse is None and summarized.layer_max is not None
    assert len(summarized.model_dump_json()) <= cap
    assert summarized.cost.result_chars <= cap
    assert summarized.top_cells == full.top_cells and summarized.verified == full.verified
    values = full.sparse.dense(full.axis_values(), fill=0.0)
    width = len(values) // len(full.layers)
    for layer, largest in enumerate(summarized.layer_max):
        assert largest == pytest.approx(max(abs(v or 0.0) for v in values[layer * width : (layer + 1) * width]))
    assert any("over the response cap" in note and "layers=" in note for note in summarized.notes)
    assert summarized.heatmaps() == []  # nothing to draw but the summary


def test_dry_run_returns_the_cost_and_computes_nothing(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = toy.model.throughput, toy.model.block_call_seconds
    toy.model.throughput, toy.model.block_call_seconds = 1000.0, 0.0  # so the seconds follow by hand
    calls: list[int] = []
    monkeypatch.setattr(toy.model.bridge, "forward", lambda *a, **k: calls.append(1))
    try:
        result = attribution_patch(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads_by_pos", verify_top=4, dry_run=True)
    finally:
        toy.model.throughput, toy.model.block_call_seconds = saved
    assert calls == [] and result.dry_run and result.grid == [] and result.verified == []
    n_layers, n_heads, n_tokens = toy.model.cfg.n_layers, toy.model.cfg.n_heads, 10
    assert result.cost.cells == result.n_cells == n_layers * n_heads * n_tokens
    # forward of both prompts + their backward (twice a forward) + the engine's 2 runs and 4 / 2 patched rows, these
    # only over the positions from the first differing token on
    tokens = toy.model.bridge.to_tokens([CLEAN, CORRUPTED])
    first = int(torch.nonzero(tokens[0] != tokens[1])[0, 0])
    units = (2 + 2 * 2 + 2 + math.ceil(2 * (n_tokens - first) / n_tokens)) * n_tokens * n_layers
    assert 0 < first < n_tokens - 1  # the patched rows are counted from it
    assert result.cost.work_units == units and result.cost.seconds == pytest.approx(units / 1000.0, rel=1e-3)
    assert result.cost.result_chars >= 9 * result.n_cells


def test_progress_is_reported(toy: ToolContext) -> None:
    seen: list[tuple[float, float | None]] = []
    tc = ToolContext(toy.model, toy.limits, lambda done, total=None, message=None: seen.append((done, total)))
    attribution_patch(tc, CLEAN, CORRUPTED, ANSWER, WRONG, "heads", verify_top=2)
    assert seen and seen[-1][0] == seen[-1][1]


def test_counter_argument_is_optional(toy: ToolContext) -> None:
    tokens = toy.model.bridge.to_tokens([CLEAN, CORRUPTED])
    grid = resolve_grid(toy, "heads", None, None, [int(tokens.shape[-1])])
    counter = ProgressCounter(total=1)
    estimate_effects(toy, [PairRun(tokens, resolve_metric(toy, ANSWER, WRONG))], grid, "denoise", counter)
    assert counter.done == 1


def test_through_mcp_happy_path_and_bad_input(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    args = {"clean_prompt": CLEAN, "corrupted_prompt": CORRUPTED, "answer": ANSWER, "wrong_answer": WRONG}

    async def scenario() -> None:
        data = result_data(await call_tool(server, "attribution_patch", {**args, "verify_top": 3}))
        assert data["component"] == "heads" and data["direction"] == "denoise" and len(data["verified"]) == 3
        assert data["verified"][0]["layer"] == 1 and data["verified"][0]["head"] == 2
        assert "restores the clean behaviour" in data["meaning"]
        dataset = result_data(
            await call_tool(
                server,
                "attribution_patch",
                {"pairs": PAIR_SETS, "component": "heads_by_pos", "positions": [-1], "verify_top": 2},
            )
        )
        assert dataset["spread"]["n_pairs"] == 3 and len(dataset["pair_metrics"]) == 3
        assert dataset["positions"] == [-1] and len(dataset["verified"]) == 2
        dry = result_data(await call_tool(server, "attribution_patch", {**args, "dry_run": True}))
        assert dry["dry_run"] and dry["grid"] == [] and dry["cost"]["cells"] == dry["n_cells"]
        cases = [
            ({"component": "nope"}, "component"),
            ({"positions": [1]}, "positions= does not apply"),
            ({"verify_top": -1}, "verify_top=-1 is out of range"),
            ({"direction": "sideways"}, "direction"),
            ({"corrupted_prompt": "w20 w31"}, "same length"),
            ({"answer": "w64 w65"}, "single token"),
            ({"component": "heads_by_pos", "positions": [99]}, "positions=99 is out of range"),
        ]
        for change, expected in cases:
            text = error_text(await call_tool(server, "attribution_patch", {**args, **change}))
            assert expected in text, text
            assert "unexpectedly" not in text

    anyio.run(scenario)
    with toy_host.use() as model:
        assert count_hooks(model.bridge) == toy_host._baseline_hooks


# ---- prompt datasets ---------------------------------------------------------------------------------------
PAIR_SETS = [
    {"clean_prompt": CLEAN, "corrupted_prompt": CORRUPTED, "answer": ANSWER, "wrong_answer": WRONG},
    {
        "clean_prompt": "w10 w11 w12 w13 w14 w10 w11 w12 w13",
        "corrupted_prompt": "w10 w11 w12 w13 w99 w10 w11 w12 w13",
        "answer": " w14",
        "wrong_answer": " w99",
    },
    {
        "clean_prompt": "w5 w6 w7 w8 w5 w6 w7",  # shorter: 8 tokens
        "corrupted_prompt": "w5 w6 w7 w9 w5 w6 w7",
        "answer": " w8",
        "wrong_answer": " w9",
    },
]


def single(tc: ToolContext, pair: dict[str, str], **kwargs: Any) -> Any:
    return attribution_patch(tc, **pair, **kwargs)


def flatten(grid: Any) -> list[float]:
    if isinstance(grid, list) and grid and isinstance(grid[0], list):
        return [v for row in grid for v in flatten(row)]
    return list(grid)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_the_pooled_dataset_value_follows_from_single_pair_calls(toy: ToolContext, direction: str) -> None:
    """A dataset is normalized pooled: (mean change over pairs) / (mean clean - mean corrupted); each pair's
    value in the spread is its change over that same pooled gap. Both follow from the single-pair calls."""
    pairs = PAIR_SETS[:2]  # same length: every position
    both = attribution_patch(toy, component="heads_by_pos", pairs=pairs, verify_top=0, direction=direction)
    singles = [single(toy, p, component="heads_by_pos", verify_top=0, direction=direction) for p in pairs]
    gaps = torch.tensor([s.clean_metric - s.corrupted_metric for s in singles], dtype=torch.float64)
    changes = torch.tensor([flatten(s.grid) for s in singles], dtype=torch.float64) * gaps[:, None]
    grids = changes / gaps.mean()
    assert flatten(both.grid) == pytest.approx(grids.mean(0).tolist(), rel=2e-3, abs=2e-6)
    assert both.spread is not None and both.spread.n_pairs == 2
    assert flatten(both.spread.min) == pytest.approx(grids.min(0).values.tolist(), rel=2e-3, abs=2e-6)
    assert flatten(both.spread.max) == pytest.approx(grids.max(0).values.tolist(), rel=2e-3, abs=2e-6)
    # The singles are rounded to 4 digits: a std of close values inherits that rounding, about 1e-3 of the values.
    rounding = grids.abs().max(0).values * 1e-3 + 2e-6
    std = torch.tensor(flatten(both.spread.std))
    assert bool(((std - grids.std(0, unbiased=False)).abs() <= rounding).all())
    assert both.pair_metrics is not None
    got = [v for m in both.pair_metrics for v in (m.clean_metric, m.corrupted_metric)]
    assert got == pytest.approx([v for s in singles for v in (s.clean_metric, s.corrupted_metric)], rel=1e-3)
    assert both.forward_passes == 1  # both pairs' prompts in one batched forward and backward pass
    assert "pooled" in both.meaning


def test_pairs_of_different_lengths_line_up_from_the_end(toy: ToolContext) -> None:
    both = attribution_patch(
        toy, component="heads_by_pos", positions=[-1, -3], pairs=PAIR_SETS, verify_top=3, normalize=True
    )
    singles = [single(toy, p, component="heads_by_pos", positions=[-1, -3], verify_top=0) for p in PAIR_SETS]
    grids = pooled_from_singles(
        torch.tensor([flatten(s.grid) for s in singles]),
        [s.clean_metric for s in singles],
        [s.corrupted_metric for s in singles],
    )
    assert both.positions == [-1, -3]
    assert flatten(both.grid) == pytest.approx(grids.mean(0).tolist(), rel=2e-3, abs=2e-6)
    assert both.forward_passes >= 2  # two lengths: two gradient batches (plus verification)
    # The verified cells' exact values pool the exact engine's runs on each pair (patch_sweep per pair).
    for cell in both.verified:
        changes, spans = [], []
        for pair in PAIR_SETS:
            n = len(toy.model.bridge.to_tokens(pair["clean_prompt"])[0])
            sweep = run_sweep(toy, *pair.values(), "heads_by_pos", layers=[cell.layer], positions=[cell.position])  # type: ignore[misc]
            spans.append(sweep.clean_metric - sweep.corrupted_metric)
            changes.append(float(sweep.values[cell.head]) - sweep.corrupted_metric)
            assert sweep.positions == [n + cell.position]
        assert cell.exact == pytest.approx(sum(changes) / sum(spans), rel=1e-3, abs=1e-5)


def test_the_raw_mean_equals_transformer_lens_on_a_batch_of_pairs(toy: ToolContext) -> None:
    """TransformerLens's attribution_patch averages node scores over a batch of pairs."""
    pairs = PAIR_SETS[:2]
    runs = [
        PairRun(
            toy.model.bridge.to_tokens([p["clean_prompt"], p["corrupted_prompt"]]),
            resolve_metric(toy, p["answer"], p["wrong_answer"]),
        )
        for p in pairs
    ]
    grid = resolve_grid(toy, "heads_by_pos", None, None, [10, 10])
    values = estimate_effects(toy, runs, grid, "denoise").values.mean(0)
    ids = [
        (toy.model.bridge.to_single_token(p["answer"]), toy.model.bridge.to_single_token(p["wrong_answer"]))
        for p in pairs
    ]
    # TransformerLens runs one pair at a time: its metric_fn sees one pair's logits. Which pair: count the calls.
    calls = {"n": 0}

    def metric_fn(logits: torch.Tensor) -> torch.Tensor:
        index = (calls["n"] // 2) % len(pairs)  # clean pass, corrupted pass per pair
        calls["n"] += 1
        a, b = ids[index]
        return logits[0, -1, a] - logits[0, -1, b]

    clean = torch.cat([r.tokens[:1] for r in runs])
    corrupted = torch.cat([r.tokens[1:] for r in runs])
    result = tl_attribution_patch(
        toy.model.bridge, clean, corrupted, metric_fn, EdgeAttributionConfig(granularity="node")
    )
    scores = {(n.kind, n.layer, n.head, n.position): s for n, s in result.node_scores.items()}
    expected = torch.tensor([scores[("attn_head_out", layer, head, pos)] for layer, head, pos in grid.cells])
    assert torch.allclose(values, expected, atol=TOL, rtol=0)


def test_dataset_errors_name_the_pair(toy: ToolContext) -> None:
    with pytest.raises(LensError, match=r"pairs\[2\] is 8 tokens long but pairs\[0\] is 10"):
        attribution_patch(toy, component="heads_by_pos", pairs=PAIR_SETS)
    bad = [PAIR_SETS[0], {**PAIR_SETS[1], "answer": " w14 w15"}]
    with pytest.raises(LensError, match=r"pairs\[1\]\.answer must be a single token"):
        attribution_patch(toy, pairs=bad)
    with pytest.raises(LensError, match="not both"):
        attribution_patch(toy, CLEAN, pairs=PAIR_SETS)
    with pytest.raises(LensError, match=r"pairs\[1\]\.corrupted_prompt is required"):
        attribution_patch(toy, pairs=[PAIR_SETS[0], {"clean_prompt": CLEAN, "answer": ANSWER}])
    with pytest.raises(LensError, match="clean_prompt is required"):
        attribution_patch(toy)
