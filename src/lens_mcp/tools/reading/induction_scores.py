"""induction_scores: induction, previous-token and duplicate-token scores of every head, one batched pass.

Definitions (one rule for both modes; position 0 is BOS and is never a query nor an occurrence):
- an *earlier occurrence* of query position q is a position 1 <= j < q holding the same token;
- duplicate-token target of q: every earlier occurrence j (attention summed over them);
- induction target of q: every j + 1 for an earlier occurrence j, where j + 1 < q (summed);
- previous-token target of q: q - 1, for every q >= 1.
A score is the attention on the targets, averaged over the (sequence, query) pairs that have a target.
Random sequences hold no token twice within a repeat, so each second-repeat token has exactly one earlier
occurrence and the sums are single terms. Loss: next-token loss in nats on "first-seen" tokens (no earlier
occurrence) and on "copyable" tokens (the previous token has an earlier occurrence j with token[j + 1] equal
to this token: what an induction head predicts).

The forward pass runs once on the whole batch. Hooks on `hook_pattern` reduce each layer's pattern to the
per-head sums at once (nothing of size batch x heads x pos x pos is kept), and a hook on `unembed.hook_in`
keeps the final residual and stops the pass there, so the logits are computed only where the loss reads
them, in chunks.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, cast

import torch
from pydantic import Field

from lens_mcp.errors import LensError
from lens_mcp.schemas.common import HeadScore
from lens_mcp.schemas.induction import AblatedLosses, InductionScores, ScoredPositions
from lens_mcp.tools.core.ablation import resolve_heads
from lens_mcp.tools.core.batching import ProgressCounter, iter_batched, plan_rows, sequence_bytes
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import Work, enforce, estimate, seconds_per_row
from lens_mcp.tools.core.forward import unembed
from lens_mcp.tools.core.hook_names import hook_name
from lens_mcp.tools.core.tokens import encode, token_strings
from lens_mcp.tools.core.validation import check_range, check_top_k

KINDS = ("induction", "duplicate_token", "previous_token")
PATTERN_ENTRIES_PER_TOKEN = 4096
"""Attention weights one layer may hold (batch x heads x pos x pos), per token of max_induction_tokens."""
_LOGIT_CHUNK_ENTRIES = 1 << 24  # logits materialized at once while computing the loss (64 MB in fp32)
_MAX_EXAMPLE_CHARS = 4000
_SPACE_WORD = re.compile(r" [A-Za-z]+")
_BARE_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")


# ---- the random token batch ------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenPools:
    """Candidate ids for random sequences, from most to least word-like; special/added tokens never."""

    tiers: tuple[tuple[torch.Tensor, str], ...]
    n_ordinary: int


_POOLS: weakref.WeakKeyDictionary[Any, dict[int, TokenPools]] = weakref.WeakKeyDictionary()


def token_pools(tokenizer: Any, d_vocab: int) -> TokenPools:
    """Ordinary token ids (ids the tokenizer knows, minus special and added tokens), in tiers: tokens that
    decode to a space + letters (whole words in byte-level BPE vocabularies, which re-tokenize the same when
    joined), tokens that decode to one plain word, then all ordinary tokens. Cached per tokenizer."""
    per_tokenizer = _POOLS.setdefault(tokenizer, {})
    if d_vocab in per_tokenizer:
        return per_tokenizer[d_vocab]
    n_ids = min(len(tokenizer), d_vocab)
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    excluded |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    ordinary = [i for i in range(n_ids) if i not in excluded]
    strings = tokenizer.batch_decode([[i] for i in ordinary])
    space_words = [i for i, s in zip(ordinary, strings, strict=True) if _SPACE_WORD.fullmatch(s)]
    bare_words = [i for i, s in zip(ordinary, strings, strict=True) if _BARE_WORD.fullmatch(s)]
    tiers = tuple(
        (torch.tensor(ids, dtype=torch.long), f"{len(ids)} {what}")
        for ids, what in (
            (space_words, "tokens that decode to a space followed by letters"),
            (bare_words, "tokens that decode to a single plain word"),
            (ordinary, "ordinary tokens (all but special/added tokens)"),
        )
        if ids
    )
    pools = TokenPools(tiers, len(ordinary))
    per_tokenizer[d_vocab] = pools
    return pools


def choose_pool(pools: TokenPools, seq_len: int) -> tuple[torch.Tensor, str]:
    """The most word-like tier with enough tokens: at least seq_len, and not a tiny corner of the vocabulary."""
    enough = max(seq_len, min(1000, pools.n_ordinary // 2))
    for ids, description in pools.tiers:
        if len(ids) >= enough:
            return ids, description
    raise LensError(
        f"seq_len={seq_len} is more than the {pools.n_ordinary} ordinary tokens of this vocabulary "
        f"(a repeat never holds a token twice); use seq_len <= {pools.n_ordinary}."
    )


def bos_id(tc: ToolContext) -> int:
    tokenizer = tc.view.tokenizer
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise LensError(
            "this model's tokenizer has neither a BOS nor an EOS token to start the random sequences; "
            "pass prompt= with your own repeated text instead."
        )
    return int(bos)


def repeated_random_tokens(tc: ToolContext, seq_len: int, n_seqs: int, seed: int) -> tuple[torch.Tensor, str]:
    """The batch of random mode, shape (n_seqs, 2*seq_len + 1) on the CPU: BOS, then seq_len distinct
    tokens drawn uniformly without replacement from the chosen pool (torch.Generator seeded with seed),
    then the same seq_len tokens again. Returns the tokens and a description of the pool."""
    ids, description = choose_pool(token_pools(tc.view.tokenizer, tc.view.d_vocab), seq_len)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    choice = torch.rand(n_seqs, len(ids), generator=generator).topk(seq_len, dim=1).indices
    first = ids[choice]
    bos = torch.full((n_seqs, 1), bos_id(tc), dtype=torch.long)
    return torch.cat([bos, first, first], dim=1), description


# ---- which attention each score reads ----------------------------------------------------------------
@dataclass
class Targets:
    """(sequence, query, key) index triples per kind, the number of scored queries per kind, and the
    (sequence, position) pairs of the two loss groups."""

    index: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    n_queries: dict[str, int]
    first_seen: tuple[torch.Tensor, torch.Tensor]
    copyable: tuple[torch.Tensor, torch.Tensor]


def find_targets(tokens: torch.Tensor) -> Targets:
    """Targets of every query of a (batch, pos) token tensor, under the rules in the module docstring."""
    tokens = tokens.cpu()
    n = tokens.shape[1]
    pos = torch.arange(n)
    earlier = (pos[None, :] < pos[:, None]) & (pos[None, :] >= 1)  # [q, k]: 1 <= k < q
    triples: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {kind: [] for kind in KINDS}
    n_queries: dict[str, int] = dict.fromkeys(KINDS, 0)
    first_seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    copyable: list[tuple[torch.Tensor, torch.Tensor]] = []
    for b, row in enumerate(tokens):
        same = row[:, None] == row[None, :]
        duplicate = same & earlier
        induction = torch.zeros_like(duplicate)
        induction[:, 1:] = duplicate[:, :-1]
        induction &= earlier
        previous = torch.zeros_like(duplicate)
        previous[pos[1:], pos[:-1]] = True
        for kind, mask in (("induction", induction), ("duplicate_token", duplicate), ("previous_token", previous)):
            q, k = mask.nonzero(as_tuple=True)
            triples[kind].append((torch.full_like(q, b), q, k))
            n_queries[kind] += int(mask.any(dim=1).sum())
        fresh = ~duplicate.any(dim=1) & (pos >= 1)
        copy = torch.zeros(n, dtype=torch.bool)
        copy[1:] = (induction[:-1] & same[1:]).any(dim=1)  # position p: query p-1's induction target holds token p
        for group, mask in ((first_seen, fresh), (copyable, copy)):
            p = mask.nonzero(as_tuple=True)[0]
            group.append((torch.full_like(p, b), p))

    def cat(parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))

    return Targets(
        {kind: cast(tuple[torch.Tensor, torch.Tensor, torch.Tensor], cat(triples[kind])) for kind in KINDS},
        n_queries,
        cast(tuple[torch.Tensor, torch.Tensor], cat(first_seen)),
        cast(tuple[torch.Tensor, torch.Tensor], cat(copyable)),
    )


# ---- the one forward pass ----------------------------------------------------------------------------
class _StopBeforeUnembed(Exception):
    """Raised by the unembed input hook: the residual is kept, the full logits are never computed."""


def head_scores_and_losses(
    tc: ToolContext, tokens: torch.Tensor, targets: Targets
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One forward pass over the batch: per-kind (n_layers, n_heads) score tensors (float32, CPU) and the
    per-token losses (nats) of the first-seen and the copyable tokens."""
    view = tc.view
    n_layers, n_heads = view.n_layers, view.n_heads
    scores = {kind: torch.zeros(n_layers, n_heads) for kind in KINDS}
    on_device: dict[torch.device, dict[str, tuple[torch.Tensor, ...]]] = {}
    kept: dict[str, torch.Tensor] = {}

    def reduce_pattern(pattern: torch.Tensor, hook: Any, layer: int) -> None:
        if pattern.shape[1] != n_heads:
            raise RuntimeError(f"layer {layer} pattern has {pattern.shape[1]} heads, expected {n_heads}")
        index = on_device.setdefault(
            pattern.device,
            {kind: tuple(t.to(pattern.device) for t in triple) for kind, triple in targets.index.items()},
        )
        for kind, (b, q, k) in index.items():
            if targets.n_queries[kind]:
                picked = pattern[b, :, q, k]  # [triples, heads]
                scores[kind][layer] = picked.float().sum(dim=0).cpu() / targets.n_queries[kind]

    def keep_residual(resid: torch.Tensor, hook: Any) -> None:
        kept["resid"] = resid
        raise _StopBeforeUnembed

    hooks: list[tuple[str, Callable[..., Any]]] = [
        (hook_name("pattern", layer), partial(reduce_pattern, layer=layer)) for layer in range(n_layers)
    ]
    hooks.append(("unembed.hook_in", keep_residual))
    with torch.no_grad():
        try:
            with view.hooks(fwd_hooks=hooks):
                view(tokens.to(view.device))
        except _StopBeforeUnembed:
            pass
        if "resid" not in kept:
            raise RuntimeError("the forward pass never reached unembed.hook_in")
        losses = [_token_losses(tc, kept["resid"], tokens, group) for group in (targets.first_seen, targets.copyable)]
    return scores, losses[0], losses[1]


