"""Every tool the server offers, one line each. The science lives in lens_mcp.tools.<name>."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from lens_mcp.model_host import ModelHost
from lens_mcp.server.adapter import add_host_tool, add_model_tool
from lens_mcp.tools.causal.ablate_heads import ablate_heads
from lens_mcp.tools.causal.patch_sweep import patch_sweep
from lens_mcp.tools.causal.path_patch import path_patch
from lens_mcp.tools.features.feature_attribution import feature_attribution
from lens_mcp.tools.features.generate import generate
from lens_mcp.tools.features.load_sae import load_sae
from lens_mcp.tools.features.sae_features import sae_features
from lens_mcp.tools.features.steering_vector import steering_vector
from lens_mcp.tools.model.load_model import load_model
from lens_mcp.tools.model.model_info import model_info
from lens_mcp.tools.model.tokenize import tokenize
from lens_mcp.tools.reading.attention_pattern import attention_pattern
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.induction_scores import induction_scores
from lens_mcp.tools.reading.logit_lens import logit_lens
from lens_mcp.tools.reading.run_with_cache import run_with_cache


def register_tools(server: MCPServer, host: ModelHost) -> None:
    add_model_tool(server, host, model_info, title="Model facts")
    add_host_tool(server, host, load_model, title="Load a model")
    add_model_tool(server, host, tokenize, title="Tokenize text")
    add_model_tool(server, host, run_with_cache, title="Run and summarize activations")
    add_model_tool(server, host, head_attribution, title="Direct logit attribution per head")
    add_model_tool(server, host, logit_lens, title="Logit lens")
    add_model_tool(server, host, attention_pattern, title="Attention pattern of one head")
    add_model_tool(server, host, patch_sweep, title="Activation patching sweep")
    add_model_tool(server, host, ablate_heads, title="Ablate attention heads")
    add_model_tool(server, host, path_patch, title="Path patching between heads")
    add_model_tool(server, host, induction_scores, title="Find induction heads")
    add_host_tool(server, host, load_sae, title="Load a sparse autoencoder")
    add_model_tool(server, host, sae_features, title="SAE features of a prompt")
    add_model_tool(server, host, feature_attribution, title="Attribute an answer to SAE features")
    add_model_tool(server, host, steering_vector, title="Make a steering vector", read_only=False)
    add_model_tool(server, host, generate, title="Generate with interventions")
