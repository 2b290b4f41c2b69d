"""Which models a client may ask `load_model` for: builtins always; paths only under `--load-root` folders when
any are given; Hugging Face names unless the hub is turned off (over HTTP it is off unless `--allow-hub`).

A refused path gets the same message whether or not it exists, so clients cannot probe the server's disk. The
model named on the command line (`--model`) is the operator's choice and is not checked here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lens_mcp.errors import LensError
from lens_mcp.loading.specs import _HUB_NAME, BUILTIN_MODELS, ModelSpec, resolve_spec


@dataclass(frozen=True)
class LoadPolicy:
    """`roots` None: any path (stdio, the scripted CLI); () with `paths=False`: no paths at all."""

    roots: tuple[Path, ...] | None = None
    paths: bool = True
    hub: bool = True

    @classmethod
    def for_transport(cls, transport: str, roots: list[str] | None = None, allow_hub: bool = False) -> LoadPolicy:
        resolved = tuple(Path(os.path.expanduser(root)).resolve() for root in roots or [])
        if transport == "http":  # every client of a network server is somebody else: closed unless opened
            return cls(roots=resolved, paths=bool(resolved), hub=allow_hub)
        return cls(roots=resolved or None, paths=True, hub=True)

    def describe(self) -> str:
        paths = "none" if not self.paths else "any" if self.roots is None else ", ".join(map(str, self.roots))
        return f"paths: {paths}; Hugging Face names: {'yes' if self.hub else 'no'}"

    def allows(self, path: Path) -> bool:
        """Whether a client may read `path` (resolve symlinks first)."""
        return self._inside(path)

    def _inside(self, path: Path) -> bool:
        if not self.paths:
            return False
        if self.roots is None:
            return True
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def _refuse(self, text: str) -> LensError:
        parts = [f"model: loading {text[:200]!r} is not allowed."]
        if not self.paths:
            parts.append("This server loads no models from paths (start it with --load-root DIR to allow a folder).")
        elif self.roots is not None:
            parts.append("Paths must lie under the server's --load-root folders: " + ", ".join(map(str, self.roots)))
        if not self.hub:
            parts.append("Hugging Face names are off here (start the server with --allow-hub).")
        parts.append("The builtins smollm2-135m and toy-induction are always allowed.")
        return LensError(" ".join(parts))

    def resolve(self, spec: str) -> ModelSpec:
        """`resolve_spec` for a client's request: refused with 'not allowed' when the policy forbids it, saying
        nothing about whether such a path exists."""
        text = spec.strip() if isinstance(spec, str) else spec
        if not isinstance(text, str) or text in BUILTIN_MODELS or (self.paths and self.roots is None and self.hub):
            return resolve_spec(spec)
        if any(ord(ch) < 32 or 0xD800 <= ord(ch) <= 0xDFFF for ch in text) or len(text) > 4096 or not text:
            return resolve_spec(spec)  # its own readable refusal, about the text only
        candidate = Path(os.path.expanduser(text))
        looks_like_path = text.startswith(("/", ".", "~")) or text.lower().endswith(".gguf") or "\\" in text
        if _HUB_NAME.match(text) and not looks_like_path:
            # 'owner/name' is a folder only inside the roots; elsewhere it is a Hub id whether or not such a folder
            # exists (the loader then reads the Hub, never that folder), so the answer tells nothing about the disk.
            if os.path.lexists(candidate) and self._inside(candidate.resolve()):
                return resolve_spec(spec)
            if not self.hub:
                raise self._refuse(text)
            return ModelSpec(text, "hub", text)
        # Symlinks are followed before the check: a link inside a root to a file outside it is refused.
        if self._inside(candidate.resolve()):
            return resolve_spec(spec)
        raise self._refuse(text)
