"""Publishing a synthetic set: checks made before any work, then Hub commits that can be resumed.

A set within `MAX_COMMIT_BYTES` and `MAX_COMMIT_FILES` is published in one commit: the Hub applies it whole or not
at all. A larger set (the paper's 5x AffectNet is ~1.4M images, hundreds of GB) goes in several commits of at most
those sizes, shards first and the card (`README.md`) alone in the last one, so a reader never sees a card describing
data that is not there. Every push first lists what the repo already holds: a file there with the same content
(sha256; the shards' come from their manifests, so they are not read again) is skipped, so rerunning an interrupted
push resumes it, and rerunning a finished one commits nothing. No upload state is kept in the folder: the Hub's tree
is the state. Shards on the Hub that the set does not have (an earlier set under other shard names) are deleted.
A commit is retried when its answer is lost, and the Hub may have applied it: the retry deletes only what is still
there and skips the files already uploaded, so it is idempotent.

Pulling needs no code of ours: `datasets.load_dataset("user/name")` reads the published folder with the features
recorded in its card and shards.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.hf_api import RepoSibling
from huggingface_hub.utils import validate_repo_id
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from ..hub_utils import call_with_retries
from ..value_checks import check_int
from .writer import CARD_FILE, DATA_DIR, PLAN_FILE, SyntheticSetWriter

logger = logging.getLogger(__name__)

MAX_COMMIT_BYTES = 4 * 1024**3
"""Bytes one commit carries at most (4 GiB): a failed commit costs at most this much upload again."""
MAX_COMMIT_FILES = 250
"""Files one commit carries at most (huggingface_hub's own default batch for multi-commit uploads)."""


def check_push_target(repo_id: str, token: str | None = None) -> str:
    """Checks a Hub repo id (`"user/name"`) and that a token is available, before anything is generated; returns
    the token. Raises `ValueError` naming the field."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"`push_to_hub` must be a Hub repo id 'user/name', got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"`push_to_hub` {repo_id!r} is not a valid Hub repo id: {error}") from error
    token = token or get_token()
    if not token:
        raise ValueError(
            "`token`: pushing to the Hub needs a token; pass --token, set HF_TOKEN or run `hf auth login`."
        )
    return token


def push_synthetic_dataset(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload synthetic SynFER dataset",
    max_retries: int = 3,
    retry_wait: float = 1.0,
    max_commit_bytes: int = MAX_COMMIT_BYTES,
    max_commit_files: int = MAX_COMMIT_FILES,
) -> str:
    r"""
    Uploads a complete synthetic-set folder to a Hub dataset repo; returns the URL of the repo's last commit.

    The folder is verified first (every shard intact, card written): an incomplete set is never published. Only the
    writer's files are uploaded (plan, shards, preview, card; see [`SyntheticSetWriter.published_files`]), never
    `.synfer/` or other entries. A set within `max_commit_bytes` and `max_commit_files` goes in one commit, which
    publishes everything or nothing; a larger one in commits of at most that size, the card last (see the module's
    docstring). Files already on the Hub with the same content are skipped, so rerunning a push that was killed or
    failed resumes it. Each commit's transient errors (HTTP 429, honouring `Retry-After`, 5xx, dropped connections)
    are retried `max_retries` times ([`~synfer_diffusers.hub_utils.call_with_retries`]); others (401, 403, ...)
    stop the push at once with the reason.

    Example:

    ```py
    >>> push_synthetic_dataset("outputs/demo", "me/synfer-demo")  # doctest: +SKIP
    >>> datasets.load_dataset("me/synfer-demo", split="train")  # doctest: +SKIP
    ```
    """
    token = check_push_target(repo_id, token)
    check_int("max_commit_bytes", max_commit_bytes, 1)
    check_int("max_commit_files", max_commit_files, 2)
    folder = Path(folder)
    writer = SyntheticSetWriter.from_folder(folder)
    if writer.pending_shards() or not (folder / CARD_FILE).is_file():
        raise ValueError(
            f"`folder` {str(folder)!r} is not a complete synthetic set (see {PLAN_FILE}); finish it first."
        )
    api = HfApi(token=token)
    where = f"Upload of {folder} to {repo_id}"

    def retried(call, what: str = where):
        return call_with_retries(call, what, max_retries, retry_wait)

    repo_id = retried(lambda: api.create_repo(repo_id, private=private, repo_type="dataset", exist_ok=True).repo_id)
    info = retried(lambda: api.repo_info(repo_id, repo_type="dataset", files_metadata=True))
    remote = {sibling.rfilename: sibling for sibling in info.siblings or []}
    files = writer.published_files()
    to_upload = [path for path, sha256 in files.items() if not _on_hub(folder / path, sha256, remote.get(path))]
    stale = sorted(path for path in remote if path.startswith(f"{DATA_DIR}/") and path not in files)
    commits = plan_commits(folder, to_upload, stale, CARD_FILE in remote, max_commit_bytes, max_commit_files)
    commit_url = f"{api.endpoint}/datasets/{repo_id}/commit/{info.sha}"
    for i, (uploads, deletions) in enumerate(commits, 1):
        message = commit_message if len(commits) == 1 else f"{commit_message} ({i}/{len(commits)})"

        def commit() -> str:
            operations = [CommitOperationDelete(path) for path in _still_on_hub(api, repo_id, deletions)]
            operations += [_addition(folder, path, files[path]) for path in uploads]
            return api.create_commit(repo_id, operations, commit_message=message, repo_type="dataset").commit_url

        commit_url = retried(commit, f"{where}, commit {i}/{len(commits)}")
        logger.info(f"Committed {i}/{len(commits)} to {repo_id}: {len(uploads)} files, {len(deletions)} deleted.")
    if not commits:
        logger.info(f"{repo_id} already holds every file of {folder}: nothing to commit.")
    return commit_url


def plan_commits(
    folder: Path, uploads: list[str], deletions: list[str], card_on_hub: bool, max_bytes: int, max_files: int
) -> list[tuple[list[str], list[str]]]:
    """The commits that publish `uploads` (paths in `folder`, the card last) and delete `deletions`: a list of
    `(uploads, deletions)`, empty when there is nothing to do.

    Everything within `max_bytes` and `max_files` is one commit. Otherwise the other files are packed in order into
    commits within both limits (a file larger than `max_bytes` alone), the first also deleting `deletions` and a
    card already on the Hub that is about to change, and the card comes alone in a last commit."""
    sizes = {path: (folder / path).stat().st_size for path in uploads}
    if sum(sizes.values()) <= max_bytes and len(uploads) + len(deletions) <= max_files:
        return [(uploads, deletions)] if uploads or deletions else []
    data = [path for path in uploads if path != CARD_FILE]
    deletions = [*deletions, *([CARD_FILE] if CARD_FILE in uploads and card_on_hub else [])]
    commits: list[tuple[list[str], list[str]]] = [([], deletions)]
    num_bytes = 0
    for path in data:
        batch = commits[-1][0]
        if batch and (num_bytes + sizes[path] > max_bytes or len(batch) + len(commits[-1][1]) >= max_files):
            commits.append(([], []))
            num_bytes = 0
        commits[-1][0].append(path)
        num_bytes += sizes[path]
    if CARD_FILE in uploads:
        commits.append(([CARD_FILE], []))
    return [commit for commit in commits if commit[0] or commit[1]]


def _on_hub(path: Path, sha256: str | None, remote: RepoSibling | None) -> bool:
    """Whether the Hub's file `remote` has the content of the local file `path` (whose sha256 may be known)."""
    if remote is None:
        return False
    if remote.lfs is not None:
        if sha256 is None:
            with open(path, "rb") as f:
                sha256 = sha_fileobj(f).hex()
        return remote.lfs.sha256 == sha256
    return remote.size == path.stat().st_size and remote.blob_id == git_hash(path.read_bytes())


def _still_on_hub(api: HfApi, repo_id: str, paths: list[str]) -> list[str]:
    """The `paths` the dataset repo holds now: a commit retried after its answer was lost (the Hub applied it) must
    not delete them again, which the Hub refuses."""
    if not paths:
        return []
    present = {entry.path for entry in api.get_paths_info(repo_id, paths, repo_type="dataset")}
    return [path for path in paths if path in present]


def _addition(folder: Path, path: str, sha256: str | None) -> CommitOperationAdd:
    operation = CommitOperationAdd(path_in_repo=path, path_or_fileobj=folder / path)
    if sha256 is not None:  # known from the shard's manifest: the file is not hashed again
        operation.upload_info.sha256 = bytes.fromhex(sha256)
    return operation


__all__ = ["MAX_COMMIT_BYTES", "MAX_COMMIT_FILES", "check_push_target", "plan_commits", "push_synthetic_dataset"]
