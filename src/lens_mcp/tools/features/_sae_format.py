"""Sparse autoencoders in SAELens's on-disk format, read and run without the sae-lens package.

A folder holds `cfg.json` and `sae_weights.safetensors` with `W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
`W_dec [d_sae, d_in]`, `b_dec [d_in]`, plus `threshold [d_sae]` (JumpReLU; or `log_threshold` as in SAELens's
training checkpoints) and, in old files, a
`scaling_factor [d_sae]` (fine-tuning scale). The semantics follow SAELens's inference classes:

    x_in   = norm_in(x) - b_dec * apply_b_dec_to_input
    pre    = x_in @ W_enc + b_enc            (TopK with rescale_acts_by_decoder_norm: pre * |W_dec row|)
    acts   = relu(pre)                       (standard)
           = relu(pre) * (pre > threshold)   (jumprelu)
           = relu(top-k of pre), rest 0      (topk)
    x_hat  = norm_out((acts * scale) @ W_dec + b_dec)   (TopK rescaled: acts / |W_dec row|)

normalize_activations: "none"; "constant_norm_rescale" (x * sqrt(d_in)/|x| in, divided back out);
"layer_norm" (x centred and divided by (std + 1e-5) in, times std plus mean out; std unbiased, as
torch.std); "expected_average_only_in" with a `norm_scaling_factor` in cfg.json (x * factor in, / factor out,
which is what SAELens folds into the weights); without a factor it is the identity, as in SAELens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from lens_mcp.errors import LensError

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
Architecture = Literal["standard", "jumprelu", "topk"]
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_LN_EPS = 1e-5


@dataclass
class NormState:
    """Per-token statistics of the input normalization, needed to decode: x_in = (x - in_shift) * in_scale,
    x_hat = y * out_scale + out_shift."""

    in_shift: torch.Tensor | float = 0.0
    in_scale: torch.Tensor | float = 1.0
    out_scale: torch.Tensor | float = 1.0
    out_shift: torch.Tensor | float = 0.0


@dataclass
class SAE:
    """One sparse autoencoder, ready to encode activations of the hook it was trained on."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    architecture: Architecture
    hook_name: str
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    norm_scaling_factor: float | None = None
    threshold: torch.Tensor | None = None
    k: int | None = None
    rescale_acts_by_decoder_norm: bool = False
    finetuning_scale: torch.Tensor | None = None
    source: str = ""
    model_name: str | None = None
    size_bytes: int = 0
    notes: tuple[str, ...] = ()
    centred_stream: bool | None = None
    """What cfg.json says of the residual stream it was trained on: True = centred (HookedTransformer's
    center_writing_weights=True), False = uncentred, None = not said."""

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> SAE:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(
            self,
            W_enc=move(self.W_enc),
            b_enc=move(self.b_enc),
            W_dec=move(self.W_dec),
            b_dec=move(self.b_dec),
            threshold=move(self.threshold),
            finetuning_scale=move(self.finetuning_scale),
        )

    # ---- the computation --------------------------------------------------------------------------
    def norm_state(self, x: torch.Tensor) -> NormState:
        mode = self.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return NormState(in_scale=coeff, out_scale=1.0 / coeff)
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            return NormState(in_shift=mu, in_scale=1.0 / (std + _LN_EPS), out_scale=std, out_shift=mu)
        if mode == "expected_average_only_in" and self.norm_scaling_factor is not None:
            factor = float(self.norm_scaling_factor)
            return NormState(in_scale=factor, out_scale=1.0 / factor)
        return NormState()

    def pre_activations(self, x: torch.Tensor, state: NormState | None = None) -> torch.Tensor:
        state = self.norm_state(x) if state is None else state
        sae_in = (x.to(self.W_enc.dtype) - state.in_shift) * state.in_scale
        if self.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        pre = sae_in @ self.W_enc + self.b_enc
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return pre

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "jumprelu":
            assert self.threshold is not None
            return pre.relu() * (pre > self.threshold)
        if self.architecture == "topk":
            assert self.k is not None
            values, indices = pre.topk(min(self.k, pre.shape[-1]), dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        return pre.relu()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """(feature activations [..., d_sae], the normalization state decode needs)."""
        state = self.norm_state(x)
        return self.activate(self.pre_activations(x, state)), state

    def decoder_rows(self) -> torch.Tensor:
        """The effective decoder W_eff [d_sae, d_in] in normalized space: decode = (acts @ W_eff + b_dec)
        * out_scale + out_shift (fine-tuning scale and TopK decoder-norm rescaling folded in)."""
        rows = self.W_dec
        if self.finetuning_scale is not None:
            rows = rows * self.finetuning_scale[:, None]
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            rows = rows / self.W_dec.norm(dim=-1, keepdim=True)
        return rows

    def decode(self, acts: torch.Tensor, state: NormState | None = None) -> torch.Tensor:
        state = NormState() if state is None else state
        return (acts @ self.decoder_rows() + self.b_dec) * state.out_scale + state.out_shift

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, NormState]:
        acts, state = self.encode(x)
        return self.decode(acts, state), acts, state

    def directions(self, features: torch.Tensor | list[int], state: NormState | None = None) -> torch.Tensor:
        """d x_hat / d act_i in the hook's own space, per listed feature: [..., n, d_in] (per-token when the
        normalization is per token, else [n, d_in])."""
        rows = self.decoder_rows()[torch.as_tensor(features, dtype=torch.long, device=self.W_dec.device)]
        scale = 1.0 if state is None else state.out_scale
        if isinstance(scale, torch.Tensor):
            return rows * scale.unsqueeze(-1)  # [..., 1, 1] x [n, d_in]
        return rows * scale


