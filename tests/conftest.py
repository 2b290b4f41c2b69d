"""Shared fixtures: one model host per model per test session (loading is the slow part)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lens_mcp.limits import Limits
from lens_mcp.loading.gguf_cache import _COMPLETE_MARKER, CACHE_ENV, cache_dir_for, cache_root
from lens_mcp.loading.specs import resolve_spec
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.core.context import ToolContext
from tests.shared import LEAK_LOGGER, SESSION_LEAKS


@pytest.fixture(scope="session")
def toy_host() -> ModelHost:
    host = ModelHost(Limits())
    host.load("toy-induction", device="cpu")
    return host


@pytest.fixture(scope="session")
def smol_host() -> ModelHost:
    host = ModelHost(Limits())
    host.load("smollm2-135m", device="cpu")
    return host


@pytest.fixture
def toy(toy_host: ModelHost) -> Iterator[ToolContext]:
    """Direct access to the toy model for tool functions, with the model held as the server holds it."""
    with toy_host.use() as model:
        yield ToolContext(model, toy_host.limits)


@pytest.fixture
def smol(smol_host: ModelHost) -> Iterator[ToolContext]:
    with smol_host.use() as model:
        yield ToolContext(model, smol_host.limits)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never write to the user's cache: LENS_MCP_CACHE_DIR points at a session folder. A complete cache
    entry the user already has (the dequantized SmolLM2 GGUF) is linked in read-only, so the slow tests do not
    dequantize it again; anything the tests write lands in the session folder."""
    user_root = cache_root()  # before the override: the user's own cache
    isolated = tmp_path_factory.mktemp("lens-mcp-cache")
    try:
        spec = resolve_spec("smollm2-135m")
        entry = cache_dir_for(Path(spec.location) / str(spec.gguf_file))
    except Exception:
        entry = None
    if entry is not None:
        user_entry = user_root / entry.relative_to(cache_root())
        if (user_entry / _COMPLETE_MARKER).is_file():
            (isolated / entry.relative_to(cache_root())).parent.mkdir(parents=True, exist_ok=True)
            (isolated / entry.relative_to(cache_root())).symlink_to(user_entry, target_is_directory=True)
    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(isolated)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        yield isolated
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved


# ---- hook leaks ---------------------------------------------------------------------------------------------
# ModelHost removes hooks a tool leaves behind and logs "a tool left N hooks on the model": counting hooks
# after a call cannot see a leak, the log can. Every test fails if such a report appears while it runs.


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger(LEAK_LOGGER).addHandler(SESSION_LEAKS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    SESSION_LEAKS.test_start = len(SESSION_LEAKS.reports)
    result = yield
    reports = SESSION_LEAKS.reports[SESSION_LEAKS.test_start :]
    if reports and item.get_closest_marker("leaks_hooks") is None:
        pytest.fail(f"a tool left hooks on the model during this test: {reports}")
    return result
