"""Hub access that fails fast offline: try the local HF cache first, then check the Hub is reachable
before letting huggingface_hub retry for half a minute."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT_S = 3.0


def hub_host_and_port() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    host, port = hub_host_and_port()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def in_local_cache(repo_id: str) -> bool:
    """Whether the HF cache already holds this repo's config (then loading needs no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


# What a TransformerBridge needs from a repository: configs, tokenizer files and safetensors weights.
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.py"]


def hub_snapshot(repo_id: str) -> str:
    """The local folder holding `repo_id`'s files from the Hub (downloaded into the HF cache if needed): an
    absolute path, so that a relative folder that happens to share the id's name is never read instead."""
    from huggingface_hub import snapshot_download

    return str(snapshot_download(repo_id, allow_patterns=SNAPSHOT_PATTERNS))
