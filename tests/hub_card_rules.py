"""The Hub's rules for the card metadata this package writes, as `validate-yaml` applies them (for `hub_server.py`).

`card_errors(readme, repo_type)` returns the Hub's error messages (Joi style: `"tags[0]" must be a string`) for the
YAML header of a `README.md`. Keys the rules do not name are accepted, as on the Hub. The value lists are the Hub's
(licence ids, task ids, size categories) for the values this package and its tests use, and more.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

LICENSES = frozenset(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
    gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr
    mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
    fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other""".split()
)
TASKS = frozenset(
    """text-classification token-classification table-question-answering question-answering zero-shot-classification
    translation summarization feature-extraction text-generation fill-mask sentence-similarity text-to-speech
    text-to-audio automatic-speech-recognition audio-to-audio audio-classification voice-activity-detection
    depth-estimation image-classification object-detection image-segmentation text-to-image image-to-text
    image-to-image image-to-video unconditional-image-generation video-classification reinforcement-learning robotics
    tabular-classification tabular-regression tabular-to-text table-to-text multiple-choice text-ranking
    text-retrieval time-series-forecasting text-to-video image-text-to-text visual-question-answering
    document-question-answering zero-shot-image-classification graph-ml mask-generation zero-shot-object-detection
    text-to-3d image-to-3d image-feature-extraction video-text-to-text keypoint-detection visual-document-retrieval
    any-to-any other""".split()
)
SIZE_CATEGORIES = frozenset(
    "unknown n<1K 1K<n<10K 10K<n<100K 100K<n<1M 1M<n<10M 10M<n<100M 100M<n<1B 1B<n<10B 10B<n<100B 100B<n<1T n>1T".split()
)
"""As `datasets` ships them (`datasets/utils/resources/size_categories.json`; `test_hub_server_strict.py` checks)."""
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_FEATURE_TYPES = ("dtype", "list", "sequence", "struct", "large_list")
_DTYPE = re.compile(  # the Arrow types of `datasets.Value` and the media features, as a card's `dtype` names them
    r"^(null|bool|u?int(8|16|32|64)|float(16|32|64)|date(32|64)|(large_)?(string|binary)|string_view|binary_view"
    r"|time32\[(s|ms)\]|time64\[(us|ns)\]|timestamp\[(s|ms|us|ns)(, tz=[^\]]+)?\]|duration\[(s|ms|us|ns)\]"
    r"|decimal(128|256)\(\d+, -?\d+\)|image|audio|video|pdf)$"
)

Check = Callable[[str, Any], list[str]]