# ---- reading -------------------------------------------------------------------------------------
def _config_error(folder: Path, what: str) -> LensError:
    return LensError(f"spec={str(folder)!r}: {what}. Expected a SAELens folder with {CFG_FILE} and {WEIGHTS_FILE}.")


def hook_name_of(cfg: dict[str, Any]) -> str | None:
    metadata = cfg.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("hook_name"), str):
        return metadata["hook_name"]
    for key in ("hook_name", "hook_point"):
        if isinstance(cfg.get(key), str):
            return cfg[key]
    return None


def centred_stream_of(cfg: dict[str, Any]) -> bool | None:
    """model_from_pretrained_kwargs.center_writing_weights (SAELens's record of how the model was loaded), at the
    top of cfg.json or under metadata; None when absent."""
    for holder in (cfg, cfg.get("metadata")):
        kwargs = holder.get("model_from_pretrained_kwargs") if isinstance(holder, dict) else None
        if isinstance(kwargs, dict) and isinstance(kwargs.get("center_writing_weights"), bool):
            return bool(kwargs["center_writing_weights"])
    return None


def _architecture(cfg: dict[str, Any], folder: Path) -> Architecture:
    arch = cfg.get("architecture")
    act = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    if arch in (None, "standard") and act in ("topk", "top_k"):
        return "topk"
    if arch in (None, "standard", "jumprelu", "topk"):
        if act not in (None, "relu", "topk", "top_k", "jumprelu"):
            raise _config_error(folder, f"activation function {act!r} is not supported (relu, jumprelu, topk are)")
        return arch or "standard"
    raise _config_error(
        folder,
        f"architecture {arch!r} is not supported; lens-mcp reads 'standard' (ReLU), 'jumprelu' and 'topk' SAEs "
        "(batchtopk SAEs are saved as jumprelu by SAELens)",
    )


