"""Integrity of the dequantized GGUF cache: a hash of every file, kept in the completion marker and checked on
load, and the clean-up of staging folders a killed process left behind.

The hash is SHA-256 (hashlib, 8 MiB chunks), which the SHA extensions of current x86 and ARM CPUs make the
fastest cryptographic hash in the standard library (measured against BLAKE2b, SHA-1 and MD5 on this machine). It
catches any change to the files (a flipped bit in the weights changes results silently otherwise);
bench/bench_cache_integrity.py measures what the check adds to a warm start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

MARKER_FORMAT = 1
CHUNK_BYTES = 8 << 20
STAGING_PREFIX = ".staging-"
OWNER_FILE = ".lens-mcp-owner"
STALE_FOREIGN_S = 24 * 3600  # a staging folder of another machine (shared cache) or of an older lens-mcp
# Staging folders of lens-mcp versions before the prefix: "<stem>-<16 hex>.<mkdtemp suffix>"
_LEGACY_STAGING = re.compile(r"-[0-9a-f]{16}\.[A-Za-z0-9_]{8}$")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def folder_digests(folder: Path, skip: str) -> dict[str, str]:
    """The digest of every file in `folder` (not recursive, all a save_pretrained folder holds), but `skip`."""
    return {
        entry.name: file_digest(entry)
        for entry in sorted(folder.iterdir())
        if entry.is_file() and entry.name not in (skip, OWNER_FILE)
    }


def write_marker(folder: Path, marker: str) -> None:
    record = {"format": MARKER_FORMAT, "files": folder_digests(folder, marker)}
    (folder / marker).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def verify(folder: Path, marker: str) -> str | None:
    """None when every file matches the digest in the marker, else what is wrong (one line)."""
    try:
        record = json.loads((folder / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its completion marker holds no file hashes (written by an older lens-mcp, or damaged)"
    if (
        not isinstance(record, dict)
        or record.get("format") != MARKER_FORMAT
        or not isinstance(record.get("files"), dict)
    ):
        return "its completion marker holds no file hashes (written by an older lens-mcp, or damaged)"
    expected: dict[str, str] = record["files"]
    present = {entry.name for entry in folder.iterdir() if entry.is_file()} - {marker, OWNER_FILE}
    if present != set(expected):
        changed = sorted(present ^ set(expected))
        return f"its files changed (added or missing: {', '.join(changed[:5])})"
    for name, digest in expected.items():
        if file_digest(folder / name) != digest:
            return f"{name} does not match the hash recorded when the cache was written"
    return None


def claim_staging(staging: Path) -> None:
    """Mark a staging folder as this process's, so another start can tell it from one left by a killed one."""
    (staging / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n", encoding="utf-8")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(staging: Path, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    try:
        host, pid = (staging / OWNER_FILE).read_text(encoding="utf-8").split()
        if host == socket.gethostname():
            return not _pid_alive(int(pid))
    except (OSError, ValueError):
        pass  # no owner yet (just created, or an older lens-mcp): judge by age
    try:
        return now - staging.stat().st_mtime > STALE_FOREIGN_S
    except OSError:
        return False


def clean_stale_staging(parent: Path) -> list[Path]:
    """Remove staging folders whose writer is gone (killed mid-write); returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        looks_staging = entry.name.startswith(STAGING_PREFIX) or _LEGACY_STAGING.search(entry.name)
        if entry.is_dir() and not entry.is_symlink() and looks_staging and is_stale(entry):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
                log.warning("removed the stale staging folder %s (a cache write that never finished)", entry)
    return removed