def card_errors(readme: str, repo_type: str = "model") -> list[str]:
    """The Hub's errors for the metadata of `readme` (empty when it is valid or has no YAML header)."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme, re.DOTALL)
    if match is None:
        return []
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        return [f"Invalid YAML in the metadata: {error}"]
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return ['"value" must be of type object']
    rules = {**COMMON_RULES, **(DATASET_RULES if repo_type == "dataset" else MODEL_RULES)}
    return [error for key, check in rules.items() if key in metadata for error in check(key, metadata[key])]


# -- building blocks -----------------------------------------------------------------------------------------


def _string(key: str, value: Any) -> list[str]:
    return [] if isinstance(value, str) else [f'"{key}" must be a string']


def _integer(key: str, value: Any) -> list[str]:
    return [] if isinstance(value, int) and not isinstance(value, bool) else [f'"{key}" must be a number']


def _one_of(allowed: frozenset[str]) -> Check:
    def check(key: str, value: Any) -> list[str]:
        if value in allowed:
            return []
        return [f'"{key}" must be one of [{", ".join(sorted(allowed))}]']

    return check


def _list_of(item: Check) -> Check:
    def check(key: str, value: Any) -> list[str]:
        if not isinstance(value, list):
            return [f'"{key}" must be an array']
        return [error for i, v in enumerate(value) for error in item(f"{key}[{i}]", v)]

    return check


def _one_or_list(item: Check) -> Check:
    """A value the Hub accepts alone or as a list (`license`, `base_model`, `language`)."""
    as_list = _list_of(item)
    return lambda key, value: as_list(key, value) if isinstance(value, list) else item(key, value)


def _repo_id(key: str, value: Any) -> list[str]:
    if not isinstance(value, str):
        return [f'"{key}" must be a string']
    return [] if _REPO_ID.match(value) else [f'"{key}" is not a valid repository id: {value!r}']


def _mapping(fields: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    def check(key: str, value: Any) -> list[str]:
        if not isinstance(value, dict):
            return [f'"{key}" must be of type object']
        errors = [f'"{key}.{name}" is required' for name in required if name not in value]
        return errors + [e for name, c in fields.items() if name in value for e in c(f"{key}.{name}", value[name])]

    return check


def _feature(key: str, value: Any) -> list[str]:
    if not isinstance(value, dict):
        return [f'"{key}" must be of type object']
    errors = _string(f"{key}.name", value.get("name"))
    if isinstance(value.get("dtype"), str) and not _DTYPE.match(value["dtype"]):
        errors.append(f'"{key}.dtype" is not a known feature type: {value["dtype"]!r}')
    if not any(kind in value for kind in _FEATURE_TYPES):
        errors.append(f'"{key}" must contain at least one of [{", ".join(_FEATURE_TYPES)}]')
    return errors


_SPLIT = _mapping({"name": _string, "num_bytes": _integer, "num_examples": _integer}, required=("name",))
_DATASET_INFO = _mapping(
    {"config_name": _string, "features": _list_of(_feature), "splits": _list_of(_SPLIT),
     "download_size": _integer, "dataset_size": _integer},
)  # fmt: skip
_DATA_FILE = _mapping({"split": _string, "path": _one_or_list(_string)}, required=("split", "path"))


def _data_files(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return []
    if not isinstance(value, list):
        return [f'"{key}" must be one of [string, array]']
    return [e for i, v in enumerate(value) for e in (_string if isinstance(v, str) else _DATA_FILE)(f"{key}[{i}]", v)]


_CONFIG = _mapping({"config_name": _string, "data_files": _data_files}, required=("config_name",))

COMMON_RULES: dict[str, Check] = {
    "license": _one_or_list(_one_of(LICENSES)),
    "license_name": _string,
    "license_link": _string,
    "tags": _list_of(_string),
    "language": _one_or_list(_string),
    "pretty_name": _string,
}
DATASET_RULES: dict[str, Check] = {
    "task_categories": _list_of(_one_of(TASKS)),
    "task_ids": _list_of(_string),
    "size_categories": _list_of(_one_of(SIZE_CATEGORIES)),
    "source_datasets": _list_of(_string),
    "annotations_creators": _list_of(_string),
    "dataset_info": _one_or_list(_DATASET_INFO),
    "configs": _list_of(_CONFIG),
}


def _number(key: str, value: Any) -> list[str]:
    return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f'"{key}" must be a number']


_MODEL_INDEX = _mapping(  # the Hub's model-index schema: results of a model, each on a task and a dataset
    {
        "name": _string,
        "results": _list_of(_mapping({
            "task": _mapping({"type": _one_of(TASKS), "name": _string}, required=("type",)),
            "dataset": _mapping({"type": _string, "name": _string, "split": _string}, required=("type", "name")),
            "metrics": _list_of(_mapping({"type": _string, "value": _number, "name": _string}, required=("type", "value"))),
        }, required=("task", "dataset", "metrics"))),
    },
    required=("name", "results"),
)  # fmt: skip
MODEL_RULES: dict[str, Check] = {
    "model-index": _list_of(_MODEL_INDEX),
    "base_model": _one_or_list(_repo_id),
    "datasets": _list_of(_string),
    "library_name": _string,
    "pipeline_tag": _one_of(TASKS),
    "metrics": _list_of(_string),
}
