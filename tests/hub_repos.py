"""The stored state of the Hub test server (`hub_server.py`): repos, commits, files and their tree listings."""

from __future__ import annotations

import codecs
import hashlib
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

LFS_SUFFIXES = (".parquet", ".safetensors", ".bin", ".pt", ".arrow", ".png", ".jpg", ".jpeg", ".webp", ".gif")
"""Paths the Hub's default `.gitattributes` (a dataset repo's) stores in LFS."""
LFS_MIN_SIZE = 10 * 1024 * 1024


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        """What `preupload` answers for a file already there (the client compares it with its local oid)."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    title: str
    files: dict[str, StoredFile]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit]
    gated: bool = False
    """Files (but the card and `.gitattributes`) only for the owner: 401 anonymous, 403 for other users."""
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    """This repo's LFS storage: `{sha256: content}`, uploaded objects whether committed or not."""

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def find(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in ("main", "refs/heads/main"):
            return self.commits[-1]
        return next((c for c in self.commits if c.oid == revision), None)


def is_binary(data: bytes, final: bool = True) -> bool:
    """The Hub's test of a file's content (a NUL byte or bytes that are not UTF-8; `final=False`: `data` is a
    file's start, which may end inside a character): binary files must be in LFS."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError:
        return True
    return b"\0" in data


def upload_mode(path: str, size: int, sample: bytes) -> str:
    """What `preupload` answers for a file: LFS for the suffixes of `LFS_SUFFIXES`, large files and binary ones
    (judged by `sample`, its first 512 bytes), else regular."""
    binary = is_binary(sample, final=len(sample) == size)
    return "lfs" if path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or binary else "regular"


def tree(commit: Commit, prefix: str, recursive: bool) -> list[dict]:
    """Tree entries under `prefix` (direct children, or all descendants when `recursive`)."""
    prefix = prefix.strip("/")
    base = f"{prefix}/" if prefix else ""
    entries: dict[str, dict] = {}
    for path, stored in sorted(commit.files.items()):
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        for depth in range(1, len(parts)):
            directory = base + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries.setdefault(directory, {"type": "directory", "oid": hashlib.sha1(directory.encode()).hexdigest(),
                                               "size": 0, "path": directory})  # fmt: skip
            if not recursive:
                break
        if recursive or len(parts) == 1:
            entry = {"type": "file", "oid": stored.git_oid, "size": len(stored.data), "path": path}
            if stored.lfs:
                entry["lfs"] = {"oid": stored.sha256, "size": len(stored.data), "pointerSize": 134}
            entries[path] = entry
    return list(entries.values())
