"""Shared fixtures: one model host per model per test session (loading is the slow part)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.core.context import ToolContext


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
def _isolated_cache_env() -> None:
    # Tests never write a GGUF cache outside the usual place unless they ask for one explicitly.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
