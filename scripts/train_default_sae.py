"""Train the builtin SAE ``smollm2-135m-resid``: a TopK sparse autoencoder on SmolLM2-135M-Instruct's residual
stream at ``blocks.15.hook_resid_pre`` (the middle of its 30 layers), written in SAELens's disk format.

Text, all offline, read through lens-mcp's own corpus stores (tools/features/_corpus.py: tokenized once into a
memory-mapped store whose every tenth document is held out): rows of BOS + 127 contiguous tokens of the builtin
corpora's training splits, ``kjv-bible`` (English prose; the rest of the mix) and ``python-stdlib`` (code and
docstrings; ``--code-fraction``) and SmolLM2's own generations for modern English (``--generated-fraction``):
the model continues the OPENERS below (every fourth one is kept for evaluation, never trained on) by sampling
(temperature 0.9, top-p 0.95, seeded) with Hugging Face's KV-cached generate, 128 texts per batch (about 150
tokens/s on these 2 CPU cores; the held-out openers' generations are always made, for evaluation). Rows
are drawn in a seeded random order. The BOS position is left out of training and evaluation (its residual is an
outlier that SAEs are not meant to reconstruct).

Activations are read with the dequantized Hugging Face copy of the weights, stopped at block 15's input (about
1.5x faster than the bridge on CPU); the script first checks that they equal the bridge's ``blocks.15.hook_resid_pre``
on two rows.

Training: inputs scaled so their mean norm is sqrt(d_model) (the scale is folded back into the weights when
saving, so the file needs no normalization: ``normalize_activations = "none"``); decoder rows kept at unit norm;
b_dec initialised at the mean; Adam, the learning rate decayed linearly to 0 over the last fifth of the steps; an
AuxK loss (Gao et al. 2024) on latents dead for the last 4 steps' batches. Weights are saved in fp16.

Evaluation after reading the saved folder back with lens-mcp's own reader, on held-out text of each source: the
corpora's held-out splits (prose and code apart), generations of the held-out openers, and the sentence "The
Eiffel Tower is in the city of". Per source: L0 and variance explained over ``--eval-tokens`` held-out tokens
(generations: ``--eval-generated-seqs`` rows; encoder only), and next-token loss on the bridge with the SAE spliced in at every non-BOS position, against the
clean loss and against zero-ablating the residual there, over ``--loss-seqs`` rows; dead latents = latents that
fire on none of the held-out tokens of all sources together. The numbers go to ``stats.json`` and ``README.md``
next to the weights.

Usage: ``python scripts/train_default_sae.py [--out DIR] [--tokens N] [--code-fraction F]
[--generated-fraction F] [--d-sae N] [--k N] [--epochs N] [--seed N] ...`` (``--help`` lists them all); the defaults
made the shipped SAE. Deterministic from ``--seed`` (up to CPU thread scheduling in matmuls).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lens_mcp.limits import Limits  # noqa: E402
from lens_mcp.model_host import ModelHost  # noqa: E402
from lens_mcp.tools.features._corpus import TokenStore, read_corpus, token_store  # noqa: E402
from lens_mcp.tools.features._sae_format import SAE, read_sae, write_sae  # noqa: E402

MODEL = "smollm2-135m"
LAYER = 15
HOOK = f"blocks.{LAYER}.hook_resid_pre"
DEFAULT_OUT = ROOT / "src" / "lens_mcp" / "builtin" / "smollm2_135m_resid"
EIFFEL = "The Eiffel Tower is in the city of"
PROSE, CODE = "kjv-bible", "python-stdlib"

OPENERS = [
    "Once upon a time, in a small village by the sea,",
    "The history of the Roman Empire",
    "Scientists have discovered a new species of",
    "To make a good loaf of bread, you need",
    "Dear Sarah, I hope this letter finds you well.",
    "The weather forecast for tomorrow",
    "In 1969, the first humans",
    "My favorite thing about summer is",
    "The stock market fell sharply today after",
    "How does photosynthesis work?",
    "The Eiffel Tower is in the city of",
    "She opened the door and saw",
    "Here are five tips for staying healthy:",
    "The French Revolution began in",
    "When I was a child, my grandmother",
    "The new smartphone features a",
    "Climate change is affecting",
    "The football match ended in a",
    "Write a short poem about the moon.",
    "The capital of Japan is",
    "In the middle of the forest there was",
    "The recipe calls for two cups of flour,",
    "Our company is looking for a",
    "The museum's new exhibition",
    "Why is the sky blue?",
    "He picked up the guitar and",
    "The president announced on Monday that",
    "Learning a new language can be",
    "The train was late again, so",
    "A healthy breakfast should include",
    "The detective looked at the evidence and",
    "Water boils at",
    "The best way to learn mathematics is",
    "In the year 2050, cities will",
    "The old man sat on the bench and",
    "The human heart has four chambers:",
    "Thank you for your order. Your package",
    "The river flows through the valley",
    "Music has the power to",
    "The students were excited because",
    "According to the report, unemployment",
    "The cat jumped onto the table and",
    "Mount Everest is the tallest",
    "I think the most important invention is",
    "The restaurant serves traditional",
    "During the Second World War,",
    "The doctor told him that",
    "Electric cars are becoming popular because",
    "The library will be closed on",
    "Shakespeare wrote many plays, including",
    "The children built a sandcastle",
    "Bees are important for the environment because",
    "The meeting has been moved to",
    "She said, \"I can't believe",
    "The population of India",
    "After the storm, the village",
    "The game developers announced",
    "A balanced diet contains",
    "The spaceship slowly approached",
    "My brother and I decided to",
    "The price of gold rose",
    "The professor explained that",
    "On the first day of school,",
    "The painting shows a woman",
]


def held_out_opener(index: int) -> bool:
    return index % 4 == 3


def model_generations(
    hf_model: Any, tokenizer: Any, openers: list[str], n_texts: int, new_tokens: int, seed: int
) -> list[str]:
    """SmolLM2's own continuations of `openers` (cycled; sampled, seeded), with Hugging Face's KV-cached generate."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    texts: list[str] = []
    batch = 128  # a decoding step reads all the weights: large batches cost little more per step
    for start in range(0, n_texts, batch):
        prompts = [openers[(start + i) % len(openers)] for i in range(min(batch, n_texts - start))]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = hf_model.generate(
                **encoded,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=True,
                temperature=0.9,
                top_p=0.95,
                pad_token_id=tokenizer.pad_token_id,
            )
        for prompt, row in zip(prompts, out[:, encoded["input_ids"].shape[1] :], strict=True):
            texts.append(prompt + tokenizer.decode(row, skip_special_tokens=True))
        print(f"  generated {len(texts)}/{n_texts} texts", flush=True)
    return texts


