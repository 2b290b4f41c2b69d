"""Train the builtin SAE ``smollm2-135m-resid``: a TopK sparse autoencoder on SmolLM2-135M-Instruct's residual
stream at ``blocks.15.hook_resid_pre`` (the middle of its 30 layers), written in SAELens's disk format.

Text, all available offline: docstrings of the Python standard library that ships with the interpreter (module,
class and function docstrings of at least 200 characters, parsed with ``ast``, never imported). With
``--generated-fraction F`` (default 0, which made the shipped SAE) a fraction F of the sequences are instead the
model's own generations: SmolLM2 continues 64 varied English openers (stories, news, science, recipes, letters,
...) by sampling (temperature 0.9, top-p 0.95, seeded) with Hugging Face's KV-cached generate on a separate copy
of the dequantized GGUF weights; broader English, but slow on a busy CPU. Sequences are 128 tokens (BOS + 127);
the BOS position is left out of training and evaluation (its residual is an outlier that SAEs are not meant to
reconstruct).

Training: inputs scaled so their mean norm is sqrt(d_model) (the scale is folded back into the weights when
saving, so the file needs no normalization: ``normalize_activations = "none"``); decoder rows kept at unit norm;
b_dec initialised at the mean; Adam; an AuxK loss (Gao et al. 2024) on latents dead for the last 4 steps'
batches. Weights are saved in fp16.

Evaluation on held-out sequences (after reading the saved folder back with lens-mcp's own reader): L0, fraction
of variance explained, next-token loss with the SAE spliced in at every non-BOS position, against the clean
loss and against zero-ablating the residual there; the numbers go to ``stats.json`` and ``README.md`` next to
the weights.

Usage: ``python scripts/train_default_sae.py [--out DIR] [--tokens N] [--d-sae N] [--k N] [--epochs N]``.
Deterministic from ``--seed`` (up to CPU thread scheduling in matmuls).
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lens_mcp.limits import Limits  # noqa: E402
from lens_mcp.model_host import ModelHost  # noqa: E402
from lens_mcp.tools.features._sae_format import read_sae, write_sae  # noqa: E402

MODEL = "smollm2-135m"
LAYER = 15
HOOK = f"blocks.{LAYER}.hook_resid_pre"
DEFAULT_OUT = ROOT / "src" / "lens_mcp" / "builtin" / "smollm2_135m_resid"


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    """Docstrings of the standard library's .py files (tests and idlelib left out), in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).as_posix()
        if any(part in rel for part in ("test", "site-packages", "idlelib", "lib2to3", "turtledemo")):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    texts.append(doc)
    return texts


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


def model_generations(n_seqs: int, new_tokens: int, seed: int) -> list[str]:
    """SmolLM2's own continuations of OPENERS (sampled, seeded), with Hugging Face's KV-cached generate on a
    separately loaded copy of the dequantized GGUF weights (the bridge's copy is left alone)."""
    from lens_mcp.loading.gguf_cache import load_gguf
    from lens_mcp.loading.specs import smollm2_gguf_path

    path = smollm2_gguf_path()
    hf_model, tokenizer, _, _ = load_gguf(str(path.parent), path.name)
    hf_model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    texts: list[str] = []
    batch = 32
    for start in range(0, n_seqs, batch):
        prompts = [OPENERS[(start + i) % len(OPENERS)] for i in range(min(batch, n_seqs - start))]
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
        print(f"  generated {len(texts)}/{n_seqs} texts", flush=True)
    return texts


def token_sequences(bridge, texts: list[str], n_seqs: int, seq_len: int, seed: int) -> torch.Tensor:
    """n_seqs rows of BOS + (seq_len - 1) tokens of concatenated, shuffled docstrings."""
    rng = random.Random(seed)
    texts = texts[:]
    rng.shuffle(texts)
    tokenizer = bridge.tokenizer
    bos = tokenizer.bos_token_id
    stream: list[int] = []
    need = n_seqs * (seq_len - 1)
    for text in texts:
        stream += tokenizer.encode(text + "\n\n", add_special_tokens=False)
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise SystemExit(f"only {len(stream)} tokens of text, need {need}")
    body = torch.tensor(stream[:need]).view(n_seqs, seq_len - 1)
    return torch.cat([torch.full((n_seqs, 1), bos), body], dim=1)


