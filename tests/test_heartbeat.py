"""Single-pass tools on long prompts: the heartbeat reports from inside forward passes, so every tool shows
progress and a cancel lands at the next transformer block, leaving no hook and no changed result behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lens_mcp.model_host import ModelHost, beating, count_hooks
from lens_mcp.progress import Heartbeat
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.features.generate import generate
from lens_mcp.tools.reading.attention_pattern import attention_pattern
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.head_output import head_output
from lens_mcp.tools.reading.induction_scores import induction_scores
from lens_mcp.tools.reading.logit_lens import logit_lens
from lens_mcp.tools.reading.mlp_neurons import mlp_neurons
from lens_mcp.tools.reading.neuron_attribution import neuron_attribution
from lens_mcp.tools.reading.run_with_cache import run_with_cache
from tests.shared import TOY_ANSWER, TOY_PROMPT, untimed


class Cancelled(BaseException):
    """What the server's reporter raises for a cancelled request (anyio's cancellation is a BaseException)."""


PROMPT = TOY_PROMPT


SINGLE_PASS_CALLS: dict[str, Callable[[ToolContext], Any]] = {
    "neuron_attribution": lambda tc: neuron_attribution(tc, PROMPT, answer=TOY_ANSWER),
    "head_attribution by_source": lambda tc: head_attribution(tc, PROMPT, answer=TOY_ANSWER, by_source=True),
    "head_output": lambda tc: head_output(tc, PROMPT, layer=1, head=2),
    "mlp_neurons": lambda tc: mlp_neurons(tc, PROMPT, layer=0),
    "logit_lens": lambda tc: logit_lens(tc, PROMPT),
    "attention_pattern": lambda tc: attention_pattern(tc, PROMPT, layer=1, head=2),
    "run_with_cache": lambda tc: run_with_cache(tc, PROMPT),
    "induction_scores": lambda tc: induction_scores(tc, seq_len=10, n_seqs=2),
    "generate": lambda tc: generate(tc, PROMPT, max_new_tokens=3),
}


@pytest.mark.parametrize("name", sorted(SINGLE_PASS_CALLS))
def test_a_cancel_lands_at_the_first_block_and_changes_nothing(toy_host: ModelHost, name: str) -> None:
    call = SINGLE_PASS_CALLS[name]
    with toy_host.use() as model:
        before = untimed(call(ToolContext(model, toy_host.limits)).model_dump())
        hooks_before = count_hooks(model.bridge)
    blocks_entered: list[int] = []

    def cancelled(done: float, total: float | None = None, message: str | None = None) -> None:
        raise Cancelled

    with toy_host.use(cancelled) as model:
        counters = [
            block.register_forward_pre_hook(lambda *_, i=i: blocks_entered.append(i))
            for i, block in enumerate(model.bridge.blocks)
        ]
        try:
            with pytest.raises(Cancelled), beating(model, cancelled, interval_s=0.0) as heartbeat:
                call(ToolContext(model, toy_host.limits, heartbeat))
        finally:
            for counter in counters:
                counter.remove()
    # The heartbeat's hook runs before the counter's at the first block; nothing after it ran.
    assert len(blocks_entered) <= 1, f"{name} ran {len(blocks_entered)} blocks after the cancel"
    with toy_host.use() as model:
        assert count_hooks(model.bridge) == hooks_before
        assert not model.bridge.blocks[0]._forward_pre_hooks, "the heartbeat left a hook on the blocks"
        assert untimed(call(ToolContext(model, toy_host.limits)).model_dump()) == before


@pytest.mark.parametrize("name", ["logit_lens", "generate"])
def test_the_heartbeat_reports_during_a_single_pass_tool(toy_host: ModelHost, name: str) -> None:
    sent: list[tuple[float, float | None, str | None]] = []
    with toy_host.use() as model, beating(model, lambda *a: sent.append(a), interval_s=0.0) as heartbeat:
        SINGLE_PASS_CALLS[name](ToolContext(model, toy_host.limits, heartbeat))
    n_layers = len(model.bridge.blocks)
    assert len(sent) >= n_layers, "every block should beat at interval 0"
    assert any(message == f"computing: layer {n_layers - 1} of {n_layers}" for _, _, message in sent)


def test_reported_values_never_decrease_and_keep_the_tools_total() -> None:
    now = [0.0]
    sent: list[tuple[float, float | None, str | None]] = []
    heartbeat = Heartbeat(lambda *a: sent.append(a), interval_s=2.0, clock=lambda: now[0])
    heartbeat(0, 10, "batch 0")
    now[0] = 1.0
    heartbeat.beat("layer 1")  # under the interval: nothing sent
    assert len(sent) == 1
    now[0] = 3.5
    heartbeat.beat("layer 2")
    heartbeat(3, 10, "batch 3")
    now[0] = 9.0
    heartbeat.beat("layer 3")
    heartbeat(10, 10, "done")
    values = [done for done, _, _ in sent]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert sent == [
        (0, 10, "batch 0"),
        (1, 11, "computing: layer 2"),
        (4, 11, "batch 3"),
        (5, 12, "computing: layer 3"),
        (12, 12, "done"),
    ]
    # the fraction a client shows stays the tool's: done == total only when the tool says it is done
    assert all(done < total for done, total, _ in sent[:-1] if total is not None)
