"""Turning a model spec (hub name, folder, .gguf file, builtin) into a TransformerBridge."""

from lens_mcp.loading.load import LoadedModel, load_model
from lens_mcp.loading.specs import BUILTIN_MODELS, DEFAULT_MODEL, ModelSpec, resolve_spec

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "LoadedModel", "ModelSpec", "load_model", "resolve_spec"]
