"""tokenize: how the loaded model's tokenizer splits a text."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from lens_mcp.schemas.model import TokenizeResult
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.tokens import encode, token_pairs


def tokenize(
    tc: ToolContext,
    text: Annotated[str, Field(description="Text to tokenize")],
    prepend_bos: Annotated[bool, Field(description="Prepend the BOS token, as every other tool does")] = True,
) -> TokenizeResult:
    """Tokenize text with the loaded model's tokenizer: [id, string] per token, and whether the text is a
    single token (answers for head_attribution/patch_sweep must be single tokens, usually with a leading
    space: ' Paris'). Positions in other tools index this list (BOS is position 0)."""
    ids = encode(tc, text, "text", prepend_bos=prepend_bos)[0]
    pairs = token_pairs(tc, ids)
    own = pairs[1:] if prepend_bos else pairs
    single = own[0] if len(own) == 1 else None
    return TokenizeResult(n_tokens=len(pairs), tokens=pairs, is_single_token=single is not None, single_token=single)
