"""Limits: one configuration (flags or LENS_MCP_* environment variables) for every cap; a call over a
cap gets a ToolError naming the cap and how to narrow the call; batch sizes follow the caps and free memory;
an out-of-memory error in a batch halves the batch and retries, with identical numbers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, fields
from typing import Any

import pytest
import torch
from mcp import Client

from lens_mcp.cli.hosts import LIMIT_FLAGS, limits_from_args
from lens_mcp.cli.main import build_parser
from lens_mcp.limits import ENV_PREFIX, Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from lens_mcp.tools.core import batching
from tests.mcp_client import error_text, result_data
from tests.shared import CLEAN, SWEEP, P, leak_reports, untimed

ABLATE = {
    "prompt": CLEAN,
    "heads": [[0, 1], [1, 2], [1, 0], [0, 2]],
    "answer": " w64",
    "wrong_answer": " w77",
    "individually": True,
}
INDUCTION = {"seq_len": 10, "n_seqs": 8}
README = (__import__("pathlib").Path(__file__).resolve().parent.parent / "README.md").read_text()


def numbers(data: dict[str, Any], *ignore: str) -> dict[str, Any]:
    return {key: value for key, value in untimed(data).items() if key not in set(ignore)}


def assert_same_numbers(got: Any, expected: Any, where: str = "result") -> None:
    """Equal up to float32 noise: another batch size sums in another order (differences ~1e-6), which can move
    the 4th significant digit of a rounded value. Everything else (tokens, shapes, indices) must be equal."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), where
        for key in expected:
            assert_same_numbers(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same_numbers(a, b, f"{where}[{index}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert got == pytest.approx(expected, rel=2e-3, abs=1e-5), where
    else:
        assert got == expected, where


def sweep_numbers(data: dict[str, Any]) -> dict[str, Any]:
    """A sweep's result without what batching may change: timings, pass counts, and the order of near-ties."""
    return numbers(data, "forward_passes", "top_cells", "cost")  # the estimate follows the batch sizes too


# ---- one configuration: environment variables and flags --------------------------------------------------
def test_every_cap_has_an_env_var_a_flag_and_a_readme_line() -> None:
    names = [field.name for field in fields(Limits)]
    assert set(names) == set(LIMIT_FLAGS)
    for name in names:
        assert f"`{ENV_PREFIX}{name.upper()}`" in README, f"README's limits table lacks {ENV_PREFIX}{name.upper()}"
        assert f"`--{name.replace('_', '-')}`" in README


def test_limits_from_env_reads_every_variable_and_flags_win() -> None:
    environ = {ENV_PREFIX + field.name.upper(): str(10 + i) for i, field in enumerate(fields(Limits))}
    limits = Limits.from_env(environ)
    assert asdict(limits) == {field.name: 10 + i for i, field in enumerate(fields(Limits))}
    assert Limits.from_env({}) == Limits()
    overridden = Limits.from_env(environ, max_sweep_cells=7, max_top_k=None)
    assert overridden.max_sweep_cells == 7 and overridden.max_top_k == limits.max_top_k


@pytest.mark.parametrize("raw", ["abc", "1.5", ""])
def test_a_malformed_env_var_is_named(raw: str) -> None:
    with pytest.raises(ValueError, match="LENS_MCP_MAX_SWEEP_CELLS=.*not an integer"):
        Limits.from_env({"LENS_MCP_MAX_SWEEP_CELLS": raw})


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_cap_must_be_positive(value: str) -> None:
    with pytest.raises(ValueError, match="max_top_k must be positive"):
        Limits.from_env({"LENS_MCP_MAX_TOP_K": value})
    with pytest.raises(ValueError, match="max_top_k must be positive"):
        Limits.from_env({}, max_top_k=int(value))


@pytest.mark.parametrize("command", ["serve", "call", "batch", "tools"])
def test_cli_flags_override_the_environment(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENS_MCP_MAX_SWEEP_CELLS", "123")
    monkeypatch.setenv("LENS_MCP_MAX_RESPONSE_CHARS", "4567")
    extra = {"serve": [], "call": ["tokenize"], "batch": ["-"], "tools": []}[command]
    args = build_parser().parse_args([command, *extra, "--max-sweep-cells", "9", "--max-batch-tokens", "64"])
    limits = limits_from_args(args)
    assert (limits.max_sweep_cells, limits.max_batch_tokens, limits.max_response_chars) == (9, 64, 4567)
    assert limits.max_prompt_tokens == Limits().max_prompt_tokens


# ---- a call over a cap -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def capped_host() -> Iterator[ModelHost]:
    """One loaded toy model whose caps each test sets (the adapter reads host.limits on every call)."""
    host = ModelHost(Limits())
    host.load("toy-induction", device="cpu")
    yield host


@pytest.fixture(scope="module")
def reference(capped_host: ModelHost) -> dict[str, dict[str, Any]]:
    """Results under the default caps, computed directly (no client), to compare the capped runs with."""
    import anyio

    async def run() -> dict[str, dict[str, Any]]:
        capped_host.limits = Limits()
        async with Client(build_server(capped_host)) as client:
            return {
                "heads": result_data(await client.call_tool("patch_sweep", {**SWEEP, "component": "heads"})),
                "heads_by_pos": result_data(
                    await client.call_tool("patch_sweep", {**SWEEP, "component": "heads_by_pos"})
                ),
                "ablate": result_data(await client.call_tool("ablate_heads", ABLATE)),
                "induction": result_data(await client.call_tool("induction_scores", INDUCTION)),
                "cache": result_data(
                    await client.call_tool("run_with_cache", {"prompt": P, "hooks": ["resid_post", "pattern", "z"]})
                ),
            }

    return anyio.run(run)


async def call_with(host: ModelHost, limits: Limits, name: str, arguments: dict[str, Any]) -> Any:
    host.limits = limits
    try:
        async with Client(build_server(host)) as client:
            return await client.call_tool(name, arguments)
    finally:
        host.limits = Limits()


async def test_max_prompt_tokens(capped_host: ModelHost) -> None:
    text = error_text(await call_with(capped_host, Limits(max_prompt_tokens=8), "tokenize", {"text": P}))
    assert "text is 9 tokens long, over the limit of 8" in text
    assert "LENS_MCP_MAX_PROMPT_TOKENS=8" in text and "shorten" in text
    info = result_data(await call_with(capped_host, Limits(max_prompt_tokens=8), "model_info", {}))
    assert info["max_prompt_tokens"] == 8
    ok = result_data(await call_with(capped_host, Limits(max_prompt_tokens=9), "tokenize", {"text": P}))
    assert ok["n_tokens"] == 9


async def test_max_sweep_cells_says_how_to_narrow(capped_host: ModelHost, reference: dict[str, dict[str, Any]]) -> None:
    limits = Limits(max_sweep_cells=20)
    text = error_text(await call_with(capped_host, limits, "patch_sweep", {**SWEEP, "component": "heads_by_pos"}))
    assert "60 cells (2 layers x 3 heads x 10 positions)" in text
    assert "max_sweep_cells=20" in text and "LENS_MCP_MAX_SWEEP_CELLS" in text
    assert "layers=" in text and "positions=" in text and "narrow" in text
    narrowed = result_data(
        await call_with(
            capped_host,
            limits,
            "patch_sweep",
            {**SWEEP, "component": "heads_by_pos", "layers": [1], "positions": [5, 6, 7, 8, 9]},
        )
    )
    full = reference["heads_by_pos"]["grid"]
    assert narrowed["n_cells"] == 15
    # The same cells, computed in differently composed batches: equal up to float noise in the last digit.
    expected = [[row[5:] for row in full[1]]]
    assert [v for row in narrowed["grid"][0] for v in row] == pytest.approx(
        [v for row in expected[0] for v in row], rel=1e-3, abs=1e-6
    )


async def test_max_response_chars_says_how_to_narrow(
    capped_host: ModelHost, reference: dict[str, dict[str, Any]]
) -> None:
    arguments = {"prompt": P, "hooks": ["resid_post", "pattern", "z"]}
    size = len(json.dumps(reference["cache"], separators=(",", ":"), ensure_ascii=False))
    limits = Limits(max_response_chars=size - 1)
    text = error_text(await call_with(capped_host, limits, "run_with_cache", arguments))
    assert f"the result is {size} characters of JSON, over the response cap of {size - 1}" in text
    assert "LENS_MCP_MAX_RESPONSE_CHARS" in text and "layers=" in text and "positions=" in text
    assert "Narrow the call" in text
    exact = result_data(await call_with(capped_host, Limits(max_response_chars=size), "run_with_cache", arguments))
    assert exact == reference["cache"]
    narrowed = result_data(await call_with(capped_host, limits, "run_with_cache", {**arguments, "layers": [1]}))
    assert narrowed["hooks"][0]["norms"] == [reference["cache"]["hooks"][0]["norms"][1]]


async def test_max_induction_tokens_and_batch_sequences(capped_host: ModelHost) -> None:
    text = error_text(await call_with(capped_host, Limits(max_induction_tokens=50), "induction_scores", INDUCTION))
    assert "8 x 21 = 168 tokens is over the limit of 50" in text
    assert "LENS_MCP_MAX_INDUCTION_TOKENS" in text and "use n_seqs <= 2" in text
    text = error_text(await call_with(capped_host, Limits(max_batch_sequences=4), "induction_scores", INDUCTION))
    assert "n_seqs=8 is out of range: use 1..4" in text


async def test_max_top_k(capped_host: ModelHost) -> None:
    for name, arguments in [
        ("logit_lens", {"prompt": P}),
        ("run_with_cache", {"prompt": P}),
        ("attention_pattern", {"prompt": P, "layer": 0, "head": 0, "top_k": 4}),
        ("head_attribution", {"prompt": P, "answer": " w4", "top_k": 4}),
    ]:
        text = error_text(await call_with(capped_host, Limits(max_top_k=3), name, {**arguments, "top_k": 4}))
        assert "top_k=4 is out of range: use 1..3" in text, name


# ---- batch sizes: caps and free memory; same numbers ------------------------------------------------------
@pytest.mark.parametrize(
    "limits",
    [Limits(max_batch_sequences=1), Limits(max_batch_sequences=3), Limits(max_batch_tokens=25)],
    ids=["1-sequence", "3-sequences", "25-tokens"],
)
async def test_small_batches_give_identical_numbers(
    capped_host: ModelHost, limits: Limits, reference: dict[str, dict[str, Any]]
) -> None:
    sweep = result_data(await call_with(capped_host, limits, "patch_sweep", {**SWEEP, "component": "heads_by_pos"}))
    assert_same_numbers(sweep_numbers(sweep), sweep_numbers(reference["heads_by_pos"]))
    assert sweep["forward_passes"] > reference["heads_by_pos"]["forward_passes"]
    ablate = result_data(await call_with(capped_host, limits, "ablate_heads", ABLATE))
    assert_same_numbers(numbers(ablate), numbers(reference["ablate"]))


async def test_batches_follow_free_memory(
    capped_host: ModelHost, monkeypatch: pytest.MonkeyPatch, reference: dict[str, dict[str, Any]]
) -> None:
    asked: list[str] = []

    def little_free_memory(device: Any) -> int:
        asked.append(str(device))
        return 300_000  # a sequence or two of the toy model

    monkeypatch.setattr(batching, "available_memory_bytes", little_free_memory)
    sweep = result_data(await call_with(capped_host, Limits(), "patch_sweep", {**SWEEP, "component": "heads_by_pos"}))
    ablate = result_data(await call_with(capped_host, Limits(), "ablate_heads", ABLATE))
    assert asked and set(asked) == {"cpu"}
    assert sweep["forward_passes"] > reference["heads_by_pos"]["forward_passes"]  # smaller batches, more of them
    assert_same_numbers(sweep_numbers(sweep), sweep_numbers(reference["heads_by_pos"]))
    assert_same_numbers(numbers(ablate), numbers(reference["ablate"]))
    assert batching.plan_rows(Limits(), "cpu", 10, 100_000).reason == "memory"


# ---- out of memory: halve and retry, same numbers; the server survives ------------------------------------
OOM_ERRORS = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate memory"),
]
OOM_IDS = ["torch.OutOfMemoryError", "MemoryError", "allocator-RuntimeError"]


class OutOfMemoryInjector:
    """Wraps the shared batching loop (batching.iter_batched, as imported by a tool module) so that every
    batch of more than `fits` rows raises `error` before running; records the sizes tried and run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: str, error: BaseException, fits: int = 2):
        self.tried: list[int] = []
        self.ran: list[int] = []
        self.items = 0
        target = __import__(module, fromlist=["iter_batched"])
        real = target.iter_batched

        def iter_batched(items: Any, run_batch: Any, rows: int, **kwargs: Any) -> Any:
            self.items += len(items)

            def flaky(batch: Any) -> Any:
                self.tried.append(len(batch))
                if len(batch) > fits:
                    raise error
                self.ran.append(len(batch))
                return run_batch(batch)

            return real(items, flaky, rows, **kwargs)

        monkeypatch.setattr(target, "iter_batched", iter_batched)

    def check_halved(self) -> None:
        assert self.tried and self.tried[0] > 2, self.tried  # the planned batch did not fit...
        assert self.ran and max(self.ran) <= 2 and sum(self.ran) == self.items, self.tried  # ...smaller ones did


@pytest.mark.parametrize("error", OOM_ERRORS, ids=OOM_IDS)
async def test_patch_sweep_halves_a_batch_that_runs_out_of_memory(
    capped_host: ModelHost, error: BaseException, monkeypatch: pytest.MonkeyPatch, reference: dict[str, dict[str, Any]]
) -> None:
    injector = OutOfMemoryInjector(monkeypatch, "lens_mcp.tools.causal._engine", error)
    sweep = result_data(await call_with(capped_host, Limits(), "patch_sweep", {**SWEEP, "component": "heads"}))
    injector.check_halved()
    assert_same_numbers(sweep_numbers(sweep), sweep_numbers(reference["heads"]))
    assert leak_reports() == []


@pytest.mark.parametrize("error", OOM_ERRORS, ids=OOM_IDS)
async def test_ablate_heads_halves_a_batch_that_runs_out_of_memory(
    capped_host: ModelHost, error: BaseException, monkeypatch: pytest.MonkeyPatch, reference: dict[str, dict[str, Any]]
) -> None:
    injector = OutOfMemoryInjector(monkeypatch, "lens_mcp.tools.causal.ablate_heads", error)
    ablate = result_data(await call_with(capped_host, Limits(), "ablate_heads", ABLATE))
    injector.check_halved()
    assert injector.items == 5  # all four heads together, then each alone
    assert_same_numbers(numbers(ablate), numbers(reference["ablate"]))
    assert leak_reports() == []


async def test_induction_scores_halves_a_batch_that_runs_out_of_memory(
    capped_host: ModelHost, monkeypatch: pytest.MonkeyPatch, reference: dict[str, dict[str, Any]]
) -> None:
    """'An out-of-memory error during a batch halves the batch and retries instead of failing the
    call'. induction_scores runs its n_seqs sequences as one batch."""
    bridge = capped_host.model.bridge
    forward = bridge.forward
    tried: list[int] = []
    ran: list[int] = []

    def flaky(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        tried.append(int(tokens.shape[0]))
        if tokens.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        ran.append(int(tokens.shape[0]))
        return forward(tokens, *args, **kwargs)

    monkeypatch.setattr(bridge, "forward", flaky)
    scores = result_data(await call_with(capped_host, Limits(), "induction_scores", INDUCTION))
    assert tried[0] > 2 and max(ran) <= 2 and sum(ran) == 8, tried  # the first batch is time-bound: 8 when quiet
    assert_same_numbers(numbers(scores), numbers(reference["induction"]))


async def test_a_single_sequence_out_of_memory_is_a_clear_error(
    capped_host: ModelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When even one sequence does not fit, the call fails with advice and the server keeps serving."""
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    for module in ("lens_mcp.tools.causal._engine", "lens_mcp.tools.causal.ablate_heads"):
        OutOfMemoryInjector(monkeypatch, module, error, fits=0)
    text = error_text(await call_with(capped_host, Limits(), "patch_sweep", {**SWEEP, "component": "heads"}))
    assert "patch_sweep ran out of GPU memory" in text and "narrow the call" in text
    text = error_text(await call_with(capped_host, Limits(), "ablate_heads", ABLATE))
    assert "ablate_heads ran out of GPU memory" in text
    monkeypatch.setattr(
        "lens_mcp.tools.reading.logit_lens.cached_forward",
        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")),
    )  # not torch.OutOfMemoryError
    text = error_text(await call_with(capped_host, Limits(), "logit_lens", {"prompt": P}))
    assert "logit_lens ran out of GPU memory" in text and "narrow the call" in text
    monkeypatch.undo()
    assert leak_reports() == []
    assert result_data(await call_with(capped_host, Limits(), "tokenize", {"text": "w1 w2"}))["n_tokens"] == 3
