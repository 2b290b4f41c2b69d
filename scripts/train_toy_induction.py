"""Train the builtin ``toy-induction`` model: a 2-layer attention-only GPT-2 with an induction circuit.

The model is a standard ``GPT2LMHeadModel`` (2 layers, 4 heads of 32 dims, d_model 128, n_positions 64,
vocab 256) whose MLPs are zeroed and frozen, so it is attention-only in effect while staying a plain
GPT-2 checkpoint that ``transformer_lens.TransformerBridge.boot_transformers`` loads. It is trained
from a fixed seed on ``BOS + half + half`` sequences (half = 20-23 random words), which can only be
predicted in the second half by copying: the model learns a previous-token head in layer 0 and an
induction head in layer 1.

The tokenizer is a word-level ``tokenizers`` tokenizer (WordLevel model, WhitespaceSplit
pre-tokenizer, no decoder, so decoding joins words with single spaces) wrapped in
``PreTrainedTokenizerFast``. Vocabulary: id 0 ``<|bos|>`` (BOS, EOS and pad), id 1 ``<|unk|>``,
ids 2..255 the words ``w0``..``w253``. The tokenizer adds no BOS by itself; TransformerLens
prepends it (``prepend_bos=True``).

After training the script measures, on fresh random repeated sequences, every head's
previous-token score and induction score and the loss on the first half vs the repeat, asserts
that the circuit exists, and writes ``circuit.json`` and ``README.md`` next to the weights.

Usage: ``python scripts/train_toy_induction.py [--out DIR] [--seed N] [--steps N]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "lens_mcp" / "builtin" / "toy_induction"
BOS, UNK = "<|bos|>", "<|unk|>"
N_WORDS = 254  # w0..w253; with the 2 special tokens the vocabulary is exactly 256
VOCAB = N_WORDS + 2
FIRST_WORD_ID = 2
N_LAYER, N_HEAD, D_MODEL, D_MLP, N_CTX = 2, 4, 128, 128, 64
HALF_MIN, HALF_MAX = 20, 23  # context BOS + 2 * half <= 47
BATCH, LR = 64, 1e-3
EVAL_BATCH, EVAL_HALF = 256, 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer: whitespace split, unknown words -> <|unk|>, decode joins with spaces."""
    vocab = {BOS: 0, UNK: 1, **{f"w{i}": FIRST_WORD_ID + i for i in range(N_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS, unk_token=UNK,
        model_max_length=N_CTX, padding_side="right", clean_up_tokenization_spaces=False)


def build_model() -> GPT2LMHeadModel:
    """Standard GPT-2 config; MLP weights are zeroed and MLPs + ln_2 frozen (attention-only in effect)."""
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=N_CTX, n_embd=D_MODEL, n_layer=N_LAYER, n_head=N_HEAD,
        n_inner=D_MLP, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = GPT2LMHeadModel(config)
    for block in model.transformer.h:
        with torch.no_grad():
            for p in block.mlp.parameters():
                p.zero_()
        for p in [*block.mlp.parameters(), *block.ln_2.parameters()]:
            p.requires_grad_(False)
    return model


def repeated_batch(batch: int, half: int, gen: torch.Generator) -> torch.Tensor:
    """[batch, 1 + 2*half]: BOS, then a random half of words, then the same half again."""
    h = torch.randint(FIRST_WORD_ID, VOCAB, (batch, half), generator=gen)
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), h, h], dim=1)


def train(model: GPT2LMHeadModel, steps: int, gen: torch.Generator) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        half = int(torch.randint(HALF_MIN, HALF_MAX + 1, (1,), generator=gen))
        tokens = repeated_batch(BATCH, half, gen)
        loss = model(tokens, labels=tokens).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - started:.1f}s)")
    model.eval()
    return time.perf_counter() - started


@torch.no_grad()
def measure(model: GPT2LMHeadModel, gen: torch.Generator) -> dict:
    """Per-head previous-token / induction scores and first-half vs repeat loss on fresh sequences."""
    model.set_attn_implementation("eager")  # only eager attention returns the patterns
    L = EVAL_HALF
    tokens = repeated_batch(EVAL_BATCH, L, gen)
    out = model(tokens, output_attentions=True)
    logprobs = F.log_softmax(out.logits.float(), dim=-1)
    nll = -logprobs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # nll[:, p] = loss predicting token p+1
    loss_first = nll[:, 1:L].mean().item()  # positions 1..L-1 predict h[1..L-1] the first time
    loss_second = nll[:, L + 1:2 * L].mean().item()  # positions L+1..2L-1 predict h[1..L-1] again
    q = torch.arange(L + 1, 2 * L + 1)  # second-repeat positions; h[k] sits at k+1 and L+1+k
    prev, induction = [], []
    for layer, pattern in enumerate(out.attentions):  # [batch, head, q, k]
        pattern = pattern.float()
        idx = torch.arange(1, pattern.shape[-1])
        prev.append(pattern[:, :, idx, idx - 1].mean(dim=(0, 2)).tolist())
        induction.append(pattern[:, :, q, q - L + 1].mean(dim=(0, 2)).tolist())
    return {"previous_token": prev, "induction": induction,
            "loss_first_repeat": loss_first, "loss_second_repeat": loss_second}


