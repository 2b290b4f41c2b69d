"""Build the builtin ``toy-induction`` model: a 2-layer attention-only GPT-2 with a known induction circuit.

Why planted, then trained: trained from a random init on repeated random words, this tiny model
takes thousands of steps to leave the induction plateau when the distance between the two copies
varies (with a fixed distance it learns a positional shortcut instead, which is not induction).
So the script plants the circuit in the weights and then trains the whole model (all attention,
embedding and LayerNorm parameters) on repeated sequences of varying length, which calibrates the
logits (first-half loss falls from tens of nats to chance) while the circuit stays and sharpens.

The circuit, in a residual stream of 3 x 48 dims (token | position | previous-token subspaces):
- layer 0, head ``PREV_HEAD``: queries read the one-hot position i, keys position j, with a shift
  so that position i attends to i-1; its OV copies the token part into the previous-token subspace;
- layer 1, head ``IND_HEAD``: queries read the current token, keys read the previous-token
  subspace (K-composition with the layer-0 head), so a token attends to the position right after
  its earlier occurrence; its OV copies that token into the token subspace, which the (tied)
  unembedding reads as the prediction.
The other heads keep (scaled) GPT-2 random init. MLPs are present (standard ``GPT2Config``) but
zeroed and frozen.

Tokenizer: word level (``tokenizers`` WordLevel + WhitespaceSplit, wrapped in
``PreTrainedTokenizerFast``): id 0 ``<|bos|>`` (BOS, EOS and pad), id 1 ``<|unk|>``, ids 2..255 the
words ``w0``..``w253``. It adds no BOS itself (TransformerLens prepends it); decoding joins words
with spaces.

Usage: ``python scripts/train_toy_induction.py [--out DIR] [--seed N] [--steps N]``.
Deterministic from its seed; writes the model, tokenizer, ``circuit.json`` and ``README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "lens_mcp" / "builtin" / "toy_induction"
BOS, UNK = "<|bos|>", "<|unk|>"
N_WORDS = 254
VOCAB = N_WORDS + 2
FIRST_WORD_ID = 2
SUBSPACE = 48  # dims of each of the token / position / previous-token subspaces
N_CTX = 48
N_HEAD = 3
D_MODEL = 3 * SUBSPACE
D_HEAD = D_MODEL // N_HEAD
TOKEN, POSITION, PREVIOUS = 0, SUBSPACE, 2 * SUBSPACE  # subspace offsets
PREV_HEAD, IND_HEAD = 1, 2
QK_PREV, QK_IND, OV_PREV, OV_IND, LN_FINAL = 2.0, 3.0, 1.0, 4.0, 1.0
TRAIN_LEN, HALF_MIN, HALF_MAX, BATCH, LR = 47, 5, 23, 64, 1e-3
EVAL_BATCH, EVAL_HALF = 256, 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {BOS: 0, UNK: 1, **{f"w{i}": FIRST_WORD_ID + i for i in range(N_WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=BOS,
        unk_token=UNK,
        model_max_length=N_CTX,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _plant_head(
    attn: Any,
    head: int,
    query: dict[int, int],
    key: dict[int, int],
    value: dict[int, int],
    output: dict[int, int],
    qk_scale: float,
    ov_scale: float,
) -> None:
    """Set one head's weights: maps are {residual dim: head dim} (output: {head dim: residual dim})."""
    d = D_MODEL
    cols = slice(head * D_HEAD, (head + 1) * D_HEAD)
    weight, bias, out = attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight  # Conv1D: x @ W
    for part in range(3):
        weight[:, part * d + cols.start : part * d + cols.stop] = 0
        bias[part * d + cols.start : part * d + cols.stop] = 0
    out[cols, :] = 0
    for src, dst in query.items():
        weight[src, cols.start + dst] = qk_scale
    for src, dst in key.items():
        weight[src, d + cols.start + dst] = 1.0
    for src, dst in value.items():
        weight[src, 2 * d + cols.start + dst] = 1.0
    for src, dst in output.items():
        out[cols.start + src, dst] = ov_scale


@torch.no_grad()
def build_model(gen: torch.Generator) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_CTX,
        n_embd=D_MODEL,
        n_layer=2,
        n_head=N_HEAD,
        n_inner=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model: Any = GPT2LMHeadModel(config)
    for p in model.parameters():
        p.mul_(0.5)
    embed = torch.randn(VOCAB, SUBSPACE, generator=gen)
    embed -= embed.mean(dim=1, keepdim=True)  # zero mean keeps LayerNorm a pure rescaling
    embed = embed / embed.norm(dim=1, keepdim=True) * math.sqrt(SUBSPACE)
    model.transformer.wte.weight.zero_()
    model.transformer.wte.weight[:, TOKEN : TOKEN + SUBSPACE] = embed
    model.transformer.wpe.weight.zero_()
    model.transformer.wpe.weight[:, POSITION : POSITION + N_CTX] = torch.eye(N_CTX) * math.sqrt(SUBSPACE)
    for block in model.transformer.h:
        for p in block.mlp.parameters():
            p.zero_()
    copy = {t: t for t in range(SUBSPACE)}
    _plant_head(
        model.transformer.h[0].attn,
        PREV_HEAD,
        query={POSITION + i: i - 1 for i in range(1, N_CTX)},
        key={POSITION + j: j for j in range(N_CTX)},
        value={TOKEN + t: t for t in range(SUBSPACE)},
        output={t: PREVIOUS + t for t in range(SUBSPACE)},
        qk_scale=QK_PREV,
        ov_scale=OV_PREV,
    )
    _plant_head(
        model.transformer.h[1].attn,
        IND_HEAD,
        query={TOKEN + t: t for t in range(SUBSPACE)},
        key={PREVIOUS + t: t for t in range(SUBSPACE)},
        value={TOKEN + t: t for t in range(SUBSPACE)},
        output=copy,
        qk_scale=QK_IND,
        ov_scale=OV_IND,
    )
    model.transformer.ln_f.weight.fill_(LN_FINAL)
    for block in model.transformer.h:
        for p in block.mlp.parameters():
            p.requires_grad_(False)
    return model


