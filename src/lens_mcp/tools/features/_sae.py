"""Sparse autoencoders on the loaded model: where an SAE spec may be loaded from, the checks against the model, attaching, and finding the SAE a call reads. Private to tools/features/."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from lens_mcp.errors import LensError
from lens_mcp.loading.hub import hub_host_and_port, hub_reachable
from lens_mcp.loading.policy import LoadPolicy
from lens_mcp.loading.specs import BUILTIN_DIR
from lens_mcp.schemas.features import (
    SaeInfo,
)
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.hook_names import hook_layer
from lens_mcp.tools.features._sae_format import CFG_FILE, SAE, WEIGHTS_FILE, read_sae

BUILTIN_SAES: dict[str, tuple[str, str]] = {
    # spec -> (folder under builtin/, the model spec it was trained on)
    "smollm2-135m-resid": ("smollm2_135m_resid", "smollm2-135m"),
}


DEFAULT_SAE_FOR_MODEL = {model: spec for spec, (_, model) in BUILTIN_SAES.items()}


_GATED_WARNING = r".*gated-off hook name"


def _hub_folder(repo_id: str, sae_id: str | None) -> Path:
    """The local folder of `repo_id`/`sae_id` from the HF cache, downloading when the Hub is reachable."""
    subfolder = (sae_id or "").strip("/")
    files = [f"{subfolder}/{name}" if subfolder else name for name in (CFG_FILE, WEIGHTS_FILE)]
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:  # pragma: no cover - a transformers dependency
        raise LensError("spec: loading from the Hugging Face Hub needs the huggingface_hub package.") from None
    cached = [try_to_load_from_cache(repo_id, name) for name in files]
    if all(isinstance(path, str) for path in cached):
        return Path(str(cached[0])).parent
    if not hub_reachable():
        host, _ = hub_host_and_port()
        raise LensError(
            f"spec={repo_id!r} sae_id={sae_id!r}: not in the local Hugging Face cache and the Hub ({host}) cannot "
            "be reached from this machine (offline, or HF_HUB_OFFLINE is set). Download the folder elsewhere and "
            "pass its path, or use the builtin 'smollm2-135m-resid' on smollm2-135m."
        )
    try:
        paths = [hf_hub_download(repo_id, name) for name in files]
    except Exception as exc:
        raise LensError(
            f"spec={repo_id!r} sae_id={sae_id!r}: could not download {', '.join(files)} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). sae_id is the subfolder "
            "of the repo holding cfg.json and sae_weights.safetensors (e.g. 'blocks.8.hook_resid_pre')."
        ) from None
    return Path(paths[0]).parent


def _refuse(text: str, policy: LoadPolicy) -> LensError:
    parts = [f"spec: loading an SAE from {text[:200]!r} is not allowed."]
    if not policy.paths:
        parts.append("This server reads no SAE folders (start it with --load-root DIR to allow one).")
    elif policy.roots is not None:
        parts.append("Folders must lie under the server's --load-root folders: " + ", ".join(map(str, policy.roots)))
    if not policy.hub:
        parts.append("Hugging Face repos are off here (start the server with --allow-hub).")
    parts.append(f"The builtin SAEs ({', '.join(BUILTIN_SAES)}) are always allowed.")
    return LensError(" ".join(parts))


def check_policy(spec: str, sae_id: str | None, policy: LoadPolicy) -> None:
    """The server's load policy (as for load_model): folders only under --load-root when given, Hub repos only
    when allowed; the refusal is the same whether or not the folder exists."""
    text = spec.strip()
    if text in BUILTIN_SAES or (policy.paths and policy.roots is None and policy.hub):
        return
    path = Path(text).expanduser()
    if sae_id:
        path = path / sae_id
    looks_like_path = text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") != 1
    if looks_like_path or os.path.lexists(Path(text).expanduser()):
        resolved = path.resolve()
        inside = policy.paths and (
            policy.roots is None or any(resolved == root or resolved.is_relative_to(root) for root in policy.roots)
        )
        if not inside:
            raise _refuse(text, policy)
    elif not policy.hub:
        raise _refuse(text, policy)


def resolve_sae_folder(spec: str, sae_id: str | None, policy: LoadPolicy | None = None) -> tuple[Path, str]:
    """(folder, source description) for a builtin name, a local folder, or a Hub repo id + sae_id."""
    if not isinstance(spec, str) or not spec.strip():
        raise LensError(
            "spec is empty: pass a builtin SAE (smollm2-135m-resid), a local SAELens folder, or a Hugging Face "
            "repo id with sae_id."
        )
    if sae_id is not None and (not isinstance(sae_id, str) or ".." in Path(sae_id).parts):
        raise LensError(f"sae_id={sae_id!r}: pass a subfolder name such as 'blocks.8.hook_resid_pre' (no '..').")
    if policy is not None:
        check_policy(spec, sae_id, policy)
    text = spec.strip()
    if text in BUILTIN_SAES:
        return BUILTIN_DIR / BUILTIN_SAES[text][0], text
    path = Path(text).expanduser()
    if path.is_dir():
        base = path / sae_id if sae_id else path
        if not base.is_dir():
            raise LensError(f"sae_id={sae_id!r}: {base} is not a folder.")
        if policy is not None:
            # Every file read, not only the folder: a cfg.json or weights file may be a link to outside the roots.
            for name in (CFG_FILE, WEIGHTS_FILE):
                if os.path.lexists(base / name) and not policy.allows((base / name).resolve()):
                    raise _refuse(text, policy)
        return base.resolve(), str(base)
    looks_like_path = text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") != 1
    if looks_like_path:
        raise LensError(
            f"spec={text!r}: no such folder, and it is neither a builtin SAE ({', '.join(BUILTIN_SAES)}) nor a "
            "Hugging Face repo id (owner/name, with sae_id naming the subfolder); pass a folder holding cfg.json and "
            "sae_weights.safetensors, a builtin name, or a repo id."
        )
    return _hub_folder(text, sae_id), f"{text}/{sae_id}" if sae_id else text


def activation_width(tc: ToolContext, hook: str) -> int:
    """The last dimension of the activation at `hook` (hook_z flattened to n_heads * d_head), from one forward
    pass on a single token, stopped after the hook's block."""
    layer = hook_layer(hook)
    bos = tc.view.tokenizer.bos_token_id
    token = torch.tensor([[bos if bos is not None else 0]], device=tc.view.device)
    kwargs: dict[str, Any] = {}
    if layer is not None and layer + 1 < tc.view.n_layers:
        kwargs["stop_at_layer"] = layer + 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GATED_WARNING)
        _, cache = tc.view.run_with_cache(token, names_filter=[hook], **kwargs)
    activation = cache[hook]
    if hook.endswith("hook_z") and activation.ndim == 4:
        return int(activation.shape[-1] * activation.shape[-2])
    return int(activation.shape[-1])


