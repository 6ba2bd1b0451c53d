"""Saving and publishing pipelines with a model card from the package's templates and the code files that let stock
diffusers load them (`trust_remote_code=True`, see `remote_code.py`)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from huggingface_hub import snapshot_download

from ..hub_utils import push_folder_to_hub, recorded_card_fields, write_model_card
from .remote_code import PACKAGE, package_config, write_code_files

logger = logging.getLogger(__name__)

_IN_PACKAGE = __name__.split(".")[0] == PACKAGE
"""False where this code runs as a checkpoint's code file (loaded by stock diffusers with `trust_remote_code`)."""


class ModelCardPipelineMixin:
    """Makes a `DiffusionPipeline` of this package a Hub citizen: `from_pretrained` takes a folder or a repo id,
    `save_pretrained` adds a rendered `README.md` model card and the code files for stock diffusers, and
    `push_to_hub` uploads in one commit. Subclasses set `model_card_template` (a file in `model_cards/`) and
    implement `model_card_fields()` (their own facts: sizes, labels, AU space, ...).

    A saved folder has the custom-code layout of diffusers: `pipeline_synfer.py` at the root, `unet/unet_au.py`, ...,
    named in `model_index.json` (`"_class_name": ["pipeline_synfer", "SynFERPipeline"]`,
    `"unet": ["unet_au", "AUConditionedUNet2DConditionModel"]`), so that
    `DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)` loads it without this package.
    With the package, `SynFERPipeline.from_pretrained(folder_or_repo_id)` loads it with the package's own classes and
    runs no code from the checkpoint; folders saved before this layout load too."""

    model_card_template: str

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """[`DiffusionPipeline.from_pretrained`] from a folder or a Hub repo id. A repo is downloaded whole first:
        diffusers' own download step reads `model_index.json` as it is, so it would ask for `trust_remote_code`
        (code files named there) or look for the package's modules as code files (folders saved before).

        Without `dtype` (or the deprecated `torch_dtype`), every component loads in float32, whatever dtype its
        weights were stored in: transformers keeps the stored dtype (an fp16 text encoder stays fp16) where diffusers
        loads its models in float32, and mixed dtypes fail at the first matmul. Pass `dtype=torch.float16` (or a
        per-component dict, as diffusers allows) for half precision.

        The checkpoint's card's Training and Evaluation sections and its `model-index` are kept in
        `recorded_card_fields`, so `save_pretrained` writes them again (pass `model_card={"training": ...,
        "evaluation": ...}` there once the weights have changed)."""
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            kwargs["dtype"] = torch.float32
        if not os.path.isdir(pretrained_model_name_or_path):
            pretrained_model_name_or_path = snapshot_download(
                str(pretrained_model_name_or_path),
                revision=kwargs.pop("revision", None),
                token=kwargs.pop("token", None),
                cache_dir=kwargs.get("cache_dir"),
                local_files_only=kwargs.get("local_files_only", False),
            )
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe.recorded_card_fields = recorded_card_fields(pretrained_model_name_or_path)
        return pipe

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        """[`~diffusers.ConfigMixin.load_config`], where `from_pretrained` reads `model_index.json`, with the
        custom-code names mapped back to the package's modules (`["unet_au", X]` ->
        `["synfer_diffusers.models.unet_au", X]`, `"_class_name": ["pipeline_synfer", X]` -> `X`): diffusers then
        loads the package's classes instead of the checkpoint's code files, and asks for no `trust_remote_code`."""
        loaded = super().load_config(*args, **kwargs)
        if not _IN_PACKAGE:
            return loaded
        if isinstance(loaded, tuple):
            return (package_config(loaded[0]), *loaded[1:])
        return package_config(loaded)

    def model_card_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        model_card: Mapping[str, Any] | None = None,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        """[`DiffusionPipeline.save_pretrained`] (safetensors) plus the code files for stock diffusers (see the class
        docstring) and a `README.md` model card: the pipeline's own facts, the sections recorded by the card it was
        loaded from (`recorded_card_fields`), and `model_card`, which adds or overrides fields (`base_model`,
        `datasets`, `metrics`, `license`, `training`, `evaluation`, `eval_results`, ...). With `push_to_hub`, the folder is then
        uploaded to `repo_id` (default: the folder's name)."""
        super().save_pretrained(save_directory, **kwargs)
        write_code_files(save_directory, type(self))
        recorded = getattr(self, "recorded_card_fields", {})  # pipelines built in code have none
        fields = {**self.model_card_fields(), **recorded, **(model_card or {})}
        try:
            write_model_card(save_directory, self.model_card_template, fields)
        except ModuleNotFoundError as error:
            if error.name != PACKAGE:
                raise
            logger.warning(
                f"Saved without a model card: its templates ship with {PACKAGE}, which is not installed (this "
                f"pipeline runs from a checkpoint's code files). Install it to write one."
            )
        if push_to_hub:
            push_folder_to_hub(save_directory, repo_id or os.path.basename(os.path.abspath(save_directory)))

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        model_card: Mapping[str, Any] | None = None,
    ) -> str:
        """Saves the pipeline with its model card and uploads it to `repo_id` in one commit; returns the URL."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, model_card=model_card)
            message = commit_message or f"Upload {type(self).__name__}"
            return push_folder_to_hub(folder, repo_id, commit_message=message, private=private, token=token)
