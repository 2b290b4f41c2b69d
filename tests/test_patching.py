"""patch_sweep and ablate_heads on the toy model: every component equals TransformerLens's patching
functions, the batching caps and the out-of-memory retry, progress and cancellation through a real MCP
client, and ablate_heads against hand-written hooks."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import torch
from mcp import Client

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.schemas.common import round_sig
from lens_mcp.server.app import build_server
from lens_mcp.tools.causal import _engine as patching_engine
from lens_mcp.tools.causal._engine import PatchEngine
from lens_mcp.tools.causal.ablate_heads import ablate_heads
from lens_mcp.tools.causal.patch_sweep import patch_sweep, run_sweep
from lens_mcp.tools.core import batching
from lens_mcp.tools.core.batching import ProgressCounter, plan_rows, run_batched
from lens_mcp.tools.core.context import ToolContext
from tests.mcp_client import call_tool, error_text, result_data
from tests.shared import (
    ANSWER,
    CLEAN,
    CORRUPTED,
    TL_FUNCTIONS,
    TOL,
    WRONG,
    hand_ablation,
    leak_reports,
    transformer_lens_values,
)


@pytest.mark.parametrize("component", [*TL_FUNCTIONS, "resid_post"])
def test_every_component_equals_transformer_lens(toy: ToolContext, component: str) -> None:
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component)
    reference = transformer_lens_values(toy, component, sweep.cells)
    assert sweep.values.shape == reference.shape
    assert float((sweep.values - reference).abs().max()) <= TOL
    assert sweep.engine.stats.method == "driven"
    n_layers, n_heads, n_tokens = toy.model.cfg.n_layers, toy.model.cfg.n_heads, 10
    expected_cells = {"heads": n_layers * n_heads, "heads_by_pos": n_layers * n_heads * n_tokens}
    assert len(sweep.cells) == expected_cells.get(component, n_layers * n_tokens)


@pytest.mark.parametrize("metric", ["prob", "logprob"])
def test_probability_metrics_equal_transformer_lens(toy: ToolContext, metric: str) -> None:
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, None, "resid_pre", metric=metric)
    reference = transformer_lens_values(toy, "resid_pre", sweep.cells, metric=metric)
    assert float((sweep.values - reference).abs().max()) <= TOL


def test_layers_and_positions_restrict_the_grid(toy: ToolContext) -> None:
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads_by_pos", layers=[-1], positions=[-1, 5])
    assert sweep.layers == [toy.model.cfg.n_layers - 1] and sweep.positions == [9, 5]
    assert len(sweep.cells) == toy.model.cfg.n_heads * 2
    reference = transformer_lens_values(toy, "heads_by_pos", sweep.cells)
    assert float((sweep.values - reference).abs().max()) <= TOL


def test_the_result_grid_is_normalized_and_rounded(toy: ToolContext) -> None:
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre")
    result = patch_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre")
    span = sweep.clean_metric - sweep.corrupted_metric
    expected = ((sweep.values - sweep.corrupted_metric) / span).tolist()
    expected = [None if skip else value for value, skip in zip(expected, sweep.skipped, strict=True)]
    assert result.grid == [
        [None if v is None else round_sig(v) for v in expected[i * 10 : (i + 1) * 10]] for i in range(2)
    ]
    assert result.axes == ["layer", "position"] and result.normalized
    assert result.clean_metric == round_sig(sweep.clean_metric)
    assert result.corrupted_metric == round_sig(sweep.corrupted_metric)
    # Patching the whole residual stream at the first differing position restores the clean run exactly.
    assert result.grid[0][5] == pytest.approx(1.0, abs=1e-3)
    # Positions before the first differing token hold identical activations: skipped, null, and said so.
    assert all(result.grid[layer][p] is None for layer in range(2) for p in range(5))
    # Layer 0's input is the token embedding: every position with the same token in both prompts (all but 5)
    # is identical; at layer 1 only the prefix before position 5 is.
    assert all(result.grid[0][p] is None for p in range(6, 10)) and result.grid[1][6] is not None
    assert result.skipped_cells == 14 and any(note.startswith("skipped: 14 cells are null") for note in result.notes)
    top = result.top_cells[0]
    assert result.grid is not None
    assert abs(top.value) == max(abs(v) for row in result.grid for v in row if v is not None)
    assert result.clean_tokens[5] == "w64" and result.corrupted_tokens[5] == "w77"
    raw = patch_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre", normalize=False)
    raw_expected = [None if skip else v for v, skip in zip(sweep.values.tolist(), sweep.skipped, strict=True)]
    assert raw.grid == [
        [None if v is None else round_sig(v) for v in raw_expected[i * 10 : (i + 1) * 10]] for i in range(2)
    ]


def test_identical_prompts_are_reported_raw_with_a_note(toy: ToolContext) -> None:
    result = patch_sweep(toy, CLEAN, CLEAN, ANSWER, WRONG, "heads")
    assert not result.normalized and result.notes and "cannot be normalized" in result.notes[0]
    assert result.skipped_cells == result.n_cells and result.forward_passes == 1  # the clean and corrupted runs
    assert result.grid is not None
    assert all(value is None for row in result.grid for value in row)


def test_a_failing_driven_batch_falls_back_to_hooked_passes(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "attn_out")
    calls: list[int] = []
    driven_batch = PatchEngine._driven_batch

    def second_batch_breaks(self: PatchEngine, batch: Any, offset: int, control: bool) -> torch.Tensor:
        calls.append(len(batch))
        if len(calls) == 2:
            raise ValueError("an architecture the driven path does not handle")
        return driven_batch(self, batch, offset, control)

    monkeypatch.setattr(PatchEngine, "_driven_batch", second_batch_breaks)
    sweep = run_sweep(
        ToolContext(toy.model, Limits(max_batch_sequences=3)), CLEAN, CORRUPTED, ANSWER, WRONG, "attn_out"
    )
    assert sweep.engine.stats.method == "hooked" and sweep.engine.stats.notes
    assert float((sweep.values - reference.values).abs().max()) <= TOL


def test_a_control_row_catches_a_broken_driven_path(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    def forget_the_prefix(
        self: Any, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.recording:
            self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value  # suffix rows would attend to themselves only: wrong, and the control row sees it

    monkeypatch.setattr(patching_engine._PrefixKV, "update", forget_the_prefix)
    for limits in (Limits(), Limits(max_batch_sequences=1)):  # control rows; one whole validating pass
        sweep = run_sweep(ToolContext(toy.model, limits), CLEAN, CORRUPTED, ANSWER, WRONG, "resid_pre")
        assert sweep.engine.stats.method == "hooked"
        reference = transformer_lens_values(toy, "resid_pre", sweep.cells)
        assert float((sweep.values - reference).abs().max()) <= TOL


def test_the_hooked_fallback_equals_transformer_lens(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare = PatchEngine.prepare

    def no_blocks(self: PatchEngine) -> None:
        prepare(self)
        self.driven_ok = False

    monkeypatch.setattr(PatchEngine, "prepare", no_blocks)
    for component in ("resid_pre", "heads"):
        sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, component)
        assert sweep.engine.stats.method == "hooked"
        reference = transformer_lens_values(toy, component, sweep.cells)
        assert float((sweep.values - reference).abs().max()) <= TOL


def test_batches_respect_the_caps(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[tuple[int, int]] = []  # (sequences, tokens) of every block call
    call_block = PatchEngine._call_block

    def spy(self: PatchEngine, layer: int, x: torch.Tensor, offset: int, *, with_kv: bool) -> torch.Tensor:
        sizes.append((x.shape[0], x.shape[0] * x.shape[1]))
        return call_block(self, layer, x, offset, with_kv=with_kv)

    monkeypatch.setattr(PatchEngine, "_call_block", spy)
    reference = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads_by_pos")
    assert max(rows for rows, _ in sizes) > 3
    for limits in (Limits(max_batch_sequences=3), Limits(max_batch_tokens=3 * 10), Limits(max_batch_sequences=1)):
        sizes.clear()
        sweep = run_sweep(ToolContext(toy.model, limits), CLEAN, CORRUPTED, ANSWER, WRONG, "heads_by_pos")
        assert max(rows for rows, _ in sizes) <= limits.max_batch_sequences
        assert max(tokens for _, tokens in sizes) <= limits.max_batch_tokens
        assert sweep.engine.stats.forward_passes > reference.engine.stats.forward_passes
        assert float((sweep.values - reference.values).abs().max()) <= TOL


def test_an_out_of_memory_batch_is_halved_and_retried(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads")
    driven_batch = PatchEngine._driven_batch
    tried: list[int] = []

    def flaky(self: PatchEngine, batch: Any, offset: int, control: bool) -> torch.Tensor:
        tried.append(len(batch))
        if len(batch) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return driven_batch(self, batch, offset, control)

    monkeypatch.setattr(PatchEngine, "_driven_batch", flaky)
    sweep = run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads")
    # The whole sweep in one batch first; halved while it fails; the size that worked is kept for the rest.
    assert tried[0] == toy.model.cfg.n_layers * toy.model.cfg.n_heads
    failed = [size for size in tried if size > 2]
    assert failed == [tried[0] >> k for k in range(len(failed))]
    assert all(size == tried[len(failed)] for size in tried[len(failed) :])
    assert float((sweep.values - reference.values).abs().max()) <= TOL


def test_run_batched_halves_on_memory_errors_and_reports_progress() -> None:
    reports: list[tuple[float, float | None]] = []
    counter = ProgressCounter(lambda done, total=None, message=None: reports.append((done, total)), total=10)

    def run(batch: Any) -> list[int]:
        if len(batch) > 3:
            raise MemoryError
        return [2 * x for x in batch]

    results = run_batched(list(range(10)), run, rows=8, counter=counter)
    assert [y for _, out in results for y in out] == [2 * x for x in range(10)]
    assert max(len(batch) for batch, _ in results) <= 3
    assert [done for done, _ in reports] == sorted(done for done, _ in reports) and reports[-1] == (10, 10)
    with pytest.raises(MemoryError):
        run_batched([1], lambda batch: (_ for _ in ()).throw(MemoryError()), rows=4)
    with pytest.raises(ValueError):  # other errors are not retried
        run_batched([1, 2], lambda batch: (_ for _ in ()).throw(ValueError("bug")), rows=4)


def test_plan_rows_follows_the_caps_and_free_memory(toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    assert batching.available_memory_bytes("cpu") > 0
    limits = Limits(max_batch_sequences=50, max_batch_tokens=200)
    assert plan_rows(limits, "cpu", 10, 1).rows == 20
    assert plan_rows(limits, "cpu", 1, 1).rows == 50
    assert plan_rows(limits, "cpu", 1, 1, wanted=7).rows == 7
    monkeypatch.setattr(batching, "available_memory_bytes", lambda device: 10_000)
    plan = plan_rows(limits, "cpu", 1, 1000)
    assert (plan.rows, plan.reason) == (5, "memory")
    assert plan_rows(limits, "cpu", 1, 10**9).rows == 1


def test_errors_name_the_argument_and_the_fix(toy: ToolContext) -> None:
    with pytest.raises(LensError) as info:
        run_sweep(toy, CLEAN, "w20 w31 w42", ANSWER, WRONG)
    text = str(info.value)
    assert "same length" in text and "'w64'" in text and "'w42'" in text and "10 and 4 tokens" in text
    with pytest.raises(LensError, match="max_sweep_cells=5.*layers=.*positions="):
        run_sweep(ToolContext(toy.model, Limits(max_sweep_cells=5)), CLEAN, CORRUPTED, ANSWER, WRONG)
    with pytest.raises(LensError, match="heads_by_pos"):
        run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "heads", positions=[1])
    with pytest.raises(LensError, match="wrong_answer"):
        run_sweep(toy, CLEAN, CORRUPTED, ANSWER, None)
    with pytest.raises(LensError, match="component='bogus'"):
        run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, "bogus")
    with pytest.raises(LensError, match="layers=7 is out of range"):
        run_sweep(toy, CLEAN, CORRUPTED, ANSWER, WRONG, layers=[7])
    with pytest.raises(LensError, match="single token"):
        run_sweep(toy, CLEAN, CORRUPTED, "w64 w65", WRONG)


async def test_patch_sweep_through_a_client_reports_progress(toy_host: ModelHost) -> None:
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        reports.append((done, total, message))

    arguments = {
        "clean_prompt": CLEAN,
        "corrupted_prompt": CORRUPTED,
        "answer": ANSWER,
        "wrong_answer": WRONG,
        "component": "heads_by_pos",
    }
    async with Client(build_server(toy_host)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        data = result_data(await client.call_tool("patch_sweep", arguments, progress_callback=on_progress))
    schema = tools["patch_sweep"].input_schema
    assert schema.get("required", []) == []  # the prompts, or pairs=[...]
    assert set(schema["properties"]) == {
        "clean_prompt",
        "corrupted_prompt",
        "answer",
        "wrong_answer",
        "component",
        "layers",
        "positions",
        "metric",
        "normalize",
        "image",
        "direction",
        "pairs",
        "dry_run",
    }
    assert tools["patch_sweep"].annotations.read_only_hint is True
    n_cells = toy_host.model.cfg.n_layers * toy_host.model.cfg.n_heads * 10
    assert data["n_cells"] == n_cells and data["axes"] == ["layer", "head", "position"]
    assert len(data["grid"]) == 2 and len(data["grid"][0]) == toy_host.model.cfg.n_heads
    assert data["forward_passes"] < n_cells and data["seconds"] > 0
    assert data["clean_tokens"][5] == "w64" and data["corrupted_tokens"][5] == "w77"
    assert len(reports) >= 2
    assert all(total == n_cells for _, total, _ in reports)
    dones = [done for done, _, _ in reports]
    assert dones == sorted(dones) and dones[-1] == n_cells


async def test_patch_sweep_errors_reach_the_client(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    text = error_text(
        await call_tool(
            server,
            "patch_sweep",
            {"clean_prompt": CLEAN, "corrupted_prompt": "w1 w2", "answer": ANSWER, "wrong_answer": WRONG},
        )
    )
    assert "clean_prompt and corrupted_prompt must tokenize to the same length" in text
    assert "corrupted_prompt: ['<|bos|>', 'w1', 'w2']" in text


def toy_n_ctx(host: ModelHost) -> int:
    assert host.model is not None
    return min(int(host.model.cfg.n_ctx), host.limits.max_prompt_tokens)


async def test_a_cancelled_sweep_leaves_no_hook_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    host = ModelHost(Limits(max_batch_sequences=1))
    host.load("toy-induction", device="cpu")
    server = build_server(host)
    reference = {
        "clean_prompt": CLEAN,
        "corrupted_prompt": CORRUPTED,
        "answer": ANSWER,
        "wrong_answer": WRONG,
        "component": "heads",
    }
    before = result_data(await call_tool(server, "patch_sweep", reference))

    # A long sweep, one row per batch, slowed down between batches so it cannot finish before the cancel.
    words = [f"w{i}" for i in range(10, 10 + toy_n_ctx(host) - 4)]
    big_clean = " ".join(["w1", *words])
    big_corrupted = " ".join(["w2", *words])
    big_cells = host.model.cfg.n_layers * host.model.cfg.n_heads * (len(words) + 2)
    seen: list[tuple[int | None, int]] = []
    advance = ProgressCounter.advance

    def slow_advance(self: ProgressCounter, n: int, message: str | None = None) -> None:
        seen.append((self.total, self.done + n))
        time.sleep(0.01)
        advance(self, n, message)

    monkeypatch.setattr(ProgressCounter, "advance", slow_advance)
    started = anyio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        if done > 0:
            started.set()

    big = {
        "clean_prompt": big_clean,
        "corrupted_prompt": big_corrupted,
        "answer": ANSWER,
        "wrong_answer": WRONG,
        "component": "heads_by_pos",
    }
    async with Client(server) as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:

                async def sweep() -> None:
                    await client.call_tool("patch_sweep", big, progress_callback=on_progress)

                group.start_soon(sweep)
                await started.wait()
                group.cancel_scope.cancel()
        # The next call waits for the cancelled one to let go of the model.
        after = result_data(await client.call_tool("patch_sweep", reference))

    assert leak_reports() == []
    big_progress = [done for total, done in seen if total == big_cells]
    assert big_progress and max(big_progress) < big_cells, "the sweep ran to the end instead of stopping"
    for key in ("grid", "clean_metric", "corrupted_metric", "top_cells"):
        assert after[key] == before[key]


# ---- ablate_heads ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablate_heads_equals_hand_written_hooks(toy: ToolContext, mode: str) -> None:
    heads = [(1, 2), (0, 1), (1, 0)]
    a, b = toy.model.bridge.to_single_token(ANSWER), toy.model.bridge.to_single_token(WRONG)
    result = ablate_heads(toy, CLEAN, [list(h) for h in heads], ANSWER, WRONG, mode=mode, individually=True)
    with torch.no_grad():
        clean = toy.model.bridge(toy.model.bridge.to_tokens(CLEAN))[0, -1]
    together = hand_ablation(toy, CLEAN, heads, mode)
    assert result.metric_before == round_sig(float(clean[a] - clean[b]))
    assert result.metric_after == round_sig(float(together[a] - together[b]))
    assert result.prob_after == round_sig(float(together.softmax(-1)[a]))
    assert result.heads == heads
    assert result.individual is not None and len(result.individual) == 3
    for effect in result.individual:
        alone = hand_ablation(toy, CLEAN, [(effect.layer, effect.head)], mode)
        assert effect.metric == round_sig(float(alone[a] - alone[b]))
    effects = [effect.effect for effect in result.individual]
    assert effects == sorted(effects)
    single = ablate_heads(toy, CLEAN, [[1, 2]], ANSWER, mode=mode)
    alone = hand_ablation(toy, CLEAN, [(1, 2)], mode)
    assert single.metric_after == round_sig(float(alone[a])) and single.individual is None


def _keep_only(tc: ToolContext, prompt: str, kept: list[tuple[int, int]]) -> torch.Tensor:
    """Last-position logits with every head's z zeroed except the kept ones: one mask hook per layer."""
    bridge = tc.model.bridge
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    hooks = []
    for layer in range(n_layers):
        mask = torch.tensor([1.0 if (layer, head) in kept else 0.0 for head in range(n_heads)])

        def hook(z: torch.Tensor, hook: Any, mask: torch.Tensor = mask) -> torch.Tensor:
            return z * mask[None, None, :, None]

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    with torch.no_grad():
        return bridge.run_with_hooks(bridge.to_tokens(prompt), fwd_hooks=hooks)[0, -1]