def training_batch(gen: torch.Generator) -> torch.Tensor:
    """[BATCH, TRAIN_LEN]: BOS + random filler + half + half, the half length drawn per sequence."""
    rows = []
    for _ in range(BATCH):
        half = int(torch.randint(HALF_MIN, HALF_MAX + 1, (1,), generator=gen))
        filler = torch.randint(FIRST_WORD_ID, VOCAB, (TRAIN_LEN - 1 - 2 * half,), generator=gen)
        h = torch.randint(FIRST_WORD_ID, VOCAB, (half,), generator=gen)
        rows.append(torch.cat([torch.zeros(1, dtype=torch.long), filler, h, h]))
    return torch.stack(rows)


def train(model: GPT2LMHeadModel, steps: int, gen: torch.Generator) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        tokens = training_batch(gen)
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - started:.1f}s)")
    model.eval()
    return time.perf_counter() - started


@torch.no_grad()
def measure(model: GPT2LMHeadModel, gen: torch.Generator) -> dict:
    """Per-head previous-token and induction scores, and first-half vs repeat loss, on fresh sequences."""
    model.set_attn_implementation("eager")
    half = EVAL_HALF
    words = torch.stack([torch.randperm(N_WORDS, generator=gen)[:half] + FIRST_WORD_ID for _ in range(EVAL_BATCH)])
    tokens = torch.cat([torch.zeros(EVAL_BATCH, 1, dtype=torch.long), words, words], dim=1)
    out = model(tokens, output_attentions=True)
    nll = -out.logits.float().log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    second = torch.arange(half + 1, 2 * half + 1)
    previous, induction = [], []
    for pattern in out.attentions:  # [batch, head, query, key]
        queries = torch.arange(1, pattern.shape[-1])
        previous.append(pattern[:, :, queries, queries - 1].mean(dim=(0, 2)).tolist())
        induction.append(pattern[:, :, second, second - half + 1].mean(dim=(0, 2)).tolist())
    return {
        "previous_token": previous,
        "induction": induction,
        "loss_first_repeat": nll[:, 1:half].mean().item(),
        "loss_second_repeat": nll[:, half + 1 : 2 * half].mean().item(),
    }


def write_readme(out: Path, circuit: dict) -> None:
    p, i, s = circuit["previous_token_head"], circuit["induction_head"], circuit["scores"]
    (out / "README.md").write_text(f"""# toy-induction

A 2-layer, attention-only GPT-2 (d_model {D_MODEL}, {N_HEAD} heads of {D_HEAD} dims, n_positions {N_CTX},
vocab {VOCAB}; MLPs present but zero) with a known induction circuit, planted and then trained
(see scripts/train_toy_induction.py for why and how).

| role | head | score |
|------|------|-------|
| previous-token head | L{p[0]}H{p[1]} | previous-token score {s["previous_token"][p[0]][p[1]]:.3f} |
| induction head | L{i[0]}H{i[1]} | induction score {s["induction"][i[0]][i[1]]:.3f} |

Loss on fresh `<|bos|> + half + half` sequences (half = {EVAL_HALF} distinct random words): first half
{circuit["loss_first_repeat"]:.3f} nats (chance ln {N_WORDS} = {math.log(N_WORDS):.3f}), repeat
{circuit["loss_second_repeat"]:.3f} nats. All per-head scores are in `circuit.json`.

Tokenizer: words `w0`..`w{N_WORDS - 1}` (ids 2..{VOCAB - 1}), `<|bos|>` (id 0; also EOS and pad),
`<|unk|>` (id 1); whitespace split; no BOS added by the tokenizer (TransformerLens prepends it).

Regenerate: `python scripts/train_toy_induction.py --seed {circuit["seed"]} --steps {circuit["steps"]}`
""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=250)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = build_model(gen)
    seconds = train(model, args.steps, gen)
    scores = measure(model, torch.Generator().manual_seed(args.seed + 1))
    prev_head = max(range(N_HEAD), key=lambda h: scores["previous_token"][0][h])
    ind_head = max(range(N_HEAD), key=lambda h: scores["induction"][1][h])
    log(
        f"trained {args.steps} steps in {seconds:.1f}s; previous-token L0H{prev_head} "
        f"{scores['previous_token'][0][prev_head]:.3f}, induction L1H{ind_head} {scores['induction'][1][ind_head]:.3f}, "
        f"loss first {scores['loss_first_repeat']:.3f} repeat {scores['loss_second_repeat']:.3f}"
    )
    assert scores["previous_token"][0][prev_head] > 0.5, "no previous-token head in layer 0"
    assert scores["induction"][1][ind_head] > 0.5, "no induction head in layer 1"
    assert scores["loss_second_repeat"] < 0.5 * scores["loss_first_repeat"], "the repeat is not predicted"
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    build_tokenizer().save_pretrained(args.out)
    circuit = {
        "previous_token_head": [0, prev_head],
        "induction_head": [1, ind_head],
        "seed": args.seed,
        "steps": args.steps,
        "train_seconds": round(seconds, 1),
        "loss_first_repeat": scores["loss_first_repeat"],
        "loss_second_repeat": scores["loss_second_repeat"],
        "scores": {"previous_token": scores["previous_token"], "induction": scores["induction"]},
    }
    (args.out / "circuit.json").write_text(json.dumps(circuit, indent=2) + "\n")
    write_readme(args.out, circuit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
