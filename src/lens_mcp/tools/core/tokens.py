"""Tokenizing prompts and answers, shared by every tool: one place for the checks and the hints."""

from __future__ import annotations

import torch

from lens_mcp.errors import LensError
from lens_mcp.tools.core.context import ToolContext

_CHARS_PER_TOKEN_CAP = 64  # refuse absurdly long text before tokenizing it


def _check_text(tc: ToolContext, text: object, arg: str) -> str:
    if not isinstance(text, str):
        raise LensError(f"{arg}: expected a string, got {type(text).__name__}.")
    if text == "":
        raise LensError(f"{arg} is empty: pass some text (e.g. 'The Eiffel Tower is in the city of').")
    if len(text) > tc.max_prompt_tokens * _CHARS_PER_TOKEN_CAP:
        raise LensError(
            f"{arg} is {len(text)} characters long, far over the cap of {tc.max_prompt_tokens} tokens; shorten it."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone UTF-16 surrogate: tokenizers refuse it with a TypeError
        raise LensError(
            f"{arg} is not valid Unicode: character {exc.start} is {text[exc.start]!r}, a lone surrogate; "
            "remove it or pass the text as valid UTF-8."
        ) from None
    return text


def token_string(tc: ToolContext, token_id: int) -> str:
    return tc.view.tokenizer.decode([int(token_id)])


def token_strings(tc: ToolContext, ids: torch.Tensor | list[int]) -> list[str]:
    return [token_string(tc, int(i)) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]


def token_pairs(tc: ToolContext, ids: torch.Tensor | list[int]) -> list[tuple[int, str]]:
    id_list = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return list(zip(id_list, token_strings(tc, id_list), strict=True))


def show_tokenization(tc: ToolContext, text: str, prepend_bos: bool = False) -> str:
    """How the model tokenizes `text`, e.g. `' Pari s' -> [' Par', 'i', ' s']`."""
    ids = tc.view.to_tokens(text, prepend_bos=prepend_bos, truncate=False)[0]
    return f"{text!r} -> {token_strings(tc, ids)}"


def encode(tc: ToolContext, text: str, arg: str = "prompt", prepend_bos: bool = True) -> torch.Tensor:
    """Token ids of shape (1, n) on the model's device, checked against the prompt-length cap."""
    text = _check_text(tc, text, arg)
    tokens = tc.view.to_tokens(text, prepend_bos=prepend_bos, truncate=False)
    n_tokens = tokens.shape[-1]
    if n_tokens == 0:
        raise LensError(f"{arg} produced no tokens; pass some text.")
    if n_tokens > tc.max_prompt_tokens:
        raise LensError(
            f"{arg} is {n_tokens} tokens long, over the limit of {tc.max_prompt_tokens} "
            f"(model context {tc.view.n_ctx}, server cap LENS_MCP_MAX_PROMPT_TOKENS="
            f"{tc.limits.max_prompt_tokens}); shorten it."
        )
    return tokens


def single_token_id(tc: ToolContext, text: str, arg: str = "answer") -> int:
    """The id of `text` if it is exactly one token; otherwise a LensError showing the tokenization."""
    text = _check_text(tc, text, arg)
    ids = tc.view.to_tokens(text, prepend_bos=False, truncate=False)[0]
    tokenizer = tc.view.tokenizer
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if len(ids) == 1 and (unk_id is None or int(ids[0]) != unk_id or text.strip() == tokenizer.unk_token):
        return int(ids[0])
    if len(ids) == 1:  # a word outside the vocabulary: its logit would be the unknown token's
        raise LensError(
            f"{arg}={text!r} is not in this model's vocabulary: it tokenizes to the unknown token "
            f"{tokenizer.unk_token!r}. Pass a token the model knows; call tokenize to check."
        )
    hint = ""
    for candidate in dict.fromkeys([" " + text.lstrip(), text.strip(), text.lstrip()]):
        if candidate != text and candidate and len(tc.view.to_tokens(candidate, prepend_bos=False)[0]) == 1:
            hint = f" {candidate!r} is a single token: use that (answers usually start with a space)."
            break
    raise LensError(
        f"{arg} must be a single token, but {show_tokenization(tc, text)} is {len(ids)} tokens."
        f"{hint or ' Use the first token of the answer; call tokenize to check.'}"
    )


def encode_pair(tc: ToolContext, first: str, second: str, first_arg: str, second_arg: str) -> torch.Tensor:
    """Two prompts that must tokenize to the same length, stacked as a (2, n) batch."""
    a = encode(tc, first, first_arg)
    b = encode(tc, second, second_arg)
    if a.shape[-1] != b.shape[-1]:
        raise LensError(
            f"{first_arg} and {second_arg} must tokenize to the same length, but they are "
            f"{a.shape[-1]} and {b.shape[-1]} tokens:\n  {first_arg}: {token_strings(tc, a[0])}\n  "
            f"{second_arg}: {token_strings(tc, b[0])}\nReword one so that the tokens line up position by position."
        )
    return torch.cat([a, b], dim=0)