def test_ablate_heads_keep_ablates_every_other_head(toy: ToolContext) -> None:
    a, b = toy.model.bridge.to_single_token(ANSWER), toy.model.bridge.to_single_token(WRONG)
    kept = [(1, 2), (0, 1)]
    result = ablate_heads(toy, CLEAN, None, ANSWER, WRONG, keep=[list(h) for h in kept])
    expected = _keep_only(toy, CLEAN, kept)
    assert result.metric_after == round_sig(float(expected[a] - expected[b]))
    assert result.kept == kept
    n_layers, n_heads = toy.view.n_layers, toy.view.n_heads
    assert len(result.heads) == n_layers * n_heads - 2 and not set(kept) & set(result.heads)
    other = ablate_heads(toy, CLEAN, None, ANSWER, WRONG, keep=[[0, 1]])
    expected = _keep_only(toy, CLEAN, [(0, 1)])
    assert other.metric_after == round_sig(float(expected[a] - expected[b])) != result.metric_after
    everything = ablate_heads(
        toy, CLEAN, None, ANSWER, WRONG, keep=[[layer, head] for layer in range(n_layers) for head in range(n_heads)]
    )
    assert everything.heads == [] and everything.effect == 0.0
    assert everything.metric_after == everything.metric_before == result.metric_before
    with pytest.raises(LensError, match="heads and keep are exclusive"):
        ablate_heads(toy, CLEAN, [[1, 2]], ANSWER, keep=[[0, 1]])
    with pytest.raises(LensError, match=r"heads is required.*keep="):
        ablate_heads(toy, CLEAN, None, ANSWER)
    with pytest.raises(LensError, match=r"keep\[0\]\[1\] \(head\)=9"):
        ablate_heads(toy, CLEAN, None, ANSWER, keep=[[0, 9]])
    with pytest.raises(LensError, match="individually=true with keep"):
        ablate_heads(toy, CLEAN, None, ANSWER, keep=[[0, 1]], individually=True)


