"""On-disk caches with size limits and checksums.

- ``WindowCache``: the warped, scaled windows a place scene reads from each source scene, keyed
  by everything that determines them (asset paths, radiometry, grid, window). A repeated request
  (the same place and scene) reads from disk and makes no HTTP request.
- ``prune``: keeps a folder of downloaded products under a byte budget, oldest use first.

Every entry is written to a temporary name then renamed into place; its sha256 is stored beside
it and checked on every hit: a corrupt or truncated entry is dropped and read again from the
source, never used.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from aquamask.processes.files import write_atomic

LOGGER = logging.getLogger(__name__)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def prune(directory: Path, max_bytes: int, keep: Iterable[Path] = (),
          pattern: str = "*") -> list[Path]:
    """Delete the least recently used files matching ``pattern`` (and their sidecars) until the
    folder holds at most ``max_bytes``; ``keep`` are never deleted. Returns what was removed."""
    keep = {Path(p).resolve() for p in keep}
    entries = []
    total = 0
    for path in directory.glob(pattern):
        if not path.is_file() or path.name.startswith(".") or path.suffix == ".sha256":
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        sidecar = path.with_name(path.name + ".sha256")
        size = stat.st_size + (sidecar.stat().st_size if sidecar.exists() else 0)
        entries.append((stat.st_mtime, path, size))
        total += size
    removed = []
    for _, path, size in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        if path.resolve() in keep:
            continue
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed


class WindowCache:
    """Arrays by key, on disk under ``directory``, at most ``max_bytes`` in all."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()
                              ).hexdigest()[:40]

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        path = self._path(key)
        sidecar = path.with_name(path.name + ".sha256")
        try:
            data = path.read_bytes()
            expected = sidecar.read_text().strip()
        except FileNotFoundError:
            self.misses += 1
            return None
        if sha256_bytes(data) != expected:
            LOGGER.warning("cache entry %s is corrupt (checksum mismatch); reading it again",
                           path)
            path.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            self.misses += 1
            return None
        now = time.time()
        os.utime(path, (now, now))  # least recently *used* goes first
        self.hits += 1
        with np.load(io.BytesIO(data)) as npz:
            return {name: npz[name] for name in npz.files}

    def put(self, key: str, **arrays: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle
        data = buffer.getvalue()
        if len(data) > self.max_bytes:
            return
        path = self._path(key)
        write_atomic(path, data)
        write_atomic(path.with_name(path.name + ".sha256"), sha256_bytes(data).encode())
        self._prune(keep=path)

    def _prune(self, keep: Path) -> None:
        prune(self.directory, self.max_bytes, keep=[keep], pattern="*/*.npz")