@torch.no_grad()
def collect(bridge, tokens: torch.Tensor, batch: int) -> torch.Tensor:
    out = []
    for start in range(0, len(tokens), batch):
        _, cache = bridge.run_with_cache(tokens[start : start + batch], names_filter=[HOOK], stop_at_layer=LAYER + 1)
        out.append(cache[HOOK][:, 1:].reshape(-1, cache[HOOK].shape[-1]).float().clone())
        print(f"  activations {min(start + batch, len(tokens))}/{len(tokens)} sequences", flush=True)
    return torch.cat(out)


def train(x: torch.Tensor, d_sae: int, k: int, epochs: int, batch: int, lr: float, seed: int) -> dict:
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
    steps_since_fired = torch.zeros(d_sae)
    total_var = (x - x.mean(0)).pow(2).sum(-1).mean()
    k_aux = min(d_sae // 2, 4 * k)
    step = 0
    # Bound before the loop so the epoch report is defined even when an epoch holds no full batch.
    mse, aux, dead = torch.zeros(()), torch.zeros(()), torch.zeros(d_sae, dtype=torch.bool)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch + 1, batch):
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
            step += 1
        print(
            f"  epoch {epoch + 1}/{epochs}: step {step}, normalized mse {mse.item():.4f}, aux {aux.item():.4f}, "
            f"dead {int(dead.sum())}",
            flush=True,
        )
    return {name: p.detach() for name, p in params.items()}


