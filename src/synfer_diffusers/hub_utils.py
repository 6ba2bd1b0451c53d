"""Model cards from the package's templates and one-commit uploads to the Hugging Face Hub.

Imports only huggingface_hub, so models, pipelines and data writers can all use it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import _http

logger = logging.getLogger(__name__)

# Timeouts and dropped connections, as huggingface_hub's own backoff retries them (its HTTP client's classes).
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = getattr(_http, "_DEFAULT_RETRY_ON_EXCEPTIONS", ())

CARD_DATA_KEYS = (
    "license", "base_model", "datasets", "tags", "library_name", "pipeline_tag", "metrics", "labels",
)  # fmt: skip
"""Template fields that go into the card's YAML metadata rather than its text."""

DEFAULT_CARD_DATA: dict[str, Any] = {
    "library_name": "diffusers",
    "license": "apache-2.0",
    "tags": ["synfer", "facial-expression-recognition", "action-units", "synthetic-data"],
}


def model_card_template(name: str) -> str:
    """Text of a template shipped in `model_cards/` (installed as `synfer_diffusers/model_cards`)."""
    return resources.files("synfer_diffusers").joinpath("model_cards", name).read_text(encoding="utf-8")


def render_model_card(template_name: str, fields: Mapping[str, Any]) -> ModelCard:
    """Renders a template with huggingface_hub's `ModelCard.from_template`: keys in `CARD_DATA_KEYS` become
    YAML metadata (merged over `DEFAULT_CARD_DATA`), the others are template variables."""
    data = {**DEFAULT_CARD_DATA, **{k: v for k, v in fields.items() if k in CARD_DATA_KEYS and v is not None}}
    text_fields = {k: v for k, v in fields.items() if k not in CARD_DATA_KEYS}
    return ModelCard.from_template(
        ModelCardData(**data), template_str=model_card_template(template_name), **text_fields
    )


def write_model_card(folder: str | os.PathLike, template_name: str, fields: Mapping[str, Any]) -> str:
    """Renders the card and writes it as `folder/README.md`; returns the path."""
    path = os.path.join(folder, "README.md")
    render_model_card(template_name, fields).save(path)
    return path


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str = "Upload with synfer_diffusers",
    private: bool | None = None,
    token: str | None = None,
    repo_type: str = "model",
    ignore_patterns: list[str] | None = None,
    max_retries: int = 3,
    retry_wait: float = 1.0,
) -> str:
    """Creates `repo_id` if needed and uploads `folder` in a single commit; returns the commit URL.

    The commit is atomic on the Hub: either every file is published or none is. Transient failures (HTTP 429 and
    5xx, dropped connections) are retried up to `max_retries` times, waiting `retry_wait * 2**attempt` seconds;
    files already uploaded to LFS storage are not sent again. `ignore_patterns` are glob patterns of files to
    leave out (relative to `folder`)."""
    api = HfApi(token=token)
    for attempt in range(max_retries + 1):
        try:
            repo_id = api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True).repo_id
            info = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message, repo_type=repo_type,
                ignore_patterns=ignore_patterns,
            )  # fmt: skip
            return info.commit_url
        except (HfHubHTTPError, *_TRANSIENT_ERRORS) as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            if attempt == max_retries or (status is not None and status != 429 and status < 500):
                raise
            logger.warning(f"Upload to {repo_id} failed ({error}); retry {attempt + 1}/{max_retries}.")
            time.sleep(retry_wait * 2**attempt)
    raise AssertionError("unreachable")
