"""Model and dataset cards from the package's templates, with the metadata the Hub reads, and one-commit uploads.

Imports only huggingface_hub (and its yaml) and safetensors, so models, pipelines, data writers and examples can
all use it.

Card metadata follows two rules:

- **Derived work inherits the licence of what it derives from**, read from that thing's card (a local folder's
  `README.md` or the Hub's card; offline-safe): a fine-tune, adapter or FERAnno head its base model's
  ([`base_model_card_data`]), an FEText set its source dataset's, a synthetic set its generating model's
  ([`inherited_license`]). Where that card is missing, unreadable or names no licence the licence is
  `UNKNOWN_LICENSE` (`other`, the Hub's value for a licence it does not list) and the card's text says to check.
  Work with no base (trained from scratch by this package) gets `DEFAULT_CARD_DATA["license"]`.
- **Only Hub ids go into `base_model`, `datasets` and `source_datasets`.** Local folders and free-text
  descriptions are named in the card's text instead ([`split_hub_ids`]).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import yaml
from huggingface_hub import DatasetCard, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http, validate_repo_id
from safetensors import SafetensorError

logger = logging.getLogger(__name__)

MODEL_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, SafetensorError,
)  # fmt: skip
"""What loading a broken folder or an unreadable Hub repo raises: missing or truncated files, broken JSON, configs
of the wrong types, Hub errors (`OSError`s)."""

# Timeouts and dropped connections, as huggingface_hub's own backoff retries them (its HTTP client's classes).
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = getattr(_http, "_DEFAULT_RETRY_ON_EXCEPTIONS", ())
# The HTTP statuses huggingface_hub's own backoff retries (timeout, rate limit, server errors).
_RETRIED_STATUS_CODES: tuple[int, ...] = getattr(
    _http, "_DEFAULT_RETRY_ON_STATUS_CODES", (408, 429, 500, 502, 503, 504)
)
_HINTS = {
    401: "The token is missing or invalid: pass --token, set HF_TOKEN or run `hf auth login`.",
    403: "The token may not write there: check the repo's namespace and the token's permissions.",
    412: "The repo changed during the upload; run it again to resume.",
}
T = TypeVar("T")

LICENSE_KEYS = ("license", "license_name", "license_link")
"""The licence metadata of a card (`license_name` / `license_link` name a licence `other` stands for)."""

CARD_DATA_KEYS = (
    *LICENSE_KEYS, "base_model", "datasets", "tags", "library_name", "pipeline_tag", "metrics", "labels",
    "eval_results",
)  # fmt: skip
"""Fields of a model card that go into its YAML metadata rather than its text (`eval_results`, a list of
huggingface_hub `EvalResult`s, becomes the `model-index`, named by the `model_name` field)."""

RECORDED_CARD_SECTIONS = ("Training", "Evaluation")
"""Sections of a model card that record what the weights cannot tell (how they were trained, what they measured)."""

DATASET_CARD_DATA_KEYS = (
    *LICENSE_KEYS, "tags", "task_categories", "task_ids", "size_categories", "source_datasets", "pretty_name",
    "language", "annotations_creators",
)  # fmt: skip
"""Fields of a dataset card that go into its YAML metadata (huggingface_hub's `DatasetCardData` fields)."""

UNKNOWN_LICENSE = "other"
"""`license` of derived work whose origin's card is missing, unreadable or names no licence."""

DEFAULT_CARD_DATA: dict[str, Any] = {
    "library_name": "diffusers",
    "license": "apache-2.0",
    "tags": ["synfer", "facial-expression-recognition", "action-units", "synthetic-data"],
}
"""Metadata of every model card unless its template, its base model or its fields set them: weights this package
trains from scratch are released under the package's own licence."""

TEMPLATE_CARD_DATA: dict[str, dict[str, Any]] = {
    "synfer_pipeline.md": {"pipeline_tag": "text-to-image"},
    "synfer_lora.md": {
        "pipeline_tag": "text-to-image", "tags": [*DEFAULT_CARD_DATA["tags"], "lora", "text-to-image"],
    },  # fmt: skip
    "feranno.md": {"pipeline_tag": "image-classification"},
    "fer_classifier.md": {"library_name": "transformers"},
    "autoencoder.md": {"tags": [*DEFAULT_CARD_DATA["tags"], "autoencoder"]},
    "au_adapter.md": {"library_name": None},
}
"""What every card of a template is, over `DEFAULT_CARD_DATA`: a `SynFERPipeline` is text-to-image, its LoRA
weights too, a `FERAnnoPipeline` an image classifier, `examples/train_fer_classifier.py`'s models transformers
checkpoints (their `pipeline_tag` depends on the task), `examples/train_autoencoder.py`'s an autoencoder. An AU
adapter names no `library_name`: diffusers cannot load it without `synfer_diffusers`."""

_SIZE_BOUNDS = ("1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T")


def model_card_template(name: str) -> str:
    """Text of a template shipped in `model_cards/` (installed as `synfer_diffusers/model_cards`)."""
    return resources.files("synfer_diffusers").joinpath("model_cards", name).read_text(encoding="utf-8")


def is_hub_repo_id(name_or_path: str | os.PathLike) -> bool:
    """Whether `name_or_path` is a Hub repo id (`name` or `owner/name`) rather than a local path: an existing path,
    `./x`, `~/x`, an absolute or deeper path or free text is not."""
    name = os.fspath(name_or_path)
    if os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _entries(entries: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    """A card field that holds one name or several, as a list of strings."""
    return [os.fspath(entries)] if isinstance(entries, (str, os.PathLike)) else [os.fspath(e) for e in entries or []]


def split_hub_ids(entries: str | os.PathLike | Sequence[str | os.PathLike] | None) -> tuple[list[str], list[str]]:
    """`(hub_ids, others)`: the entries that are Hub repo ids, for the card's metadata, and the rest (local
    folders, descriptions), for its text."""
    entries = _entries(entries)
    return [e for e in entries if is_hub_repo_id(e)], [e for e in entries if not is_hub_repo_id(e)]


def load_card_metadata(name_or_path: str | os.PathLike, repo_type: str = "model") -> dict[str, Any] | None:
    """The YAML metadata of the card of a local folder (its `README.md`) or of a Hub repo (`repo_type` `"model"` or
    `"dataset"`; from the local cache when offline). `None` where there is no card, and, with a warning, where it
    cannot be read (offline and not cached, missing or private repo, malformed YAML): never raises for those."""
    card_class = DatasetCard if repo_type == "dataset" else ModelCard
    if os.path.isdir(name_or_path):
        source = os.path.join(name_or_path, "README.md")
        if not os.path.isfile(source):
            return None
    elif is_hub_repo_id(name_or_path):
        source = os.fspath(name_or_path)
    else:
        return None
    try:
        return card_class.load(source, ignore_metadata_errors=True).data.to_dict()
    except (OSError, ValueError, yaml.YAMLError, *_TRANSIENT_ERRORS) as error:
        logger.warning(f"Could not read the card of {os.fspath(name_or_path)!r}: {type(error).__name__}: {error}")
        return None


def license_label(metadata: Mapping[str, Any] | None) -> str | None:
    """The licence a card's metadata names, for a card's text: `license_name` where `license` is `other`, else
    `license`; `None` where it names none (no card, no `license`, `other` without a name)."""
    if not metadata:
        return None
    return metadata.get("license_name") if metadata.get("license") == UNKNOWN_LICENSE else metadata.get("license")


def inherited_license(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The licence metadata (`LICENSE_KEYS`) that work derived from something with card `metadata` inherits;
    `{"license": UNKNOWN_LICENSE}` where `metadata` is `None` or names no licence."""
    if not metadata or not metadata.get("license"):
        return {"license": UNKNOWN_LICENSE}
    return {key: metadata[key] for key in LICENSE_KEYS if metadata.get(key)}


def base_model_card_data(base_model: str | os.PathLike) -> dict[str, Any]:
    """Card metadata of a model trained from `base_model` (a Hub repo id or a local folder), from the base's card:

    - `license` (and `license_name` / `license_link`): the base's, or `UNKNOWN_LICENSE` (see [`inherited_license`]);
    - `base_model`: `base_model` itself if it is a Hub id; for a local folder the Hub ids its own card names as
      `base_model` (the nearest ancestors on the Hub), else absent.

    Example:

    ```py
    >>> base_model_card_data("runs/sd15-fetext")  # a local fine-tune of SD 1.5, its card read from README.md
    {'license': 'creativeml-openrail-m', 'base_model': 'stable-diffusion-v1-5/stable-diffusion-v1-5'}
    ```
    """
    metadata = load_card_metadata(base_model)
    if is_hub_repo_id(base_model):
        hub_base = os.fspath(base_model)
    else:
        ancestors = split_hub_ids((metadata or {}).get("base_model"))[0]
        hub_base = ancestors[0] if len(ancestors) == 1 else ancestors
    return {**inherited_license(metadata), **({"base_model": hub_base} if hub_base else {})}


def size_category(num_examples: int) -> str:
    """The Hub's `size_categories` value for a dataset of `num_examples` rows (`n<1K`, `1K<n<10K`, ..., `n>1T`)."""
    for i, upper in enumerate(_SIZE_BOUNDS):
        if num_examples < 1000 * 10**i:
            return f"{_SIZE_BOUNDS[i - 1]}<n<{upper}" if i else f"n<{upper}"
    return f"n>{_SIZE_BOUNDS[-1]}"


def split_card_fields(
    fields: Mapping[str, Any], metadata_keys: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(metadata, text_fields)`: the fields in `metadata_keys` that are set, and all the others."""
    metadata = {k: v for k, v in fields.items() if k in metadata_keys and v is not None}
    return metadata, {k: v for k, v in fields.items() if k not in metadata_keys}


def provenance_text(
    base_model: str | os.PathLike | None,
    base_data: Mapping[str, Any],
    datasets: str | os.PathLike | Sequence[str | os.PathLike] | None,
) -> str:
    """Markdown lines naming a model's base model (with the licence its card gives) and training data, Hub ids and
    local folders alike: where a card's metadata cannot name local things, its text does."""
    lines = []
    if base_model is not None:
        where = f"`{os.fspath(base_model)}`"
        if not is_hub_repo_id(base_model):
            ancestors = ", ".join(f"`{b}`" for b in split_hub_ids(base_data.get("base_model"))[0])
            note = f"; its base model: {ancestors}" if ancestors else ""
            where = f"the local checkpoint {where} (not on the Hub{note})"
        label = license_label(base_data)
        if label is None:
            licence = "its card names no licence or could not be read: check the base model's terms before use"
        else:
            licence = f"licensed `{label}` (read from its card)"
        lines.append(f"- Base model: {where}; {licence}.")
    named = [f"`{d}`" if is_hub_repo_id(d) else f"`{d}` (not on the Hub)" for d in _entries(datasets)]
    if named:
        lines.append(f"- Training data: {', '.join(named)}.")
    return "\n".join(lines)


def render_model_card(template_name: str, fields: Mapping[str, Any]) -> ModelCard:
    """Renders a template with huggingface_hub's `ModelCard.from_template`.

    Keys in `CARD_DATA_KEYS` become YAML metadata, over the template's `TEMPLATE_CARD_DATA` over `DEFAULT_CARD_DATA`;
    the others are template variables. Two fields get special care:

    - `base_model` (a Hub id or a local folder): the metadata inherits [`base_model_card_data`] (an explicit
      `license` still wins); the template gets `base_model` as given and `provenance` names it;
    - `datasets`: only Hub ids go into the metadata; `provenance` names them all.

    Example:

    ```py
    >>> card = render_model_card("synfer_pipeline.md", {**pipe.model_card_fields(), "base_model": "runs/stage_a"})
    >>> card.data.license  # stage A's, from runs/stage_a/README.md
    'apache-2.0'
    ```
    """
    metadata, text_fields = split_card_fields(fields, CARD_DATA_KEYS)
    if "eval_results" in metadata:
        metadata["model_name"] = text_fields.get("model_name")  # the model-index's name: the card's title
    base_model = metadata.pop("base_model", None)
    base_data = base_model_card_data(base_model) if base_model is not None else {}
    datasets = metadata.pop("datasets", None)
    data = {**DEFAULT_CARD_DATA, **TEMPLATE_CARD_DATA.get(template_name, {}), **base_data, **metadata}
    hub_datasets = split_hub_ids(datasets)[0]
    if hub_datasets:
        data["datasets"] = hub_datasets
    text_fields["provenance"] = provenance_text(base_model, base_data, datasets)
    if base_model is not None:
        text_fields["base_model"] = os.fspath(base_model)
    return ModelCard.from_template(
        ModelCardData(**data), template_str=model_card_template(template_name), **text_fields
    )


def card_section(card: str, heading: str) -> str | None:
    """The text of the `## {heading}` section of a rendered card, or None."""
    match = re.search(rf"^## {re.escape(heading)}\n\n(.*?)\n*(?=^## |\Z)", card, flags=re.DOTALL | re.MULTILINE)
    return match.group(1) if match else None


def recorded_card_fields(folder: str | os.PathLike) -> dict[str, Any]:
    """What the card of a saved checkpoint (`folder/README.md`) records that its weights cannot tell: the text of its
    `RECORDED_CARD_SECTIONS` (`training`, `evaluation`) and its `model-index` (`model_name`, `eval_results`), as
    card fields; empty where there is no card. Saving the loaded checkpoint again renders them as they were."""
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return {}
    card = ModelCard.load(path, ignore_metadata_errors=True)
    fields = {heading.lower(): card_section(card.text, heading) for heading in RECORDED_CARD_SECTIONS}
    if card.data.eval_results:
        fields.update(model_name=card.data.model_name, eval_results=card.data.eval_results)
    return {name: value for name, value in fields.items() if value is not None}


def write_model_card(folder: str | os.PathLike, template_name: str, fields: Mapping[str, Any]) -> str:
    """Renders the card and writes it as `folder/README.md`; returns the path."""
    path = os.path.join(folder, "README.md")
    render_model_card(template_name, fields).save(path)
    return path


def call_with_retries(call: Callable[[], T], what: str, max_retries: int = 3, retry_wait: float = 1.0) -> T:
    """Runs `call`, an idempotent Hub operation, retrying its transient failures; returns its result.

    Transient are HTTP 408, 429 and 5xx, timeouts and dropped connections: they are retried up to `max_retries`
    times, waiting `retry_wait * 2**attempt` seconds or the server's `Retry-After` when that is longer (the Hub's
    429 carries one). Any other error (401, 403, 404, 412, an invalid card, ...) is raised at once. `what` names the
    operation in the log and in the message added to a Hub error."""
    for attempt in range(max_retries + 1):
        try:
            return call()
        except (HfHubHTTPError, *_TRANSIENT_ERRORS) as error:
            response = getattr(error, "response", None)
            status = getattr(response, "status_code", None)
            if status is not None and status not in _RETRIED_STATUS_CODES:
                hint = _HINTS.get(status, "")
                _add_to_message(error, f"{what}: HTTP {status} is not transient, not retried. {hint}")
                raise
            if attempt == max_retries:
                _add_to_message(error, f"{what} still failed after {max_retries} retries.")
                raise
            wait = max(retry_wait * 2**attempt, _retry_after(response))
            logger.warning(f"{what} failed ({error}); retry {attempt + 1}/{max_retries} in {wait:.1f} s.")
            time.sleep(wait)
    raise AssertionError("unreachable")


def _retry_after(response: Any) -> float:
    """The seconds a response's `Retry-After` header asks for (0 when absent or an HTTP date)."""
    value = str(getattr(response, "headers", {}).get("Retry-After", "")).strip()
    return float(value) if value.isdigit() else 0.0


def _add_to_message(error: BaseException, message: str) -> None:
    if isinstance(error, HfHubHTTPError):
        error.append_to_message("\n" + message.strip())


def hub_read_error(error: BaseException) -> HfHubHTTPError | LocalEntryNotFoundError | None:
    """The huggingface_hub error in `error`'s chain of causes (the HF libraries wrap it in their own), if any."""
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, (HfHubHTTPError, LocalEntryNotFoundError)):
        seen = seen.__cause__ or seen.__context__
    return seen


def load_error_reason(error: BaseException) -> str:
    """Why loading a model or dataset failed, in one line: for a read from the Hub ([`hub_read_error`]) no repo,
    private, gated, no such revision or file, offline and not cached, or another HTTP status; otherwise the first
    line of `error`."""
    seen = hub_read_error(error)
    if seen is None:
        lines = str(error).strip().splitlines()
        return lines[0] if lines else type(error).__name__
    status = getattr(getattr(seen, "response", None), "status_code", None)
    http = f" (HTTP {status})" if status else ""
    if isinstance(seen, GatedRepoError):
        return f"the repo is gated{http}: request access on its Hub page, then use a token that has it."
    if isinstance(seen, RepositoryNotFoundError):
        return f"no such repo on the Hub{http}, or it is private and the token may not read it."
    if isinstance(seen, RevisionNotFoundError):
        return f"no such revision in the repo{http}."
    if isinstance(seen, RemoteEntryNotFoundError):
        return f"a file it needs is not in the repo{http}."
    if isinstance(seen, LocalEntryNotFoundError):
        return "it is not in the local cache and the Hub cannot be reached (offline)."
    return f"the Hub answered{http}: {str(seen).strip().splitlines()[0]}"


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

    The commit is atomic on the Hub: either every file is published or none is. Transient failures are retried
    ([`call_with_retries`]); files already uploaded to LFS storage are not sent again. `ignore_patterns` are glob
    patterns of files to leave out (relative to `folder`)."""
    api = HfApi(token=token)

    def upload() -> str:
        repo = api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True).repo_id
        return api.upload_folder(
            repo_id=repo, folder_path=folder, commit_message=commit_message, repo_type=repo_type,
            ignore_patterns=ignore_patterns,
        ).commit_url  # fmt: skip

    return call_with_retries(upload, f"Upload of {os.fspath(folder)} to {repo_id}", max_retries, retry_wait)