def best_head(scores: list[list[float]], layer: int) -> int:
    return max(range(N_HEAD), key=lambda h: scores[layer][h])


def write_readme(out: Path, circuit: dict) -> None:
    p, i = circuit["previous_token_head"], circuit["induction_head"]
    s = circuit["scores"]
    text = f"""# toy-induction

A 2-layer, attention-only GPT-2 (4 heads of 32 dims per layer, d_model 128, n_positions 64,
vocab 256) trained to continue repeated random word sequences, so it holds a known induction
circuit. The MLPs are present (standard `GPT2Config`, d_mlp {D_MLP}) but all their weights are zero.

| role | head | score |
|------|------|-------|
| previous-token head | L{p[0]}H{p[1]} | previous-token score {s['previous_token'][p[0]][p[1]]:.3f} |
| induction head | L{i[0]}H{i[1]} | induction score {s['induction'][i[0]][i[1]]:.3f} |

Loss on fresh `<|bos|> + half + half` sequences (half = {EVAL_HALF} random words):
first half {circuit['loss_first_repeat']:.3f} nats (chance ln {VOCAB - 2} = {math.log(VOCAB - 2):.3f}),
repeat {circuit['loss_second_repeat']:.3f} nats. All per-head scores are in `circuit.json`.

Tokenizer: word level, words `w0`..`w{N_WORDS - 1}` (ids 2..{VOCAB - 1}), `<|bos|>` (id 0; also EOS and
pad) and `<|unk|>` (id 1). Text is split on whitespace; the tokenizer adds no BOS itself
(TransformerLens prepends it), and decoding joins words with single spaces.

Regenerate (deterministic from the seed, about a minute on 2 CPU cores):

    python scripts/train_toy_induction.py --seed {circuit['seed']} --steps {circuit['steps']}
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the builtin)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=350)
    args = ap.parse_args(argv)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    model = build_model()
    seconds = train(model, args.steps, gen)
    log(f"trained {args.steps} steps in {seconds:.1f}s")

    scores = measure(model, torch.Generator().manual_seed(args.seed + 1_000_003))
    for layer in range(N_LAYER):
        for h in range(N_HEAD):
            log(f"L{layer}H{h}: previous-token {scores['previous_token'][layer][h]:.3f}  "
                f"induction {scores['induction'][layer][h]:.3f}")
    log(f"loss first half {scores['loss_first_repeat']:.3f}  repeat {scores['loss_second_repeat']:.3f}")

    prev_head, ind_head = best_head(scores["previous_token"], 0), best_head(scores["induction"], 1)
    prev_score = scores["previous_token"][0][prev_head]
    ind_score = scores["induction"][1][ind_head]
    assert prev_score > 0.5, f"no previous-token head in layer 0 (best L0H{prev_head}: {prev_score:.3f})"
    assert ind_score > 0.5, f"no induction head in layer 1 (best L1H{ind_head}: {ind_score:.3f})"
    assert scores["loss_second_repeat"] < 0.2 * scores["loss_first_repeat"], "repeat loss not far below"

    circuit = {
        "previous_token_head": [0, prev_head],
        "induction_head": [1, ind_head],
        "scores": {"previous_token": scores["previous_token"], "induction": scores["induction"]},
        "loss_first_repeat": scores["loss_first_repeat"],
        "loss_second_repeat": scores["loss_second_repeat"],
        "seed": args.seed,
        "steps": args.steps,
        "eval_half_length": EVAL_HALF,
        "train_seconds": round(seconds, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    build_tokenizer().save_pretrained(args.out)
    (args.out / "circuit.json").write_text(json.dumps(circuit, indent=2) + "\n")
    write_readme(args.out, circuit)
    log(f"previous-token head L0H{prev_head} ({prev_score:.3f}), induction head L1H{ind_head} "
        f"({ind_score:.3f}); saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