def _shown(value: object) -> str:
    """A config value as an error shows it: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _config_integer(cfg: dict[str, Any], key: str, folder: Path) -> int | None:
    """cfg[key] as an integer (None when absent); anything else is refused naming the field."""
    value = cfg.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise _config_error(folder, f"{CFG_FILE}: {key} must be an integer, got {_shown(value)}")
    return int(value)


def read_sae(folder: Path, source: str = "local") -> SAE:
    """Read a SAELens folder into an SAE (weights on CPU in their stored dtype). Raises LensError with the
    reason when the folder is not in the format."""
    from safetensors.torch import load_file

    if not folder.is_dir():
        raise LensError(f"spec={str(folder)!r} is not a folder.")
    cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        missing = [p.name for p in (cfg_path, weights_path) if not p.is_file()]
        raise _config_error(folder, f"{' and '.join(missing)} missing")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _config_error(folder, f"{CFG_FILE} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise _config_error(folder, f"{CFG_FILE} is not a JSON object")
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:
        raise _config_error(folder, f"{WEIGHTS_FILE} could not be read ({type(exc).__name__}: {exc})") from None
    missing = [name for name in ("W_enc", "b_enc", "W_dec", "b_dec") if name not in tensors]
    if missing:
        raise _config_error(folder, f"{WEIGHTS_FILE} lacks {', '.join(missing)} (has {', '.join(sorted(tensors))})")
    W_enc, b_enc, W_dec, b_dec = (tensors[n].float() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    if W_enc.ndim != 2 or W_dec.ndim != 2:
        raise _config_error(folder, f"W_enc {tuple(W_enc.shape)} and W_dec {tuple(W_dec.shape)} must be matrices")
    d_in, d_sae = W_enc.shape
    if tuple(W_dec.shape) != (d_sae, d_in) or tuple(b_enc.shape) != (d_sae,) or tuple(b_dec.shape) != (d_in,):
        raise _config_error(
            folder,
            f"shapes disagree: W_enc {tuple(W_enc.shape)}, b_enc {tuple(b_enc.shape)}, W_dec {tuple(W_dec.shape)}, "
            f"b_dec {tuple(b_dec.shape)} (want [d_in, d_sae], [d_sae], [d_sae, d_in], [d_in])",
        )
    for name, tensor in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
        if not bool(torch.isfinite(tensor).all()):
            raise _config_error(folder, f"{WEIGHTS_FILE}: {name} holds values that are not finite (NaN or inf)")
    for key, value in (("d_in", d_in), ("d_sae", d_sae)):
        stated = _config_integer(cfg, key, folder)
        if stated is not None and stated != int(value):
            raise _config_error(folder, f"{CFG_FILE} says {key}={stated} but the weights have {key}={value}")
    hook = hook_name_of(cfg)
    if hook is None:
        raise _config_error(folder, f"{CFG_FILE} names no hook (metadata.hook_name, hook_name or hook_point)")
    arch = _architecture(cfg, folder)
    normalize = cfg.get("normalize_activations") or "none"
    if normalize not in NORMALIZATIONS:
        raise _config_error(folder, f"normalize_activations={normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    notes: list[str] = []
    factor = cfg.get("norm_scaling_factor")
    if factor is not None and (
        isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0
    ):
        raise _config_error(folder, f"norm_scaling_factor must be a positive finite number, got {_shown(factor)}")
    if normalize == "expected_average_only_in" and factor is None:
        notes.append(
            "normalize_activations='expected_average_only_in' without norm_scaling_factor: inputs are not rescaled "
            "(as in SAELens); reconstructions may be off by a constant factor"
        )
    reshape = cfg.get("reshape_activations") or "none"
    if reshape not in ("none", "hook_z"):
        raise _config_error(folder, f"reshape_activations={reshape!r} is not supported")
    threshold = k = None
    if arch == "jumprelu":
        if "threshold" in tensors:
            threshold = tensors["threshold"].float().reshape(-1)
        elif "log_threshold" in tensors:  # SAELens's training checkpoints
            threshold = tensors["log_threshold"].float().exp().reshape(-1)
        else:
            raise _config_error(folder, "a jumprelu SAE needs a 'threshold' (or 'log_threshold') tensor")
        if not bool(torch.isfinite(threshold).all()):
            raise _config_error(folder, f"{WEIGHTS_FILE}: threshold holds values that are not finite")
        if threshold.shape != (d_sae,):
            raise _config_error(folder, f"threshold has shape {tuple(threshold.shape)}, want [{d_sae}]")
    if arch == "topk":
        raw_k = cfg.get("k")
        if raw_k is None and isinstance(cfg.get("activation_fn_kwargs"), dict):
            raw_k = cfg["activation_fn_kwargs"].get("k")
        if (
            isinstance(raw_k, bool)
            or not isinstance(raw_k, (int, float))
            or not math.isfinite(raw_k)
            or not 1 <= raw_k <= d_sae
            or int(raw_k) != raw_k
        ):
            raise _config_error(folder, f"a topk SAE needs an integer k from 1 to d_sae={d_sae}, got {_shown(raw_k)}")
        k = int(raw_k)
    scale = tensors.get("scaling_factor")
    finetuning_scale = None
    if scale is not None and not torch.all(scale == 1):
        finetuning_scale = scale.float().reshape(-1)
    metadata = cfg.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    model_name = metadata.get("model_name") or cfg.get("model_name")
    size = cfg_path.stat().st_size + weights_path.stat().st_size
    return SAE(
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        architecture=arch,
        hook_name=hook,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=normalize,
        norm_scaling_factor=None if factor is None else float(factor),
        threshold=threshold,
        k=k,
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        finetuning_scale=finetuning_scale,
        source=source,
        model_name=model_name if isinstance(model_name, str) else None,
        size_bytes=size,
        notes=tuple(notes),
        centred_stream=centred_stream_of(cfg),
    )


def write_sae(folder: Path, tensors: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
    """Write a SAELens-format folder (used by the training script)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(folder / WEIGHTS_FILE))
    (folder / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