def flat(activation: torch.Tensor, hook: str) -> torch.Tensor:
    """[..., n_heads, d_head] -> [..., n_heads * d_head] for hook_z; other activations unchanged (a view)."""
    if hook.endswith("hook_z") and activation.ndim == 4:
        return activation.flatten(-2)
    return activation


def check_against_model(tc: ToolContext, sae: SAE, spec: str) -> None:
    """Refuse an SAE whose hook or width does not fit the loaded model (nothing is attached)."""
    hook_dict = tc.view.hook_dict
    if sae.hook_name not in hook_dict:
        raise LensError(
            f"spec={spec!r}: the SAE reads hook {sae.hook_name!r}, which this model "
            f"({tc.model.spec.name}, {tc.view.n_layers} layers) does not have. Use load_model for the model it was "
            f"trained on{' (' + sae.model_name + ')' if sae.model_name else ''}, or pass an SAE for this model. The "
            "model is unchanged."
        )
    if not tc.view.fireable(sae.hook_name):
        raise LensError(f"spec={spec!r}: hook {sae.hook_name!r} is switched off on this model and never fires.")
    check_centring(tc, sae, spec)
    width = activation_width(tc, sae.hook_name)
    if width != sae.d_in:
        raise LensError(
            f"spec={spec!r}: the SAE has d_in={sae.d_in} but the activation at {sae.hook_name!r} has width {width} "
            f"on {tc.model.spec.name}: it was trained on another model"
            f"{' (' + sae.model_name + ')' if sae.model_name else ''}. The model is unchanged."
        )