def test_ablate_heads_rejects_bad_heads(toy: ToolContext) -> None:
    with pytest.raises(LensError, match="non-empty list"):
        ablate_heads(toy, CLEAN, [], ANSWER)
    with pytest.raises(LensError, match=r"heads\[0\]=\[1\]: each entry must be a \[layer, head\] pair"):
        ablate_heads(toy, CLEAN, [[1]], ANSWER)
    with pytest.raises(LensError, match=r"heads\[1\]\[1\] \(head\)=9 is out of range"):
        ablate_heads(toy, CLEAN, [[0, 0], [1, 9]], ANSWER)
    with pytest.raises(LensError, match="mode='half'"):
        ablate_heads(toy, CLEAN, [[0, 0]], ANSWER, mode="half")


async def test_ablate_heads_through_a_client(toy_host: ModelHost) -> None:
    data = result_data(
        await call_tool(
            build_server(toy_host),
            "ablate_heads",
            {"prompt": CLEAN, "heads": [[1, 0], [1, 1]], "answer": ANSWER, "individually": True},
        )
    )
    assert data["heads"] == [[1, 0], [1, 1]] and len(data["individual"]) == 2
    assert data["effect"] == round_sig(data["metric_after"] - data["metric_before"]) or abs(
        data["effect"] - (data["metric_after"] - data["metric_before"])
    ) < 1e-3 * max(1, abs(data["effect"]))
