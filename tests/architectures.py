"""Tiny random-weight models of each architecture family, built offline from transformers' own config classes
and saved with save_pretrained, so tests load them exactly as a user loads a local folder.

Every model: 2 layers, width 64, 4 query heads (2 key/value heads where the family has grouped-query
attention), a byte-level BPE tokenizer built here (BOS, the 256 bytes, and the words of WORDS with and without
a leading space) and a vocabulary of 512 to fit it. (transformers 5 picks the tokenizer class by model type
for some families, e.g. Qwen2Tokenizer for qwen2 whatever tokenizer_config says; a byte-level BPE
tokenizer.json loads correctly under every one of them.) The quirks each family brings are switched on with small, visible values:
soft caps (Gemma 2), logit scales (Cohere, Granite), residual/embedding/attention multipliers (Granite),
partial rotary and parallel attention (GPT-NeoX, Phi, Cohere), norms after each sublayer (Gemma 2, OLMo 2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers as tf

WORDS = [a + b for a in "bcdfghklmnprstvwz" for b in "aeiou"]  # 85 words: ba, be, ..., zu
"""The tokenizer's words: letters only, so that every family's pre-tokenizer (Qwen's splits digits) keeps them
whole; each is one token with and without a leading space."""
VOCAB = 512
_COMMON: dict[str, Any] = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
_DECODER: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    **_COMMON,
}


@dataclass(frozen=True)
class Family:
    name: str
    config: Callable[..., Any]
    model: Callable[[Any], Any]
    kwargs: dict[str, Any]
    quirks: str
    post_norms: bool = False
    """Norms after each sublayer: TransformerLens's stack_head_results leaves them out."""
    soft_cap: bool = False


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "gpt2",
            tf.GPT2Config,
            tf.GPT2LMHeadModel,
            {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, **_COMMON},
            "LayerNorm, learned positions, biases",
        ),
        Family(
            "gpt_neox",
            tf.GPTNeoXConfig,
            tf.GPTNeoXForCausalLM,
            {**{k: v for k, v in _DECODER.items() if k != "num_key_value_heads"}, "rotary_pct": 0.25},
            "parallel attention and MLP, partial rotary",
        ),
        Family("llama", tf.LlamaConfig, tf.LlamaForCausalLM, _DECODER, "RMSNorm, rotary, grouped-query attention"),
        Family("mistral", tf.MistralConfig, tf.MistralForCausalLM, _DECODER, "as Llama, sliding-window config"),
        Family("qwen2", tf.Qwen2Config, tf.Qwen2ForCausalLM, _DECODER, "as Llama, q/k/v biases"),
        Family(
            "gemma2",
            tf.Gemma2Config,
            tf.Gemma2ForCausalLM,
            {
                **_DECODER,
                "head_dim": 16,
                "final_logit_softcapping": 3.0,
                "attn_logit_softcapping": 50.0,
                "sliding_window": 8,
            },
            "norms after each sublayer, logit soft cap 3.0, attention soft cap, (1 + w) RMSNorm",
            post_norms=True,
            soft_cap=True,
        ),
        Family(
            "phi",
            tf.PhiConfig,
            tf.PhiForCausalLM,
            {**{k: v for k, v in _DECODER.items() if k != "num_key_value_heads"}, "partial_rotary_factor": 0.5},
            "parallel attention and MLP, partial rotary, LayerNorm",
        ),
        Family(
            "olmo2",
            tf.Olmo2Config,
            tf.Olmo2ForCausalLM,
            _DECODER,
            "norms after each sublayer only, q/k norms",
            post_norms=True,
        ),
        Family(
            "cohere",
            tf.CohereConfig,
            tf.CohereForCausalLM,
            {**_DECODER, "logit_scale": 0.5},
            "parallel attention and MLP, logit scale 0.5",
        ),
        Family(
            "granite",
            tf.GraniteConfig,
            tf.GraniteForCausalLM,
            {
                **_DECODER,
                "logits_scaling": 4.0,
                "residual_multiplier": 0.5,
                "embedding_multiplier": 2.0,
                "attention_multiplier": 0.3,
            },
            "logits divided by 4, residual multiplier 0.5, embedding multiplier 2",
        ),
    )
}


def build(family: Family, folder: Path, seed: int = 0) -> Any:
    """Save a random-weight model of `family` and the toy tokenizer into `folder`; returns the HF model."""
    torch.manual_seed(seed)
    model = family.model(family.config(**family.kwargs)).eval()
    # Random init leaves norms at 1 and biases at 0: perturb them so a missing weight or bias shows up.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith(".bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return model


def tokenizer() -> Any:
    """A byte-level BPE tokenizer whose vocabulary is BOS, the 256 byte symbols, and WORDS ('ba' and ' ba')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_symbols = list(pre_tokenizers.ByteLevel.alphabet())
    space = "\u0120"  # the byte-level symbol of " "
    vocab: dict[str, int] = {"<|bos|>": 0}
    for symbol in sorted(byte_symbols):
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for letter in sorted({word[0] for word in WORDS}):
        merges.append((space, letter))
        vocab[space + letter] = len(vocab)
    for word in WORDS:
        for prefix in ("", space):
            merges.append((prefix + word[0], word[1]))
            vocab[prefix + word] = len(vocab)
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|bos|>", pad_token="<|bos|>"
    )