def _scores_in_batches(
    tc: ToolContext, tokens: torch.Tensor, targets: Targets
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """head_scores_and_losses over all sequences, in batches sized by memory and by time (each batch takes
    about Limits.max_batch_seconds, so progress and cancellation land every few seconds; a batch that still
    runs out of memory is halved), with the per-batch sums added up so the scores are the same."""
    if tokens.shape[0] == 1:
        return head_scores_and_losses(tc, tokens, targets)
    n_tokens = int(tokens.shape[1])
    plan = plan_rows(
        tc.limits,
        tc.view.device,
        n_tokens,
        sequence_bytes(tc.view, n_tokens),
        wanted=int(tokens.shape[0]),
        seconds_per_row=seconds_per_row(tc, n_tokens),
    )
    counter = ProgressCounter(tc.progress, total=int(tokens.shape[0]), unit="sequences scored")

    def run_batch(rows: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        part = tokens[list(rows)]
        part_targets = find_targets(part)
        scores, first, copy = head_scores_and_losses(tc, part, part_targets)
        return {kind: scores[kind] * part_targets.n_queries[kind] for kind in KINDS}, first, copy

    results = [
        result
        for _, result in iter_batched(range(tokens.shape[0]), run_batch, plan, device=tc.view.device, counter=counter)
    ]
    sums = {kind: sum((r[0][kind] for r in results), torch.zeros(())) for kind in KINDS}
    scores = {kind: sums[kind] / max(1, targets.n_queries[kind]) for kind in KINDS}
    return scores, torch.cat([r[1] for r in results]), torch.cat([r[2] for r in results])


def ablated_losses(
    tc: ToolContext, tokens: torch.Tensor, heads: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses (nats) of the first-seen and the copyable tokens with `heads` zero-ablated (their z set to
    0 at every position), in batches sized like the scoring pass; the pass stops before the unembedding."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def zero(z: torch.Tensor, hook: Any = None, heads: Sequence[int] = ()) -> torch.Tensor:
        z[:, :, list(heads)] = 0.0
        return z

    zero_z = [(hook_name("z", layer), partial(zero, heads=listed)) for layer, listed in by_layer.items()]
    n_tokens = int(tokens.shape[1])
    plan = plan_rows(
        tc.limits,
        tc.view.device,
        n_tokens,
        sequence_bytes(tc.view, n_tokens),
        wanted=int(tokens.shape[0]),
        seconds_per_row=seconds_per_row(tc, n_tokens),
    )

    def run_batch(rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        part = tokens[list(rows)]
        part_targets = find_targets(part)
        kept: dict[str, torch.Tensor] = {}

        def keep_residual(resid: torch.Tensor, hook: Any) -> None:
            kept["resid"] = resid
            raise _StopBeforeUnembed

        hooks = [*zero_z, ("unembed.hook_in", keep_residual)]
        try:
            with tc.view.hooks(fwd_hooks=hooks):
                tc.view(part.to(tc.view.device))
        except _StopBeforeUnembed:
            pass
        if "resid" not in kept:
            raise RuntimeError("the forward pass never reached unembed.hook_in")
        first, copy = (
            _token_losses(tc, kept["resid"], part, g) for g in (part_targets.first_seen, part_targets.copyable)
        )
        return first, copy

    with torch.no_grad():
        results = [r for _, r in iter_batched(range(tokens.shape[0]), run_batch, plan.rows, device=tc.view.device)]
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])


def _token_losses(
    tc: ToolContext, resid: torch.Tensor, tokens: torch.Tensor, group: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """-log p(token[b, p] | tokens[b, :p]) for each (b, p) of the group, logits computed in chunks."""
    b, p = group
    if len(p) == 0:
        return torch.zeros(0)
    rows = resid[b.to(resid.device), (p - 1).to(resid.device)]  # [n, d_model]
    answers = tokens[b, p]
    chunk = max(1, _LOGIT_CHUNK_ENTRIES // tc.view.d_vocab)
    losses = []
    for start in range(0, len(rows), chunk):
        logits = unembed(tc, rows[start : start + chunk]).float()  # resid is after the final norm
        logprobs = logits.log_softmax(dim=-1)
        losses.append(-logprobs.gather(-1, answers[start : start + chunk, None].to(logprobs.device))[:, 0].cpu())
    return torch.cat(losses)


# ---- the tool -----------------------------------------------------------------------------------------
def _check_size(tc: ToolContext, n_seqs: int, n_tokens: int, prompt_mode: bool) -> None:
    """The bounded-memory caps: tokens in the batch, and attention weights one layer's pattern holds."""
    limit, n_heads = tc.limits.max_induction_tokens, tc.view.n_heads
    entry_limit = PATTERN_ENTRIES_PER_TOKEN * limit
    fitting = min(limit // n_tokens, entry_limit // (n_heads * n_tokens**2))
    fix = (
        "shorten the prompt"
        if prompt_mode
        else f"use n_seqs <= {fitting} or a smaller seq_len"
        if fitting
        else "use a smaller seq_len"
    )
    what = "the prompt: 1 sequence x its tokens" if prompt_mode else "n_seqs x (2*seq_len+1)"
    if n_seqs * n_tokens > limit:
        raise LensError(
            f"{what} = {n_seqs} x {n_tokens} = {n_seqs * n_tokens} tokens is over the limit of {limit} "
            f"(LENS_MCP_MAX_INDUCTION_TOKENS); {fix}."
        )
    entries = n_seqs * n_heads * n_tokens**2
    if entries > entry_limit:
        raise LensError(
            f"one layer's attention pattern would hold n_seqs x n_heads x (tokens per sequence)^2 = "
            f"{n_seqs} x {n_heads} x {n_tokens}^2 = {entries} weights, over the limit of {entry_limit} "
            f"({PATTERN_ENTRIES_PER_TOKEN} x LENS_MCP_MAX_INDUCTION_TOKENS); {fix} (memory grows with "
            "the square of the sequence length)."
        )


def _top(grid: torch.Tensor, k: int) -> list[HeadScore]:
    n_heads = grid.shape[1]
    order = sorted(range(grid.numel()), key=lambda i: (-float(grid.view(-1)[i]), i))[:k]
    return [HeadScore(layer=i // n_heads, head=i % n_heads, score=float(grid.view(-1)[i])) for i in order]


def _example_prompt(tc: ToolContext, tokens: torch.Tensor) -> str | None:
    text = tc.view.tokenizer.decode(tokens[1:].tolist())
    if len(text) > _MAX_EXAMPLE_CHARS:
        return None
    again = tc.view.to_tokens(text, prepend_bos=True, truncate=False)[0].cpu()
    return text if torch.equal(again, tokens) else None


def _mean(values: torch.Tensor) -> float | None:
    return float(values.double().mean()) if len(values) else None


def _mean_first_seen(values: torch.Tensor) -> float:
    """The mean loss of the first-seen tokens, which always exist: position 1 has no earlier occurrence."""
    if not len(values):
        raise RuntimeError("no first-seen token to average the loss over")
    return float(values.double().mean())


def induction_scores(
    tc: ToolContext,
    seq_len: Annotated[
        int,
        Field(
            description=(
                "Random tokens per repeat; each sequence is BOS + seq_len tokens + the same seq_len tokens "
                "(2*seq_len+1 must fit the context). Ignored with prompt"
            )
        ),
    ] = 40,
    n_seqs: Annotated[int, Field(description="Random sequences, run as one batch. Ignored with prompt")] = 8,
    seed: Annotated[int, Field(description="Seed of the random tokens (same seed, same tokens, same scores)")] = 0,
    top_k: Annotated[int, Field(description="Heads listed per kind (at most all heads)")] = 10,
    prompt: Annotated[
        str | None, Field(description="Score on your own text instead, wherever it repeats tokens (BOS is prepended)")
    ] = None,
    ablate: Annotated[
        list[list[int]] | None,
        Field(
            description="Heads to zero-ablate as [[layer, head], ...]: also report the two losses with them ablated "
            "(one more batched pass), e.g. the top induction heads"
        ),
    ] = None,
) -> InductionScores:
    """Find induction, previous-token and duplicate-token heads in one batched forward pass.
    Without prompt: n_seqs sequences of BOS + seq_len random word tokens repeated twice (seeded, no
    special tokens). Scores are attention fractions in [0, 1], averaged over queries:
    - induction: attention from a repeated token to the token right after its earlier occurrence;
    - previous_token: attention to the position just before (queries 1..; BOS is never a query);
    - duplicate_token: attention from a repeated token to its earlier occurrence(s).
    With prompt: the same scores on your text wherever a token repeats (earlier occurrences summed).
    Returns layer x head grids, top_k heads per kind, and loss (nats) on first-seen tokens vs tokens an
    induction copy predicts (second repeat); a much lower second-repeat loss is in-context learning.
    A clear induction head scores well above 0.3 (chance is about 1/position). Previous-token heads in an
    earlier layer usually feed induction heads (K-composition).
    Next: attention_pattern(prompt=example_prompt) on the top induction head (second-repeat queries should
    attend to the token after the earlier copy). ablate=[[layer, head], ...] also reports both losses with
    those heads zero-ablated: induction heads raise the second-repeat loss, not the first."""
    n_layers, n_heads = tc.view.n_layers, tc.view.n_heads
    top_k = min(check_top_k(top_k, tc.limits.max_top_k), n_layers * n_heads)
    if prompt is None:
        max_tokens = tc.max_prompt_tokens
        longest = (max_tokens - 1) // 2
        if longest < 2:
            raise LensError(
                f"this model's context of {max_tokens} tokens is too short for repeated sequences; "
                "pass prompt= instead."
            )
        seq_len = check_range(
            seq_len,
            2,
            longest,
            "seq_len",
            f"Each sequence is 2*seq_len+1 tokens and must fit in {max_tokens} (model context "
            f"n_ctx={tc.view.n_ctx}, server cap LENS_MCP_MAX_PROMPT_TOKENS="
            f"{tc.limits.max_prompt_tokens}).",
        )
        n_seqs = check_range(n_seqs, 1, tc.limits.max_batch_sequences, "n_seqs")
        seed = check_range(seed, 0, 2**63 - 1, "seed")
        _check_size(tc, n_seqs, 2 * seq_len + 1, prompt_mode=False)
        tokens, pool = repeated_random_tokens(tc, seq_len, n_seqs, seed)
    else:
        tokens, pool = encode(tc, prompt).cpu(), None
        n_seqs = 1
        _check_size(tc, 1, int(tokens.shape[1]), prompt_mode=True)
    n_tokens = int(tokens.shape[1])
    ablated_heads = resolve_heads(tc, ablate, "ablate") if ablate is not None else None
    passes = 1 if ablated_heads is None else 2
    cost = estimate(tc, Work(rows=passes * n_seqs, tokens_per_row=n_tokens, cells=3 * n_layers * tc.view.n_heads))
    enforce(tc, cost, "a smaller n_seqs or seq_len" if prompt is None else "a shorter prompt")
    targets = find_targets(tokens)
    if prompt is not None and targets.n_queries["induction"] == 0:
        shown = token_strings(tc, tokens[0, :60])
        raise LensError(
            f"prompt has no repeated token with another token between its occurrences, so there is nothing to "
            f"score (tokens: {shown}{' ...' if tokens.shape[1] > 60 else ''}). Repeat a phrase, e.g. 'The cat sat on "
            "the mat. The cat sat on the mat.', or omit prompt to use random repeated tokens."
        )
    tc.progress(0, passes, f"one forward pass over {n_seqs} x {tokens.shape[1]} tokens")
    scores, first_losses, copy_losses = _scores_in_batches(tc, tokens, targets)
    ablated = None
    if ablated_heads is not None:
        tc.progress(1, 2, "scored every head; now the losses with the heads ablated")
        first_ablated, copy_ablated = ablated_losses(tc, tokens, ablated_heads)
        ablated = AblatedLosses(
            heads=ablated_heads,
            loss_first_repeat=_mean_first_seen(first_ablated),
            loss_second_repeat=_mean(copy_ablated),
        )
        tc.progress(2, 2, "losses with the heads ablated")
    else:
        tc.progress(1, 1, "scored every head")
    return InductionScores(
        mode="random" if prompt is None else "prompt",
        n_seqs=n_seqs,
        n_tokens=int(tokens.shape[1]),
        seq_len=seq_len if prompt is None else None,
        seed=seed if prompt is None else None,
        token_pool=pool,
        induction=scores["induction"].tolist(),
        previous_token=scores["previous_token"].tolist(),
        duplicate_token=scores["duplicate_token"].tolist(),
        top_induction=_top(scores["induction"], top_k),
        top_previous_token=_top(scores["previous_token"], top_k),
        top_duplicate_token=_top(scores["duplicate_token"], top_k),
        loss_first_repeat=_mean_first_seen(first_losses),
        loss_second_repeat=_mean(copy_losses),
        positions=ScoredPositions(
            induction=targets.n_queries["induction"],
            duplicate_token=targets.n_queries["duplicate_token"],
            previous_token=targets.n_queries["previous_token"],
            first_seen=len(first_losses),
            copyable=len(copy_losses),
        ),
        example_prompt=_example_prompt(tc, tokens[0]) if prompt is None else None,
        ablated=ablated,
    )
