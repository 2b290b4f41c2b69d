"""MCP resources: facts about the loaded model an agent (or a person, via @-mentions in Claude Code) can read
without a tool call. Reads wait for a model that is still loading, like tools do."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError

from lens_mcp.errors import LensError
from lens_mcp.loading import LoadedModel
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.hook_names import FAMILY_TEMPLATES, available_families
from lens_mcp.tools.core.model_facts import describe

MODEL_INFO_URI = "lens://model/info"
MODEL_HOOKS_URI = "lens://model/hooks"
LIMITS_URI = "lens://server/limits"

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _ready_model(host: ModelHost) -> LoadedModel:
    try:
        return host.wait_until_ready()
    except LensError as exc:
        raise ResourceError(str(exc)) from exc


def hook_summary(model: LoadedModel) -> dict[str, Any]:
    """The model's hook names, grouped: per-layer templates (`{layer}` = 0..n_layers-1) and the rest."""
    names = sorted(model.bridge.hook_dict)
    n_layers = int(model.cfg.n_layers)
    layers_of: dict[str, set[int]] = {}
    other: list[str] = []
    for name in names:
        match = _BLOCK_HOOK.match(name)
        if match:
            layers_of.setdefault("blocks.{layer}." + match.group(2), set()).add(int(match.group(1)))
        else:
            other.append(name)
    every_layer = sorted(t for t, layers in layers_of.items() if len(layers) == n_layers)
    some_layers = {t: sorted(layers) for t, layers in sorted(layers_of.items()) if len(layers) != n_layers}
    families = available_families(ToolContext(model).view)
    return {
        "model": model.spec.name,
        "n_layers": n_layers,
        "n_hook_points": len(names),
        "how_to_read": "Replace {layer} with 0..n_layers-1. run_with_cache takes the short family names; "
        "the full names are TransformerLens hook points (several are aliases of one another).",
        "families": {family: FAMILY_TEMPLATES[family] for family in families},
        "per_layer": every_layer,
        **({"some_layers_only": some_layers} if some_layers else {}),
        "other": other,
    }


def register_resources(server: MCPServer, host: ModelHost) -> None:
    @server.resource(
        MODEL_INFO_URI,
        name="model_info",
        title="Loaded model",
        mime_type="application/json",
        description="The model_info tool's result: layers, heads, sizes, context, device, dtype, hook "
        "families. Waits for a model that is still loading.",
    )
    def model_info_resource() -> str:
        model = _ready_model(host)
        info = describe(ToolContext(model, host.limits))
        return _compact(info.model_dump(mode="json"))

    @server.resource(
        MODEL_HOOKS_URI,
        name="model_hooks",
        title="Hook names",
        mime_type="application/json",
        description="The loaded model's TransformerLens hook points, grouped: per-layer name templates, "
        "non-block names, and the short hook families run_with_cache accepts.",
    )
    def model_hooks_resource() -> str:
        return _compact(hook_summary(_ready_model(host)))

    @server.resource(
        LIMITS_URI,
        name="limits",
        title="Server limits",
        mime_type="application/json",
        description="The caps on every call (tokens per prompt, cells per sweep, batch sizes, top_k, "
        "response characters); set by LENS_MCP_<NAME> environment variables or flags.",
    )
    def limits_resource() -> str:
        return _compact(asdict(host.limits))
