"""`make gpu-check`: lens-mcp on a CUDA device against the CPU, and in reduced precision against fp32.

On a machine with CUDA: a ~1B model with Llama-3.2-1B's shape and random weights is built here from its config
(weights cannot travel to that machine), saved with save_pretrained and loaded as a user's folder; every check
runs on the GPU and on the CPU, and the numbers must agree within 1e-3 (fp32). Then bf16 and fp16 on the GPU,
their largest error against fp32 stated per tool, and the memory the GPU reports for planning batches.
Without CUDA (CI), the CPU half: the default model in fp32 against bf16 on the CPU, with the same table.

    .venv/bin/python scripts/gpu_check.py [--size 1b|small] [--out gpu-check.json]

Prints a table; exit status 1 when a device result differs from the CPU's beyond 1e-3.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
ANSWER, WRONG = " Mary", " John"
SHAPES: dict[str, dict[str, Any]] = {  # Llama-3.2-1B's shape, and a small one for a quick run
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},
    "small": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 2},
}  # fmt: skip
TOLERANCE = 1e-3


def checks(layers: int) -> dict[str, Callable[[Any], Any]]:
    from lens_mcp.tools.causal.attribution_patch import attribution_patch
    from lens_mcp.tools.causal.patch_sweep import patch_sweep
    from lens_mcp.tools.causal.path_patch import path_patch
    from lens_mcp.tools.circuits.edge_attribution import edge_attribution
    from lens_mcp.tools.reading.head_attribution import head_attribution
    from lens_mcp.tools.reading.logit_lens import logit_lens

    pair = (CLEAN, CORRUPTED, ANSWER, WRONG)
    late = [list(range(layers // 2, layers))]
    return {
        "logit_lens": lambda tc: logit_lens(tc, CLEAN, answer=ANSWER),
        "head_attribution": lambda tc: head_attribution(tc, CLEAN, ANSWER, WRONG),
        "patch_sweep resid_pre": lambda tc: patch_sweep(tc, *pair, component="resid_pre"),
        "patch_sweep heads": lambda tc: patch_sweep(tc, *pair, component="heads", layers=late[0]),
        "path_patch": lambda tc: path_patch(tc, *pair, receivers=[[layers - 1, 0]], receiver_input="q"),
        "attribution_patch": lambda tc: attribution_patch(tc, *pair, component="heads"),
        "edge_attribution": lambda tc: edge_attribution(tc, *pair, verify_top=0),
    }


def numbers(value: Any, skip: frozenset[str] = frozenset({"seconds", "throughput", "cost", "device"})) -> list[float]:
    """Every measured value of a result (its floats), in order; timing and cost fields left out."""
    if isinstance(value, dict):
        return [n for k, v in value.items() if k not in skip for n in numbers(v, skip)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v, skip)]
    if isinstance(value, float):  # ints are ids, positions and counts: compared by the device check only as floats
        return [value]
    return []


def largest_error(got: list[float] | str, want: list[float] | str) -> float | str:
    """The largest |a - b| / max(1, |b|) over matching numbers (inf when the shapes differ); a refusal as such."""
    if isinstance(got, str) or isinstance(want, str):
        return got if isinstance(got, str) else f"fp32 {want}"
    if len(got) != len(want):
        return math.inf
    return max((abs(a - b) / max(1.0, abs(b)) for a, b in zip(got, want, strict=True)), default=0.0)


def run_all(spec: str, device: str, dtype: str, layers: int) -> dict[str, tuple[list[float] | str, float]]:
    """Each check's numbers and seconds; a check the tool refuses in this dtype gives its message instead."""
    from lens_mcp.errors import LensError
    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost
    from lens_mcp.tools.core.context import ToolContext

    host = ModelHost(Limits(max_call_seconds=3600))
    host.load(spec, device=device, dtype=dtype)
    found: dict[str, tuple[list[float] | str, float]] = {}
    with host.use() as model:
        computed = {str(parameter.dtype).removeprefix("torch.") for parameter in model.bridge.parameters()}
        if computed != {dtype}:
            raise SystemExit(f"asked for {dtype} on {device}, the model computes in {', '.join(sorted(computed))}")
        tc = ToolContext(model, host.limits)
        for name, call in checks(layers).items():
            started = time.perf_counter()
            try:
                outcome: list[float] | str = numbers(call(tc).model_dump(mode="json"))
            except LensError as exc:
                outcome = f"refused: {str(exc)[:90]}"
            found[name] = (outcome, time.perf_counter() - started)
    return found


def build_model(size: str, folder: Path) -> str:
    """A random-weight Llama of `size` with the default model's tokenizer, saved as a user's folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lens_mcp.limits import Limits
    from lens_mcp.model_host import ModelHost

    host = ModelHost(Limits())
    host.load("smollm2-135m", device="cpu")
    assert host.model is not None
    tokenizer = host.model.bridge.tokenizer
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, **SHAPES[size],
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default=None, help="default: 1b with CUDA, else none")
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    print(f"torch {torch.__version__}; device: {torch.cuda.get_device_name() if cuda else 'CPU only (no CUDA)'}")
    with tempfile.TemporaryDirectory() as scratch:
        size = args.size or ("1b" if cuda else None)
        if size is None:
            spec, layers = "smollm2-135m", 30
        else:
            started = time.perf_counter()
            spec, layers = build_model(size, Path(scratch)), SHAPES[size]["num_hidden_layers"]
            print(f"built a random {size} Llama in {time.perf_counter() - started:.0f}s")
        reference = run_all(spec, device, "float32", layers)
        rows: list[dict[str, Any]] = []
        failed = False
        if cuda:
            cpu = run_all(spec, "cpu", "float32", layers)
            for name, (values, seconds) in reference.items():
                error = largest_error(values, cpu[name][0])
                failed |= isinstance(error, str) or error > TOLERANCE
                rows.append({"check": f"{name}: cuda fp32 vs cpu fp32", "error": error, "seconds": seconds,
                             "cpu_seconds": cpu[name][1]})  # fmt: skip
        for dtype in ("bfloat16", "float16") if cuda else ("bfloat16",):
            reduced = run_all(spec, device, dtype, layers)
            for name, (values, seconds) in reduced.items():
                error = largest_error(values, reference[name][0])
                rows.append({"check": f"{name}: {device} {dtype} vs fp32", "error": error, "seconds": seconds})
        if cuda:
            free, total = torch.cuda.mem_get_info()
            print(f"GPU memory: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB (batches are planned from it)")
    print(f"{'check':<52} {'largest error':>13} {'seconds':>8}")
    for row in rows:
        error = row["error"]
        if isinstance(error, float) and math.isinf(error):
            error = "different cells (e.g. a sparse grid listing other cells)"
        shown = f"{error:>13.2e}" if isinstance(error, float) else f"  {error}"
        print(f"{row['check']:<52} {shown} {row['seconds']:>8.2f}")
    print("reduced precision: weights and activations in that dtype; metrics, normalization and scores in fp32")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print("FAILED: a device result differs from the CPU beyond 1e-3" if failed else "gpu-check: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