@torch.no_grad()
def evaluate(bridge, sae, tokens: torch.Tensor, batch: int) -> dict:
    """L0, variance explained, and next-token loss clean / SAE spliced at non-BOS positions / zero-ablated."""
    sum_l0 = n_tok = 0.0
    sq_err = 0.0
    xs = []
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_pred = 0
    alive = torch.zeros(sae.d_sae, dtype=torch.bool)
    for start in range(0, len(tokens), batch):
        toks = tokens[start : start + batch]
        for mode in losses:

            def hook(resid, hook, mode=mode):
                nonlocal sum_l0, n_tok, sq_err
                if mode == "clean":
                    return resid
                body = resid[:, 1:]
                if mode == "zero":
                    resid[:, 1:] = 0.0
                    return resid
                x_hat, acts, _ = sae.reconstruct(body.float())
                sum_l0 += float((acts > 0).sum())
                n_tok += body.shape[0] * body.shape[1]
                sq_err += float((body.float() - x_hat).pow(2).sum())
                xs.append(body.reshape(-1, body.shape[-1]).float().clone())
                alive.logical_or_((acts > 0).reshape(-1, sae.d_sae).any(0))
                resid[:, 1:] = x_hat.to(resid.dtype)
                return resid

            logits = bridge.run_with_hooks(toks, fwd_hooks=[(HOOK, hook)])
            logprobs = logits[:, :-1].float().log_softmax(-1)
            nll = -logprobs.gather(-1, toks[:, 1:, None]).squeeze(-1)
            losses[mode] += float(nll.sum())
        n_pred += toks.shape[0] * (toks.shape[1] - 1)
        print(f"  evaluated {min(start + batch, len(tokens))}/{len(tokens)} sequences", flush=True)
    x = torch.cat(xs)
    total = float((x - x.mean(0)).pow(2).sum())
    clean, spliced, zero = (losses[m] / n_pred for m in ("clean", "spliced", "zero"))
    return {
        "l0": sum_l0 / n_tok,
        "variance_explained": 1 - sq_err / total,
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_zero_ablated": zero,
        "loss_increase": spliced - clean,
        "loss_recovered": (zero - spliced) / (zero - clean),
        "alive_latents_on_eval": int(alive.sum()),
        "eval_tokens": int(n_tok),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tokens", type=int, default=24_000, help="training activations (non-BOS tokens)")
    parser.add_argument("--eval-seqs", type=int, default=16)
    parser.add_argument("--generated-fraction", type=float, default=0.0, help="share of model-generated sequences")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--k", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    host = ModelHost(Limits())
    bridge = host.load(MODEL, device="cpu").bridge
    load_s = time.perf_counter() - started
    n_train = -(-args.tokens // (args.seq_len - 1))
    n_seqs = n_train + args.eval_seqs
    docstrings = stdlib_docstrings()
    generate_s = 0.0
    if args.generated_fraction > 0:
        n_generated = round(n_seqs * args.generated_fraction)
        t0 = time.perf_counter()
        generated = model_generations(n_generated + 8, args.seq_len, args.seed)
        generate_s = time.perf_counter() - t0
        parts = [
            token_sequences(bridge, generated, n_generated, args.seq_len, args.seed),
            token_sequences(bridge, docstrings, n_seqs - n_generated, args.seq_len, args.seed),
        ]
        tokens = torch.cat(parts)[torch.randperm(n_seqs, generator=torch.Generator().manual_seed(args.seed))]
    else:
        tokens = token_sequences(bridge, docstrings, n_seqs, args.seq_len, args.seed)
    train_tokens, eval_tokens = tokens[:n_train], tokens[n_train:]
    print(f"{len(docstrings)} docstrings; {n_train} training and {args.eval_seqs} held-out sequences", flush=True)

    t0 = time.perf_counter()
    x = collect(bridge, train_tokens, batch=16)
    collect_s = time.perf_counter() - t0
    mean_norm = float(x.norm(dim=-1).mean())
    scale = (x.shape[-1] ** 0.5) / mean_norm
    print(f"{len(x)} activations in {collect_s:.0f} s; mean norm {mean_norm:.2f}", flush=True)

    t0 = time.perf_counter()
    params = train(x * scale, args.d_sae, args.k, args.epochs, args.batch, args.lr, args.seed)
    train_s = time.perf_counter() - t0
    # fold the input scale into the weights: encode(x) of the file == encode(scale * x) of the trained SAE
    tensors = {
        "W_enc": (params["W_enc"] * scale).half(),
        "b_enc": params["b_enc"].half(),
        "W_dec": (params["W_dec"] / scale).half(),
        "b_dec": (params["b_dec"] / scale).half(),
    }
    cfg = {
        "architecture": "topk",
        "d_in": int(x.shape[-1]),
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
            "dataset_path": "Python standard library docstrings (offline)",
            "exclude_special_tokens": True,
            "trained_by": "lens-mcp scripts/train_default_sae.py",
        },
    }
    write_sae(args.out, tensors, cfg)

    t0 = time.perf_counter()
    sae = read_sae(args.out, source="builtin")
    stats = evaluate(bridge, sae, eval_tokens, batch=8)
    eval_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.name in ("cfg.json", "sae_weights.safetensors"))
    stats.update(
        {
            "hook_name": HOOK,
            "d_in": int(x.shape[-1]),
            "d_sae": args.d_sae,
            "k": args.k,
            "train_tokens": int(len(x)),
            "epochs": args.epochs,
            "size_bytes": size,
            "seconds_model_load": round(load_s, 1),
            "seconds_generate_text": round(generate_s, 1),
            "seconds_collect_activations": round(collect_s, 1),
            "seconds_train": round(train_s, 1),
            "seconds_evaluate": round(eval_s, 1),
            "torch_threads": torch.get_num_threads(),
            "corpus": "Python standard-library docstrings"
            + (f" and SmolLM2's own generations ({args.generated_fraction:.0%})" if args.generated_fraction else ""),
        }
    )
    stats = {key: (round(v, 4) if isinstance(v, float) else v) for key, v in stats.items()}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    (args.out / "README.md").write_text(
        "# smollm2-135m-resid\n\n"
        f"TopK SAE (k={args.k}, d_sae={args.d_sae}) on SmolLM2-135M-Instruct `{HOOK}`, SAELens disk format, fp16 "
        f"({size / 1e6:.1f} MB). Trained by `scripts/train_default_sae.py` on {len(x)} residual vectors "
        "(BOS left out) of {stats['corpus']}.\n\n"
        "Held-out quality (" + str(stats["eval_tokens"]) + " tokens): "
        f"L0 {stats['l0']}, variance explained {stats['variance_explained']}, next-token loss "
        f"{stats['loss_clean']} clean -> {stats['loss_spliced']} spliced (+{stats['loss_increase']} nats; "
        f"zero-ablation {stats['loss_zero_ablated']}, loss recovered {stats['loss_recovered']}).\n\n"
        f"Cost: text generation {stats['seconds_generate_text']} s, activations "
        f"{stats['seconds_collect_activations']} s, "
        f"training {stats['seconds_train']} s on "
        f"{stats['torch_threads']} CPU threads. See stats.json.\n",
        encoding="utf-8",
    )
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
