"""patch_sweep's head inputs (q, k, v, pattern) and the noising direction on the toy model, against
TransformerLens's get_act_patch_attn_head_*_all_pos; result hygiene (null for skipped cells, exact zeros)."""

from __future__ import annotations

from typing import cast

import pytest

from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.schemas.common import round_sig
from lens_mcp.server.app import build_server
from lens_mcp.tools.causal.patch_sweep import patch_sweep, run_sweep
from lens_mcp.tools.core.context import ToolContext
from tests.mcp_client import call_tool, error_text, result_data
from tests.shared import ANSWER, CLEAN, CORRUPTED, TOL, WRONG, tl_head_values, transformer_lens_values


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("component", ["q", "k", "v", "pattern"])
def test_head_inputs_equal_transformer_lens(toy: ToolContext, component: str, direction: str) -> None:
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component, direction=direction)
    reference = tl_head_values(toy, component, sweep.cells, direction)
    assert len(sweep.cells) == toy.model.cfg.n_layers * toy.model.cfg.n_heads
    assert float((sweep.values - reference).abs().max()) <= TOL
    assert sweep.engine.stats.method == "driven"


def test_the_induction_head_reads_the_changed_token_through_its_values(toy: ToolContext) -> None:
    """On the planted circuit, L1H2 copies the token after the earlier occurrence: its values carry the
    answer (v of L1H2 restores most of it); its queries (the current token, the same in both prompts) and
    its pattern (where it looks: the same place in both prompts) barely matter."""
    grids = {c: patch_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, c).grid for c in ("q", "v", "pattern")}
    assert grids["v"][1][2] > 0.5
    assert abs(grids["q"][1][2]) < 0.05 and abs(grids["pattern"][1][2]) < 0.05


@pytest.mark.parametrize("component", ["resid_pre", "heads", "heads_by_pos", "attn_out"])
def test_noising_equals_transformer_lens_with_the_roles_swapped(toy: ToolContext, component: str) -> None:
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component, direction="noise")
    reference = transformer_lens_values(
        toy, component, sweep.cells, clean=CORRUPTED, corrupted=CLEAN, answer=ANSWER, wrong=WRONG
    )
    assert float((sweep.values - reference).abs().max()) <= TOL
    assert sweep.base_metric == sweep.clean_metric and sweep.clean_metric > sweep.corrupted_metric


def test_noising_is_normalized_so_1_fully_breaks_the_clean_behaviour(toy: ToolContext) -> None:
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre", direction="noise")
    result = patch_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre", direction="noise")
    span = sweep.clean_metric - sweep.corrupted_metric
    assert result.grid is not None
    flat = [v for row in result.grid for v in row]
    for value, raw, skipped in zip(flat, sweep.values.tolist(), sweep.skipped, strict=True):
        assert value is None if skipped else value == round_sig((sweep.clean_metric - raw) / span)
    # The corrupted token in the residual stream before layer 0 is the whole difference: exactly 1.
    assert result.grid[0][5] == pytest.approx(1.0, abs=1e-3)
    assert result.direction == "noise" and "fully breaks the clean behaviour" in result.meaning
    denoise = patch_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre")
    assert denoise.direction == "denoise" and "restores the clean behaviour" in denoise.meaning
    assert (result.clean_metric, result.corrupted_metric) == (denoise.clean_metric, denoise.corrupted_metric)


def test_cells_zero_by_construction_are_exactly_zero(toy: ToolContext) -> None:
    """In the last layer, a head's output at an earlier position cannot reach the last position."""
    result = patch_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads_by_pos", layers=[1])
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads_by_pos", layers=[1])
    grid = cast("list[list[list[float | None]]]", result.grid)  # heads_by_pos: layers x heads x positions
    for head in range(toy.model.cfg.n_heads):
        row = grid[0][head]
        assert all(value == 0.0 and isinstance(value, float) for value in row[:-1])
    reference = transformer_lens_values(toy, "heads_by_pos", sweep.cells)
    assert float((sweep.values - reference).abs().max()) <= TOL  # they are 0 for TransformerLens too
    assert any("exactly 0" in note for note in result.notes)


def test_grouped_query_key_value_heads_are_named_as_such(toy: ToolContext) -> None:
    # The toy model has as many key/value heads as query heads: the axis is a plain head axis.
    result = patch_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "k")
    assert result.axes == ["layer", "head"] and result.heads == list(range(toy.model.cfg.n_heads))
    assert not any("grouped-query" in note for note in result.notes)


async def test_head_inputs_and_noise_through_a_client(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    baseline = count_hooks(toy_host.model.bridge)
    arguments = {"clean_prompt": CLEAN, "corrupted_prompt": CORRUPTED, "answer": ANSWER, "wrong_answer": WRONG}
    data = result_data(await call_tool(server, "patch_sweep", {**arguments, "component": "v", "direction": "noise"}))
    assert data["direction"] == "noise" and data["axes"] == ["layer", "head"]
    with toy_host.use() as model:
        direct = patch_sweep(ToolContext(model, toy_host.limits), **arguments, component="v", direction="noise")
    assert data["grid"] == direct.grid and data["meaning"] == direct.meaning
    text = error_text(await call_tool(server, "patch_sweep", {**arguments, "component": "q", "positions": [1]}))
    assert "positions= does not apply to component='q'" in text
    text = error_text(await call_tool(server, "patch_sweep", {**arguments, "direction": "sideways"}))
    assert "direction" in text
    assert count_hooks(toy_host.model.bridge) == baseline
