"""Every tool the server offers, one entry each: the one list everything else derives from (the server's
tools, the CLI's host tools, and, checked by tests, the server instructions, the README's tool table, the
bad-input battery, the architecture matrix and the tools/list snapshot). The science lives in lens_mcp.tools."""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

from lens_mcp.model_host import ModelHost
from lens_mcp.server.adapter import add_host_tool, add_model_tool
from lens_mcp.tools.causal.ablate_heads import ablate_heads
from lens_mcp.tools.causal.attribution_patch import attribution_patch
from lens_mcp.tools.causal.patch_sweep import patch_sweep
from lens_mcp.tools.causal.path_patch import path_patch
from lens_mcp.tools.circuits.circuit_faithfulness import circuit_faithfulness
from lens_mcp.tools.circuits.circuits import circuits
from lens_mcp.tools.circuits.edge_attribution import edge_attribution
from lens_mcp.tools.features.build_exemplar_index import build_exemplar_index
from lens_mcp.tools.features.feature_attribution import feature_attribution
from lens_mcp.tools.features.feature_exemplars import feature_exemplars
from lens_mcp.tools.features.generate import generate
from lens_mcp.tools.features.load_sae import load_sae
from lens_mcp.tools.features.sae_features import sae_features
from lens_mcp.tools.features.search_features import search_features
from lens_mcp.tools.features.steering_vector import steering_vector
from lens_mcp.tools.model.load_model import load_model
from lens_mcp.tools.model.model_info import model_info
from lens_mcp.tools.model.tokenize import tokenize
from lens_mcp.tools.reading.attention_pattern import attention_pattern
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.head_output import head_output
from lens_mcp.tools.reading.induction_scores import induction_scores
from lens_mcp.tools.reading.logit_lens import logit_lens
from lens_mcp.tools.reading.mlp_neurons import mlp_neurons
from lens_mcp.tools.reading.neuron_attribution import neuron_attribution
from lens_mcp.tools.reading.run_with_cache import run_with_cache
from lens_mcp.tools.weights.composition_scores import composition_scores


@dataclass(frozen=True)
class ToolEntry:
    fn: Callable[..., Any]
    title: str
    host: bool = False
    """A tool that manages the host itself (`fn(host, report, ...)`, e.g. load_model) rather than running on
    the loaded model (`fn(tc, ...)`)."""
    options: tuple[tuple[str, Any], ...] = ()
    """Extra keyword arguments for add_model_tool / add_host_tool (e.g. (("read_only", False),))."""

    @property
    def name(self) -> str:
        return self.fn.__name__


TOOLS: tuple[ToolEntry, ...] = (
    ToolEntry(model_info, "Model facts"),
    ToolEntry(load_model, "Load a model", host=True),
    ToolEntry(tokenize, "Tokenize text"),
    ToolEntry(run_with_cache, "Run and summarize activations"),
    ToolEntry(head_attribution, "Direct logit attribution per head"),
    ToolEntry(logit_lens, "Logit lens"),
    ToolEntry(attention_pattern, "Attention pattern of one head"),
    ToolEntry(patch_sweep, "Activation patching sweep"),
    ToolEntry(ablate_heads, "Ablate attention heads"),
    ToolEntry(attribution_patch, "Attribution patching (gradient estimate)"),
    ToolEntry(path_patch, "Path patching between heads"),
    ToolEntry(edge_attribution, "Edge attribution (EAP, EAP-IG)", options=(("read_only", False),)),
    ToolEntry(circuit_faithfulness, "Circuit faithfulness curve", options=(("read_only", False),)),
    ToolEntry(circuits, "Stored circuits", options=(("read_only", False),)),
    ToolEntry(induction_scores, "Find induction heads"),
    ToolEntry(head_output, "What one head writes"),
    ToolEntry(neuron_attribution, "Direct logit attribution per MLP neuron"),
    ToolEntry(mlp_neurons, "Most active neurons of one MLP"),
    ToolEntry(composition_scores, "Q/K/V composition between heads"),
    ToolEntry(load_sae, "Load a sparse autoencoder", options=(("read_only", False), ("open_world", True))),
    ToolEntry(sae_features, "SAE features of a prompt"),
    ToolEntry(feature_attribution, "Attribute an answer to SAE features"),
    ToolEntry(feature_exemplars, "Corpus contexts a feature, neuron or head fires on"),
    ToolEntry(build_exemplar_index, "Build the exemplar index over a corpus", options=(("read_only", False),)),
    ToolEntry(search_features, "Features or neurons that fire on a text"),
    ToolEntry(steering_vector, "Make a steering vector", options=(("read_only", False),)),
    ToolEntry(generate, "Generate with interventions"),
)

TOOL_NAMES: tuple[str, ...] = tuple(tool.name for tool in TOOLS)
HOST_TOOLS: frozenset[str] = frozenset(tool.name for tool in TOOLS if tool.host)
"""Tools that bring their own model: the CLI starts no default load for them."""


@functools.cache
def result_models() -> dict[str, type[BaseModel]]:
    """Each tool's result model, by tool name, read off the function's return annotation (builds no server)."""
    return {tool.name: typing.get_type_hints(tool.fn)["return"] for tool in TOOLS}


def register_tools(server: MCPServer, host: ModelHost) -> None:
    for tool in TOOLS:
        add = add_host_tool if tool.host else add_model_tool
        add(server, host, tool.fn, title=tool.title, **dict(tool.options))
