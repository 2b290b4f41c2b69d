"""Schemas of model_info, load_model and tokenize."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lens_mcp.schemas.common import Result, Rounded, TokenPair


class ModelInfo(Result):
    name: str = Field(description="The model spec it was loaded from")
    source: Literal["hub", "local", "gguf", "builtin"] = Field(description="Where the weights came from")
    architecture: str = Field(description="Hugging Face architecture class")
    n_layers: int
    n_heads: int = Field(description="Query heads per layer")
    n_kv_heads: int = Field(description="Key/value heads per layer (fewer than n_heads under grouped-query attention)")
    d_model: int
    d_head: int
    d_mlp: int | None = Field(description="MLP hidden size; null for attention-only models")
    d_vocab: int
    n_ctx: int = Field(description="Longest prompt the model accepts, in tokens")
    device: str
    dtype: str
    hook_families: list[str] = Field(description="Hook families accepted by run_with_cache's `hooks`")
    load_seconds: Rounded = Field(description="Seconds the load took")
    from_cache: bool | None = Field(None, description="GGUF only: whether the dequantized cache was used")
    max_prompt_tokens: int = Field(description="Longest prompt this server accepts (min of n_ctx and its cap)")
    saes: list[str] = Field(default_factory=list, description="Hooks with a sparse autoencoder loaded (load_sae)")
    steering_vectors: list[str] = Field(default_factory=list, description="Names of stored steering vectors")

    def explain(self) -> str:
        return (
            f"{self.n_layers} layers (0..{self.n_layers - 1}) x {self.n_heads} query heads (0..{self.n_heads - 1}); "
            "positions count from 0 with BOS at 0"
        )


class TokenizeResult(Result):
    n_tokens: int
    tokens: list[TokenPair] = Field(description="[id, string] per token, BOS included when prepended")
    is_single_token: bool = Field(description="Whether the text itself (without BOS) is exactly one token")
    single_token: TokenPair | None = Field(None, description="That token, when is_single_token")

    def explain(self) -> str:
        return (
            "n_tokens counts BOS when prepended; is_single_token: whether the text alone is one token (answers "
            "must be, usually with a leading space)"
        )
