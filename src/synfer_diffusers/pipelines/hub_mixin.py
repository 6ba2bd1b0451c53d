"""Saving and publishing pipelines with a model card from the package's templates."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

from huggingface_hub import snapshot_download

from ..hub_utils import push_folder_to_hub, write_model_card


class ModelCardPipelineMixin:
    """Makes a `DiffusionPipeline` of this package a Hub citizen: `from_pretrained` takes a folder or a repo id,
    `save_pretrained` adds a rendered `README.md` model card, and `push_to_hub` uploads in one commit. Subclasses set `model_card_template` (a file in `model_cards/`) and implement
    `model_card_fields()` (their own facts: sizes, labels, AU space, ...)."""

    model_card_template: str

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """[`DiffusionPipeline.from_pretrained`] from a folder or a Hub repo id. A repo is downloaded whole first:
        diffusers' own download step would look for this package's component modules as custom code files in
        the repo."""
        if not os.path.isdir(pretrained_model_name_or_path):
            pretrained_model_name_or_path = snapshot_download(
                str(pretrained_model_name_or_path),
                revision=kwargs.pop("revision", None),
                token=kwargs.pop("token", None),
                cache_dir=kwargs.get("cache_dir"),
                local_files_only=kwargs.get("local_files_only", False),
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

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
        """[`DiffusionPipeline.save_pretrained`] (safetensors) plus a `README.md` model card; `model_card` adds or
        overrides its fields (`base_model`, `datasets`, `metrics`, `license`, `training`, `evaluation`, ...). With
        `push_to_hub`, the folder is then uploaded to `repo_id` (default: the folder's name)."""
        super().save_pretrained(save_directory, **kwargs)
        write_model_card(save_directory, self.model_card_template, {**self.model_card_fields(), **(model_card or {})})
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
