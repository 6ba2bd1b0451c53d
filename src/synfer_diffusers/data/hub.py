"""Publishing a synthetic set: checks made before any work, then one Hub commit with retries.

Pulling needs no code of ours: `datasets.load_dataset("user/name")` reads the published folder with the features
recorded in its card and shards.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..hub_utils import push_folder_to_hub
from .writer import PLAN_FILE, WORK_DIR, SyntheticSetWriter

DATASET_IGNORE_PATTERNS = [f"{WORK_DIR}/*", f"{WORK_DIR}/**"]
"""The writer's manifests and temporary files stay local; shards, card, preview and plan are published."""


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
) -> str:
    r"""
    Uploads a complete synthetic-set folder to a Hub dataset repo in one commit, with retries; returns its URL.

    The folder is verified first (every shard intact, card written): an incomplete set is never published, and a
    failed upload publishes nothing (the Hub applies a commit whole or not at all). Transient errors are retried
    `max_retries` times ([`~synfer_diffusers.hub_utils.push_folder_to_hub`]).

    Example:

    ```py
    >>> push_synthetic_dataset("outputs/demo", "me/synfer-demo")  # doctest: +SKIP
    >>> datasets.load_dataset("me/synfer-demo", split="train")  # doctest: +SKIP
    ```
    """
    token = check_push_target(repo_id, token)
    folder = Path(folder)
    writer = SyntheticSetWriter.from_folder(folder)
    if writer.pending_shards() or not (folder / "README.md").is_file():
        raise ValueError(
            f"`folder` {str(folder)!r} is not a complete synthetic set (see {PLAN_FILE}); finish it first."
        )
    return push_folder_to_hub(
        folder, repo_id, commit_message=commit_message, private=private, token=token, repo_type="dataset",
        ignore_patterns=DATASET_IGNORE_PATTERNS, max_retries=max_retries, retry_wait=retry_wait,
    )  # fmt: skip


__all__ = ["DATASET_IGNORE_PATTERNS", "check_push_target", "push_synthetic_dataset"]