RESIDUAL_HOOK = re.compile(
    r"^(hook_embed|hook_pos_embed|blocks\.\d+\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out))$"
)
"""Activations that live in the residual stream (and are centred with it on LayerNorm models)."""


def check_centring(tc: ToolContext, sae: SAE, spec: str) -> None:
    """Refuse an SAE on the residual stream of a LayerNorm model unless it was trained on the centred stream (its
    cfg.json says so) or normalizes its input per token (normalize_activations='layer_norm' removes the mean)."""
    if not tc.view.capabilities.residual_centred or not RESIDUAL_HOOK.match(sae.hook_name):
        return
    if sae.centred_stream is True or sae.normalize_activations == "layer_norm":
        return
    said = (
        "its cfg.json says it was trained on the uncentred stream (center_writing_weights=false)"
        if sae.centred_stream is False
        else "its cfg.json does not say which stream it was trained on (model_from_pretrained_kwargs)"
    )
    raise LensError(
        f"spec={spec!r}: the SAE reads {sae.hook_name}, in the residual stream, and {tc.model.spec.name} uses "
        "LayerNorm: lens-mcp runs it in TransformerLens's compatibility mode, whose residual stream is centred (each "
        "vector's mean over d_model removed; the model's outputs are unchanged, every LayerNorm removes that mean), "
        f"so an SAE trained on the uncentred stream would read shifted input; {said}. If it was trained on the "
        "centred stream (SAELens on HookedTransformer with center_writing_weights=True), add "
        '"model_from_pretrained_kwargs": {"center_writing_weights": true} to its cfg.json; otherwise use an SAE on '
        "a hook inside a block (attn.hook_z, mlp.hook_post), one with normalize_activations='layer_norm', or an "
        "RMSNorm model. Nothing was loaded."
    )


def sae_info(sae: SAE) -> SaeInfo:
    return SaeInfo(
        hook=sae.hook_name,
        architecture=sae.architecture,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        k=sae.k,
        normalize_activations=sae.normalize_activations,
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        source=sae.source,
        size_mb=sae.size_bytes / 1e6,
    )


def attach(tc: ToolContext, spec: str, sae_id: str | None = None, policy: LoadPolicy | None = None) -> tuple[SAE, bool]:
    folder, source = resolve_sae_folder(spec, sae_id, policy)
    sae = read_sae(folder, source=source)
    check_against_model(tc, sae, spec)
    # computed in fp32 (fp64 on an fp64 model), on the model's device
    dtype = torch.float64 if tc.model.dtype == torch.float64 else torch.float32
    sae = sae.to(tc.view.device, dtype)
    replaced = sae.hook_name in tc.model.saes
    tc.model.saes[sae.hook_name] = sae
    return sae, replaced


def get_sae(tc: ToolContext, hook: str | None, arg: str = "hook") -> SAE:
    """The SAE for `hook`; with hook=None the only one loaded, or the model's builtin default (loaded now)."""
    saes: dict[str, SAE] = tc.model.saes
    if hook is not None:
        if not isinstance(hook, str) or hook not in saes:
            loaded = ", ".join(saes) or "none"
            raise LensError(
                f"{arg}={hook!r}: no SAE is loaded on that hook (loaded: {loaded}). Call load_sae first, or omit "
                f"{arg} to use the only loaded SAE."
            )
        return saes[hook]
    if len(saes) == 1:
        return next(iter(saes.values()))
    if len(saes) > 1:
        raise LensError(f"{arg}: several SAEs are loaded ({', '.join(saes)}); name one with {arg}=...")
    default = DEFAULT_SAE_FOR_MODEL.get(tc.model.spec.name)
    if default is None:
        raise LensError(
            f"no SAE is loaded and {tc.model.spec.name!r} has no builtin one: call load_sae(spec=<SAELens folder or "
            "repo id>) first."
        )
    return attach(tc, default)[0]


def body_start(tc: ToolContext, tokens: torch.Tensor) -> int:
    """1 when position 0 is the BOS token (never reconstructed, steered or clamped), else 0."""
    bos = tc.view.tokenizer.bos_token_id
    return 1 if bos is not None and int(tokens[0, 0]) == int(bos) and tokens.shape[-1] > 1 else 0
