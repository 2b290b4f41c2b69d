"""A cost estimate never raises: every tool that takes `dry_run` answers a dry run with its estimate or a readable
refusal (a ToolError saying what to fix), never an unexpected exception, whatever its arguments; and the cost
arithmetic itself returns finite numbers for any amount of work."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate
from tests.shared import leak_reports

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TEXTS = ["w1 w2 w3 w4 w5 w1 w2 w3", "w1 w2 w9 w4 w5 w1 w2 w3", " w5", " w6", "", "w1 " * 3000, "\x00🦄"]
NUMBERS = [-(2**63), -1, 0, 1, 2, 5, 10**9, 2**63]
any_scalar = st.one_of(
    st.sampled_from(TEXTS),
    st.sampled_from(NUMBERS),
    st.none(),
    st.booleans(),
    st.sampled_from([math.nan, 1e300, 0.5]),
)
any_value = st.one_of(
    any_scalar, st.lists(any_scalar, max_size=4), st.lists(st.lists(st.sampled_from(NUMBERS), max_size=3), max_size=3)
)


VALID: dict[str, Any] = {
    "clean_prompt": TEXTS[0],
    "corrupted_prompt": TEXTS[1],
    "prompt": TEXTS[0],
    "text": TEXTS[0],
    "answer": " w5",
    "wrong_answer": " w6",
    "layers": [0, 1],
    "positions": [1, 2],
    "heads": [[1, 0]],
    "layer": 1,
    "neuron": 3,
}
"""Values that make a call valid on the toy model, drawn most of the time so that the estimate itself is reached."""
REACHED: list[str] = []


def _enumerated(schema: dict[str, Any]) -> list[Any]:
    """The values a property's JSON schema names (enum or const members), so that dry runs reach the estimate."""
    values: list[Any] = list(schema.get("enum", []))
    for option in schema.get("anyOf", []):
        values += list(option.get("enum", [])) + ([option["const"]] if "const" in option else [])
    return values


@pytest.fixture(scope="module")
def dry_run_tools(toy_host: ModelHost) -> dict[str, dict[str, Any]]:
    async def listed() -> dict[str, dict[str, Any]]:
        async with Client(build_server(toy_host)) as client:
            tools = (await client.list_tools()).tools
        return {
            tool.name: tool.input_schema["properties"] for tool in tools if "dry_run" in tool.input_schema["properties"]
        }

    return anyio.run(listed)


def test_the_dry_run_tools_are_found(dry_run_tools: dict[str, dict[str, Any]]) -> None:
    assert {"patch_sweep", "attribution_patch", "path_patch", "edge_attribution", "circuit_faithfulness"} <= set(
        dry_run_tools
    )


@SETTINGS
@given(data=st.data())
def test_every_dry_run_answers_with_an_estimate_or_a_readable_refusal(
    toy_host: ModelHost, dry_run_tools: dict[str, dict[str, Any]], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(dry_run_tools)))
    properties = dry_run_tools[name]
    arguments: dict[str, Any] = {"dry_run": True}
    wild = data.draw(st.booleans())  # else only valid values and the schema's own choices
    for key, schema in properties.items():
        if key == "dry_run":
            continue
        named = _enumerated(schema)
        if not wild:
            if key in VALID and (key != "positions" or data.draw(st.booleans())):
                arguments[key] = VALID[key]
            elif named and data.draw(st.booleans()):
                arguments[key] = data.draw(st.sampled_from(named))
        elif data.draw(st.booleans()):
            arguments[key] = data.draw(st.sampled_from(named) if named and data.draw(st.booleans()) else any_value)

    async def run() -> None:
        async with Client(build_server(toy_host)) as client:
            with anyio.fail_after(120):
                result = await client.call_tool(name, arguments)
        if result.is_error:
            text = result.content[0].text
            assert "failed unexpectedly" not in text, (name, arguments, text)
        else:
            cost = (result.structured_content or {}).get("cost")
            assert cost is not None and all(math.isfinite(float(cost[k])) for k in ("seconds", "memory_mb")), cost
            REACHED.append(name)
        assert leak_reports() == []

    anyio.run(run)


def test_the_fuzzed_dry_runs_reached_estimates() -> None:
    assert len(set(REACHED)) >= 3, REACHED  # the generator is not only producing rejected arguments


@SETTINGS
@given(
    rows=st.integers(0, 10**9),
    tokens=st.integers(0, 10**7),
    layer_fraction=st.floats(-1.0, 5.0),
    backward=st.integers(0, 10**6),
    stored=st.integers(-(10**3), 10**15),
    per_pass=st.one_of(st.none(), st.integers(0, 10**4)),
)
def test_the_cost_arithmetic_is_finite_for_any_work(
    toy: ToolContext, rows: int, tokens: int, layer_fraction: float, backward: int, stored: int, per_pass: int | None
) -> None:
    work = Work(
        rows=rows,
        tokens_per_row=tokens,
        layer_fraction=layer_fraction,
        backward_rows=backward,
        stored_bytes=stored,
        rows_per_pass=per_pass,
        result_chars=10,
    )
    cost = estimate(toy, work)
    assert all(math.isfinite(v) and v >= 0 for v in (cost.seconds, cost.memory_mb, cost.work_units))
    try:
        enforce(ToolContext(toy.model, Limits()), cost, "narrow it")
    except LensError as refused:
        assert "refused before computing" in str(refused)
