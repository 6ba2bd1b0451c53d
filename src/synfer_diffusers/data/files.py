"""Durable file writes and canonical JSON: what every folder the package writes (synthetic sets, their manifests,
relabel journals) relies on to be complete or absent after a kill, and the error for a file no plan wrote."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import PIL.Image

__all__ = ["ShardVerificationError", "atomic_write_bytes", "canonical_json", "png_bytes", "sha256_file"]


class ShardVerificationError(RuntimeError):
    """A file in the dataset folder that this plan did not write (another plan's shard, an unknown file)."""


def atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Writes `data` to a temporary file in `tmp_dir` (same filesystem), fsyncs it and moves it to `path`; on any
    error the temporary file is removed and `path` is untouched."""
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def canonical_json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, sort_keys=True, indent=indent, separators=None if indent else (",", ":"))
