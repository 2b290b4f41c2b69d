"""A tool that leaves a hook behind: ModelHost reports it ("a tool left N hooks on the model") and removes it
before the next call. conftest.py fails any test during which such a report appears; this test plants a leak
on purpose (marked leaks_hooks) and checks that it is seen and cleaned up."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mcp.server.mcpserver import MCPServer

from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.schemas.common import Result
from lens_mcp.server.adapter import add_model_tool
from lens_mcp.tools.core.context import ToolContext
from tests.mcp_client import call_tool, result_data
from tests.shared import leak_reports, recording_leaks


class Planted(Result):
    planted: int


def leaky_tool(tc: ToolContext) -> Planted:
    """Adds two persistent hooks and returns without removing them."""

    def hook(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        return activation

    tc.model.bridge.hook_dict["blocks.0.attn.hook_z"].add_hook(hook)
    tc.model.bridge.hook_dict["blocks.1.hook_resid_post"].add_hook(hook)
    return Planted(planted=2)


@pytest.mark.leaks_hooks
async def test_a_planted_leak_is_reported_and_removed(toy_host: ModelHost) -> None:
    server = MCPServer("leak-test")
    add_model_tool(server, toy_host, leaky_tool)
    with recording_leaks() as recorder:
        result = await call_tool(server, "leaky_tool", {})
    assert result_data(result)["planted"] == 2
    assert recorder.reports == ["a tool left 2 hooks on the model; removing them"]
    assert leak_reports() == recorder.reports  # what conftest.py would fail an unmarked test on
    assert toy_host.model is not None and count_hooks(toy_host.model.bridge) == 0  # removed before the next call
