"""Temporary hyperparameter sweep (GPU) for the toy induction model. Not to be committed."""
import json, math, os, subprocess, sys, time
import torch
import torch.nn.functional as F

CONFIGS = {
    "i05":        dict(mode="wide", lo=6, hi=23, lr=1e-3, init=0.05),
    "i08":        dict(mode="wide", lo=6, hi=23, lr=1e-3, init=0.08),
    "i12":        dict(mode="wide", lo=6, hi=23, lr=1e-3, init=0.12),
    "i08u":       dict(mode="wide", lo=6, hi=23, lr=1e-3, init=0.08, tied=False),
    "i12u":       dict(mode="wide", lo=6, hi=23, lr=1e-3, init=0.12, tied=False),
    "i08lr2":     dict(mode="wide", lo=6, hi=23, lr=2e-3, init=0.08),
    "i08lo12":    dict(mode="wide", lo=12, hi=23, lr=1e-3, init=0.08),
}
STEPS = int(os.environ.get("STEPS", 2500))


def run(name, seed, cfg, out):
    from transformers import GPT2Config, GPT2LMHeadModel
    import transformers
    transformers.logging.set_verbosity_error()
    dev = os.environ.get("DEV", "cuda")
    torch.manual_seed(seed)
    g = torch.Generator(device=dev).manual_seed(seed)
    V, F0, T = 256, 2, 46
    config = GPT2Config(vocab_size=V, n_positions=64, n_embd=128, n_layer=2, n_head=4, n_inner=128,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        initializer_range=cfg.get("init", 0.02), tie_word_embeddings=cfg.get("tied", True))
    model = GPT2LMHeadModel(config).to(dev)
    for b in model.transformer.h:
        with torch.no_grad():
            for p in b.mlp.parameters():
                p.zero_()
        for p in [*b.mlp.parameters(), *b.ln_2.parameters()]:
            p.requires_grad_(False)
    if cfg.get("sin"):
        pos = torch.arange(64)[:, None]; i = torch.arange(0, 128, 2)
        ang = pos / (10000 ** (i / 128)); pe = torch.zeros(64, 128); pe[:, 0::2] = ang.sin(); pe[:, 1::2] = ang.cos()
        with torch.no_grad():
            model.transformer.wpe.weight.copy_(pe * cfg["sin"])
    B = cfg.get("batch", 64)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=cfg.get("wd", 0.01))
    ar = torch.arange(T, device=dev)

    def batch():
        base = torch.randint(F0, V, (B, T), generator=g, device=dev)
        if cfg["mode"] == "batchL":
            L = int(torch.randint(cfg["lo"], cfg["hi"] + 1, (1,), generator=g, device=dev))
            h = base[:, :L]
            seq = torch.cat([h, h], 1)
        else:
            L = torch.randint(cfg["lo"], cfg["hi"] + 1, (B, 1), generator=g, device=dev)
            idx = torch.where(ar[None] >= T - L, ar[None] - L, ar[None].expand(B, T))
            seq = base.gather(1, idx)
            if cfg.get("echo"):
                is_echo = torch.rand(B, generator=g, device=dev) < cfg["echo"]
                src = ar[None].expand(B, T).clone()
                flip = torch.rand(B, T, generator=g, device=dev) < 0.5
                e = base.clone()
                for j in range(2, T):
                    e[:, j] = torch.where(flip[:, j], e[:, j - 2], e[:, j])
                seq = torch.where(is_echo[:, None], e, seq)
        return torch.cat([torch.zeros(B, 1, dtype=torch.long, device=dev), seq], 1)

    eg = torch.Generator(device=dev).manual_seed(12345)
    EL = 20
    eh = torch.randint(F0, V, (256, EL), generator=eg, device=dev)
    etok = torch.cat([torch.zeros(256, 1, dtype=torch.long, device=dev), eh, eh], 1)

    def measure():
        model.eval()
        model.set_attn_implementation("eager")
        with torch.no_grad():
            o = model(etok, output_attentions=True)
        model.set_attn_implementation("sdpa")
        model.train()
        lp = F.log_softmax(o.logits.float(), -1)
        nll = -lp[:, :-1].gather(-1, etok[:, 1:, None])[..., 0]
        q = torch.arange(EL + 1, 2 * EL + 1, device=dev)
        pats = o.attentions
        idx = torch.arange(1, 2 * EL + 1, device=dev)
        prev = pats[0][:, :, idx, idx - 1].mean((0, 2))
        ind = pats[1][:, :, q, q - EL + 1].mean((0, 2))
        return nll[:, 1:EL].mean().item(), nll[:, EL + 1:2 * EL].mean().item(), prev.tolist(), ind.tolist()

    t0 = time.time()
    hit = None
    for step in range(1, STEPS + 1):
        tok = batch()
        loss = model(tok, labels=tok).loss
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if step % 100 == 0:
            f, r, prev, ind = measure()
            line = (f"{name} s{seed} {step} {time.time()-t0:.0f}s first {f:.2f} rep {r:.3f} "
                    f"prev {[round(x, 2) for x in prev]} ind {[round(x, 2) for x in ind]}")
            with open(out, "a") as fh:
                fh.write(line + "\n")
            if hit is None and r < 0.3 and max(prev) > 0.5 and max(ind) > 0.5:
                hit = step
            if hit is not None and step >= hit + 300:
                break
    with open(out, "a") as fh:
        fh.write(f"DONE {name} s{seed} hit={hit} last: {line}\n")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        name, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        run(name, seed, CONFIGS[name], out)
    else:
        out = os.path.join(os.environ.get("OUT", "/tmp"), "sweep.log")
        procs = [subprocess.Popen([sys.executable, __file__, n, str(s), out])
                 for n in CONFIGS for s in (0, 1, 2)]
        for p in procs:
            p.wait()
        print("".join(l for l in open(out) if l.startswith("DONE")))