def with_bos(body: torch.Tensor, bos: int) -> torch.Tensor:
    return torch.cat([torch.full((len(body), 1), bos, dtype=torch.long), body.long()], dim=1)


def store_rows(split: np.ndarray, n_rows: int, body: int, gen: torch.Generator) -> torch.Tensor:
    """n_rows random, non-overlapping rows of `body` contiguous tokens of a store's split (seeded)."""
    available = len(split) // body
    if n_rows > available:
        raise SystemExit(f"asked for {n_rows} rows of {body} tokens, the split holds {available}")
    picks = torch.randperm(available, generator=gen)[:n_rows].sort().values.numpy()
    rows = np.stack([np.asarray(split[i * body : (i + 1) * body], dtype=np.int64) for i in picks])
    return torch.from_numpy(rows)


def text_rows(tokenizer: Any, texts: list[str], n_rows: int, body: int) -> torch.Tensor:
    """n_rows rows of `body` tokens of the texts, concatenated (each text ends in a blank line)."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer.encode(text + "\n\n", add_special_tokens=False)
    if len(stream) < n_rows * body:
        raise SystemExit(f"only {len(stream)} tokens of generated text, need {n_rows * body}")
    return torch.tensor(stream[: n_rows * body]).view(n_rows, body)


class _Stop(Exception):
    pass


@torch.no_grad()
def collect(hf_model: Any, tokens: torch.Tensor, batch: int, label: str) -> torch.Tensor:
    """The input of decoder layer LAYER (= blocks.LAYER.hook_resid_pre) at every non-BOS position, fp32; the
    forward pass stops there."""
    grabbed: list[torch.Tensor] = []

    def grab(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        grabbed.append(hidden[:, 1:].reshape(-1, hidden.shape[-1]).float().clone())
        raise _Stop

    handle = hf_model.model.layers[LAYER].register_forward_pre_hook(grab, with_kwargs=True)
    started = time.perf_counter()
    try:
        for start in range(0, len(tokens), batch):
            try:
                hf_model.model(input_ids=tokens[start : start + batch])
            except _Stop:
                pass
            done = min(start + batch, len(tokens))
            if done == len(tokens) or (start // batch) % 10 == 0:
                rate = done * (tokens.shape[1] - 1) / (time.perf_counter() - started)
                print(f"  {label}: activations of {done}/{len(tokens)} rows ({rate:.0f} tokens/s)", flush=True)
    finally:
        handle.remove()
    return torch.cat(grabbed)


def train(
    x: torch.Tensor, d_sae: int, k: int, epochs: int, batch: int, lr: float, seed: int
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n, d = x.shape
    W_dec = torch.randn(d_sae, d, generator=gen)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = {
        "W_dec": W_dec.requires_grad_(),
        "W_enc": W_dec.detach().T.clone().requires_grad_(),
        "b_enc": torch.zeros(d_sae, requires_grad=True),
        "b_dec": x.mean(0).clone().requires_grad_(),
    }
    opt = torch.optim.Adam(params.values(), lr=lr, betas=(0.9, 0.999))
    steps_per_epoch = n // batch
    total_steps = epochs * steps_per_epoch
    decay_from = int(0.8 * total_steps)
    steps_since_fired = torch.zeros(d_sae)
    total_var = (x - x.mean(0)).pow(2).sum(-1).mean()
    k_aux = min(d_sae // 2, 4 * k)
    step = 0
    started = time.perf_counter()
    # Bound before the loop so the epoch report is defined even when an epoch holds no full batch.
    mse, aux, dead = torch.zeros(()), torch.zeros(()), torch.zeros(d_sae, dtype=torch.bool)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        sum_mse = 0.0
        for start in range(0, steps_per_epoch * batch, batch):
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (total_steps - step) / max(1, total_steps - decay_from))
            xb = x[perm[start : start + batch]]
            pre = (xb - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
            values, indices = pre.topk(k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
            x_hat = acts @ params["W_dec"] + params["b_dec"]
            err = xb - x_hat
            mse = err.pow(2).sum(-1).mean() / total_var
            fired = (acts > 0).any(0)
            steps_since_fired = torch.where(fired, torch.zeros_like(steps_since_fired), steps_since_fired + 1)
            dead = steps_since_fired > 4
            aux = torch.zeros(())
            if dead.any():
                pre_dead = pre.masked_fill(~dead, float("-inf"))
                kd = min(k_aux, int(dead.sum()))
                dv, di = pre_dead.topk(kd, dim=-1)
                aux_acts = torch.zeros_like(pre).scatter(-1, di, dv.relu())
                err_hat = aux_acts @ params["W_dec"]
                aux = (err.detach() - err_hat).pow(2).sum(-1).mean() / total_var
            loss = mse + aux / 32
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                params["W_dec"] /= params["W_dec"].norm(dim=-1, keepdim=True)
            sum_mse += float(mse)
            step += 1
        print(
            f"  epoch {epoch + 1}/{epochs}: step {step}, mean normalized mse {sum_mse / max(1, steps_per_epoch):.4f}, "
            f"last aux {aux.item():.4f}, dead {int(dead.sum())}, {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return {name: p.detach() for name, p in params.items()}


@torch.no_grad()
def reconstruction(sae: SAE, x: torch.Tensor, batch: int = 4096) -> tuple[dict[str, float], torch.Tensor]:
    """L0 and variance explained of `x` [n, d_in], and which latents fired."""
    sum_l0 = sq_err = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        x_hat, acts, _ = sae.reconstruct(xb)
        sum_l0 += float((acts > 0).sum())
        sq_err += float((xb - x_hat).pow(2).sum())
        fired |= (acts > 0).any(0)
    total = float((x - x.mean(0)).pow(2).sum())
    return {"l0": sum_l0 / len(x), "variance_explained": 1 - sq_err / total, "tokens": len(x)}, fired


@torch.no_grad()
def losses(bridge: Any, sae: SAE, tokens: torch.Tensor, batch: int, label: str) -> dict[str, float]:
    """Next-token loss clean / SAE spliced at non-BOS positions / residual zero-ablated there."""
    totals = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_pred = 0
    for start in range(0, len(tokens), batch):
        toks = tokens[start : start + batch]
        for mode in totals:

            def hook(resid: torch.Tensor, hook: Any, mode: str = mode) -> torch.Tensor:
                if mode == "zero":
                    resid[:, 1:] = 0.0
                elif mode == "spliced":
                    x_hat, _, _ = sae.reconstruct(resid[:, 1:].float())
                    resid[:, 1:] = x_hat.to(resid.dtype)
                return resid

            logits = bridge.run_with_hooks(toks, fwd_hooks=[(HOOK, hook)])
            logprobs = logits[:, :-1].float().log_softmax(-1)
            totals[mode] += float(-logprobs.gather(-1, toks[:, 1:, None]).sum())
        n_pred += toks.shape[0] * (toks.shape[1] - 1)
        print(f"  {label}: losses of {min(start + batch, len(tokens))}/{len(tokens)} rows", flush=True)
    clean, spliced, zero = (totals[m] / n_pred for m in ("clean", "spliced", "zero"))
    return {
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_zero_ablated": zero,
        "loss_increase": spliced - clean,
        "loss_recovered": (zero - spliced) / (zero - clean),
        "loss_tokens": n_pred,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tokens", type=int, default=250_000, help="training activations (non-BOS tokens)")
    parser.add_argument("--code-fraction", type=float, default=0.2, help="share of python-stdlib rows")
    parser.add_argument(
        "--generated-fraction", type=float, default=0.3, help="share of model-generated rows (~150 tokens/s here)"
    )
    parser.add_argument(
        "--eval-generated-seqs", type=int, default=16, help="held-out rows of generations of the held-out openers"
    )
    parser.add_argument("--eval-tokens", type=int, default=8_128, help="held-out tokens per source for L0/VE/dead")
    parser.add_argument("--loss-seqs", type=int, default=16, help="held-out rows per source for the losses")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder keeping the training activations and held-out generations between runs (keyed by the data "
        "arguments), so that a rerun with other SAE arguments skips generation and collection",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (on a busy shared CPU 1 was faster than 2)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    host = ModelHost(Limits())
    bridge = host.load(MODEL, device="cpu").bridge
    from lens_mcp.loading.gguf_cache import load_gguf
    from lens_mcp.loading.specs import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    hf_model, tokenizer, _, _ = load_gguf(str(gguf.parent), gguf.name)
    hf_model.eval()
    seconds["model_load"] = time.perf_counter() - started
    body = args.seq_len - 1
    bos = int(bridge.tokenizer.bos_token_id)

    # the Hugging Face copy's layer-15 input is the bridge's hook: checked on two rows before anything else
    t0 = time.perf_counter()
    stores: dict[str, TokenStore] = {
        name: token_store(bridge.tokenizer, bridge.cfg.d_vocab, read_corpus(name)) for name in (PROSE, CODE)
    }
    seconds["tokenize_corpora"] = time.perf_counter() - t0
    probe = with_bos(store_rows(stores[PROSE].train, 2, body, torch.Generator().manual_seed(1)), bos)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(probe, names_filter=[HOOK], stop_at_layer=LAYER + 1)
    ours, theirs = cache[HOOK][:, 1:].reshape(-1, cache[HOOK].shape[-1]).float(), collect(hf_model, probe, 2, "check")
    relative = float((ours - theirs).norm() / ours.norm())
    if relative > 1e-4:
        raise SystemExit(f"the Hugging Face copy's layer-{LAYER} input differs from {HOOK} (relative {relative:.2e})")
    print(
        f"checked: Hugging Face layer-{LAYER} input == bridge {HOOK} (relative difference {relative:.1e})", flush=True
    )

    # training rows: the corpora's training splits and the generations of the training openers
    n_train = -(-args.tokens // body)
    n_generated = round(n_train * args.generated_fraction)
    n_code = round(n_train * args.code_fraction)
    n_prose = n_train - n_generated - n_code
    gen = torch.Generator().manual_seed(args.seed)
    parts = {
        PROSE: store_rows(stores[PROSE].train, n_prose, body, gen),
        CODE: store_rows(stores[CODE].train, n_code, body, gen),
    }
    train_openers = [o for i, o in enumerate(OPENERS) if not held_out_opener(i)]
    eval_openers = [o for i, o in enumerate(OPENERS) if held_out_opener(i)]
    n_eval_rows = -(-args.eval_tokens // body)
    data_args = ("tokens", "code_fraction", "generated_fraction", "eval_generated_seqs", "seq_len", "seed")
    key = hashlib.sha256(json.dumps([getattr(args, name) for name in data_args]).encode()).hexdigest()[:16]
    cached = args.cache / f"activations-{key}.pt" if args.cache is not None else None
    if cached is not None and cached.is_file():
        saved = torch.load(cached)
        x, held_texts, train_rows = saved["x"], saved["held_texts"], saved["train_rows"]
        seconds.update(saved["seconds"])
        print(f"read {len(x)} activations from {cached}", flush=True)
    else:
        t0 = time.perf_counter()
        if n_generated:
            texts = model_generations(hf_model, tokenizer, train_openers, n_generated + 4, body, args.seed)
            parts["generated"] = text_rows(bridge.tokenizer, texts, n_generated, body)
        held_texts = model_generations(
            hf_model, tokenizer, eval_openers, args.eval_generated_seqs + 4, body, args.seed + 1
        )
        seconds["generate_text"] = time.perf_counter() - t0
        train_tokens = with_bos(torch.cat(list(parts.values())), bos)
        train_rows = {name: len(rows) for name, rows in parts.items()}
        print("training rows: " + json.dumps(train_rows), flush=True)
        t0 = time.perf_counter()
        x = collect(hf_model, train_tokens, 16, "train")
        seconds["collect_activations"] = time.perf_counter() - t0
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            keep = {"generate_text": seconds["generate_text"], "collect_activations": seconds["collect_activations"]}
            torch.save({"x": x, "held_texts": held_texts, "train_rows": train_rows, "seconds": keep}, cached)
    mean_norm = float(x.norm(dim=-1).mean())
    scale = (x.shape[-1] ** 0.5) / mean_norm
    print(f"{len(x)} activations in {seconds['collect_activations']:.0f} s; mean norm {mean_norm:.2f}", flush=True)

    t0 = time.perf_counter()
    params = train(x * scale, args.d_sae, args.k, args.epochs, args.batch, args.lr, args.seed)
    seconds["train"] = time.perf_counter() - t0
    n_x = len(x)
    del x
    # fold the input scale into the weights: encode(x) of the file == encode(scale * x) of the trained SAE
    tensors = {
        "W_enc": (params["W_enc"] * scale).half(),
        "b_enc": params["b_enc"].half(),
        "W_dec": (params["W_dec"] / scale).half(),
        "b_dec": (params["b_dec"] / scale).half(),
    }
    cfg = {
        "architecture": "topk",
        "d_in": int(tensors["W_enc"].shape[0]),
        "d_sae": args.d_sae,
        "k": args.k,
        "dtype": "float16",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "reshape_activations": "none",
        "metadata": {
            "model_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "hook_name": HOOK,
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": args.seq_len,
            "dataset_path": "lens-mcp builtin corpora kjv-bible and python-stdlib (training splits), and SmolLM2's "
            "own generations",
            "exclude_special_tokens": True,
            "trained_by": "lens-mcp scripts/train_default_sae.py",
        },
    }
    write_sae(args.out, tensors, cfg)

    # held-out evaluation, per source
    t0 = time.perf_counter()
    sae = read_sae(args.out, source="builtin")
    eval_gen = torch.Generator().manual_seed(args.seed + 1)
    held = {
        PROSE: with_bos(store_rows(stores[PROSE].held_out, n_eval_rows, body, eval_gen), bos),
        CODE: with_bos(store_rows(stores[CODE].held_out, n_eval_rows, body, eval_gen), bos),
        "generated": with_bos(text_rows(bridge.tokenizer, held_texts, args.eval_generated_seqs, body), bos),
        "eiffel": bridge.to_tokens(EIFFEL).cpu(),
    }
    results: dict[str, dict[str, float]] = {}
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    n_held = 0
    for name, rows in held.items():
        acts = collect(hf_model, rows, 16, f"held-out {name}")
        results[name], fired_here = reconstruction(sae, acts)
        if name != "eiffel":
            fired |= fired_here
            n_held += len(acts)
        results[name].update(losses(bridge, sae, rows[: args.loss_seqs], 8, f"held-out {name}"))
        print(f"  {name}: " + json.dumps({key: round(v, 4) for key, v in results[name].items()}), flush=True)
    seconds["evaluate"] = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.name in ("cfg.json", "sae_weights.safetensors"))
    stats: dict[str, Any] = {
        "hook_name": HOOK,
        "d_in": cfg["d_in"],
        "d_sae": args.d_sae,
        "k": args.k,
        "held_out": {name: {key: round(v, 4) for key, v in r.items()} for name, r in results.items()},
        "dead_latents": int((~fired).sum()),
        "dead_fraction": round(float((~fired).float().mean()), 4),
        "dead_over_tokens": n_held,
        "train_tokens": n_x,
        "train_rows": train_rows,
        "epochs": args.epochs,
        "args": {key: v for key, v in vars(args).items() if key not in ("out", "cache")},
        "size_bytes": size,
        "seconds": {key: round(v, 1) for key, v in seconds.items()},
        "seconds_total": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    (args.out / "README.md").write_text(folder_readme(stats), encoding="utf-8")
    print(json.dumps(stats, indent=2))


def folder_readme(stats: dict[str, Any]) -> str:
    rows = stats["train_rows"]
    lines = [
        "# smollm2-135m-resid",
        "",
        f"TopK SAE (k={stats['k']}, d_sae={stats['d_sae']}) on SmolLM2-135M-Instruct `{HOOK}`, SAELens disk format, "
        f"fp16 ({stats['size_bytes'] / 1e6:.1f} MB). Trained by `scripts/train_default_sae.py` (defaults) on "
        f"{stats['train_tokens']} residual vectors (BOS left out, {stats['epochs']} epochs): rows of 127 tokens, "
        f"{rows.get(PROSE, 0)} of the kjv-bible corpus, {rows.get(CODE, 0)} of python-stdlib and "
        f"{rows.get('generated', 0)} of SmolLM2's own generations (training splits and training openers only).",
        "",
        "Held-out quality (variance explained and L0 over the tokens shown; losses over `loss_tokens` predictions, "
        "the SAE spliced in at every non-BOS position; loss recovered against zero-ablating the residual there):",
        "",
        "| Held-out text | tokens | L0 | variance explained | loss clean | spliced | zero-ablated | recovered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in stats["held_out"].items():
        lines.append(
            f"| {name} | {r['tokens']} | {r['l0']} | {r['variance_explained']} | {r['loss_clean']} | "
            f"{r['loss_spliced']} | {r['loss_zero_ablated']} | {r['loss_recovered']} |"
        )
    s = stats["seconds"]
    lines += [
        "",
        f"Dead latents (no firing on {stats['dead_over_tokens']} held-out tokens of the three sources): "
        f"{stats['dead_latents']} ({stats['dead_fraction']:.1%}).",
        "",
        f"Cost on {stats['torch_threads']} CPU threads: text generation {s['generate_text']} s, activations "
        f"{s['collect_activations']} s, training {s['train']} s, evaluation {s['evaluate']} s; "
        f"{stats['seconds_total']} s in all. See stats.json.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
