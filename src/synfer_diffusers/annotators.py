"""Annotators of real face images for FEText (SynFER stage 1): AU estimators and captioners.

Each annotator is a stock Hugging Face model given by a folder or a Hub repo id, wrapped so that its outputs
land in the package's vocabularies:

- [`AUEstimator`]: any transformers image model with one output per AU whose config names its AUs
  (`config.au_names`, else `config.id2label`): `problem_type="regression"` gives intensities,
  `"multi_label_classification"` occurrence probabilities. Outputs are mapped **by AU name** onto a target
  [`~synfer_diffusers.facs.AUSpace`] (never by index); AUs the model cannot provide are an error unless
  `fill_missing` gives their value.
- [`TemplateCaptioner`]: FEText-style captions from the known expression and the estimated AUs with the
  templates of [`~synfer_diffusers.prompts.enrich_prompt`]; the offline default.
- [`ModelCaptioner`]: a transformers image-text-to-text model (LLaVA, Qwen2-VL, SmolVLM, BLIP, GIT, ...) asked
  for expression and facial-muscle detail with [`DEFAULT_CAPTION_PROMPT`], the way SynFER prompted ShareGPT-4V.

Imports `facs`, `prompts` and transformers only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import PIL.Image
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel
from transformers import pipeline as transformers_pipeline
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from .facs import AUSpace, describe_au
from .prompts import DEFAULT_CAPTION_PROMPT, enrich_prompt

__all__ = [
    "DEFAULT_CAPTION_PROMPT",
    "AUEstimator",
    "CaptionBatch",
    "Captioner",
    "ModelCaptioner",
    "TemplateCaptioner",
]

OCCURRENCE_PROBABILITY_THRESHOLD = 0.5
"""A multi-label AU output counts as present at probability >= 0.5 (the threshold used with OpenGraphAU)."""

PROMPTLESS_MODEL_TYPES = ("vision-encoder-decoder",)
"""Image-text-to-text model types that caption from the image alone and take no text prompt."""

_PROBLEM_KINDS = {"regression": "intensity", "multi_label_classification": "occurrence"}


class AUEstimator:
    r"""
    An AU estimator: a transformers image model whose outputs are mapped by AU name onto a target AU space.

    Args:
        model (`PreTrainedModel`): an image model returning `logits` of shape `(batch, num_labels)`, one per AU.
            `config.au_names` (or else `config.id2label`) names the AUs; `config.problem_type` is `"regression"`
            (intensities 0-5, clipped to `config.au_max_value`, default 5) or `"multi_label_classification"`
            (occurrence logits).
        image_processor: the model's image processor (`AutoImageProcessor`), applied to PIL images.
        au_space (`AUSpace`): the target space of the returned values.
        fill_missing (`float`, *optional*): value of the target AUs the model does not predict; `None` (default)
            makes such AUs an error.
        occurrence_threshold (`float`, defaults to 1.0): an intensity at or above it counts as present when the
            target space is `"occurrence"` (FACS trace level A = 1).
        name (`str`, *optional*): how the estimator is recorded in plans and provenance columns.

    Raises:
        `ValueError`: outputs that do not name AUs, an unsupported `problem_type`, target AUs the model cannot
            provide (without `fill_missing`), or occurrence outputs for an intensity space.

    Example:

    ```py
    >>> estimator = AUEstimator.from_pretrained("runs/fetext_au_estimator", AUSpace.disfa12())
    >>> estimator([PIL.Image.open("face.png")]).shape
    torch.Size([1, 12])
    ```
    """

    def __init__(
        self,
        model: PreTrainedModel,
        image_processor: Any,
        au_space: AUSpace,
        fill_missing: float | None = None,
        occurrence_threshold: float = 1.0,
        name: str | None = None,
    ):
        config = model.config
        self.model, self.image_processor, self.au_space = model.eval(), image_processor, au_space
        self.name = name or getattr(config, "_name_or_path", None) or type(model).__name__
        if config.problem_type not in _PROBLEM_KINDS:
            raise ValueError(
                f"`au_estimator`: {self.name} has problem_type {config.problem_type!r}; expected one of "
                f"{list(_PROBLEM_KINDS)} (intensities or AU occurrence)."
            )
        self.source_names = _output_au_names(config, self.name)
        self.source_kind = _PROBLEM_KINDS[config.problem_type]
        if self.source_kind == "occurrence" and au_space.kind == "intensity":
            raise ValueError(
                f"`au_estimator`: {self.name} predicts AU occurrence, which cannot fill an intensity AU space; "
                "choose an occurrence space (e.g. `opengraphau41`) or an intensity estimator."
            )
        missing = [au for au in au_space.names if au not in self.source_names]
        if missing and fill_missing is None:
            raise ValueError(
                f"`au_estimator`: {self.name} predicts {list(self.source_names)}, not {missing} of the target AU "
                "space; pass `au_fill_missing` (e.g. 0.0) to fill them, or choose another `au_space`."
            )
        if missing:
            au_space.validate_value(fill_missing, missing[0], "au_fill_missing")
        self.fill_missing = fill_missing
        self.occurrence_threshold = occurrence_threshold
        self.max_value = float(getattr(config, "au_max_value", 5.0))
        # target AU j <- model output source_index[j] (-1: filled)
        self.source_index = [self.source_names.index(au) if au in self.source_names else -1 for au in au_space.names]

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        au_space: AUSpace,
        fill_missing: float | None = None,
        occurrence_threshold: float = 1.0,
        **kwargs: Any,
    ) -> AUEstimator:
        """Loads the model (safetensors only) and its image processor from a folder or a Hub repo id; `kwargs` go
        to `AutoModelForImageClassification.from_pretrained` (e.g. `revision`, `token`)."""
        model = AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True, **kwargs)
        processor = AutoImageProcessor.from_pretrained(
            name_or_path, **{k: v for k, v in kwargs.items() if k in ("revision", "token")}
        )
        return cls(model, processor, au_space, fill_missing, occurrence_threshold, name=str(name_or_path))

    def to_config(self) -> dict[str, Any]:
        """What determines the estimator's outputs, for a dataset plan."""
        return {"name": self.name, "au_names": list(self.source_names), "kind": self.source_kind,
                "fill_missing": self.fill_missing, "occurrence_threshold": self.occurrence_threshold}  # fmt: skip

    @torch.no_grad()
    def __call__(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:  # (B, au_space.num_aus)
        """AU values of `images` in the target space: intensities clipped to [0, 5], or 0/1 occurrences."""
        pixel_values = self.image_processor(
            [image.convert("RGB") for image in images], return_tensors="pt"
        ).pixel_values
        parameter = next(self.model.parameters())
        logits = self.model(pixel_values=pixel_values.to(parameter.device, parameter.dtype)).logits.float().cpu()
        if self.source_kind == "intensity":
            values = logits.clamp(0.0, self.max_value)  # (B, num_outputs)
            if self.au_space.kind == "occurrence":
                values = (values >= self.occurrence_threshold).float()
        else:
            values = (logits.sigmoid() >= OCCURRENCE_PROBABILITY_THRESHOLD).float()
        index = torch.tensor(self.source_index)
        mapped = values[:, index.clamp(min=0)]
        if self.fill_missing is not None:
            mapped[:, index < 0] = self.fill_missing
        return mapped.clamp(0.0, self.au_space.max_value)


def _output_au_names(config: Any, name: str) -> tuple[str, ...]:
    names = getattr(config, "au_names", None) or [config.id2label[i] for i in range(config.num_labels)]
    if len(names) != config.num_labels:
        raise ValueError(
            f"`au_estimator`: {name} has {config.num_labels} outputs but names {len(names)} AUs ({list(names)}); "
            "an AU estimator has one output per AU."
        )
    try:
        for au in names:
            describe_au(au)
    except ValueError as error:
        raise ValueError(
            f"`au_estimator`: the outputs of {name} ({list(names)}) cannot be mapped to action units: set "
            "`config.au_names` (or `id2label`) to FACS names such as 'AU12'."
        ) from error
    return tuple(names)


# ----------------------------------------------------------------------------------------------------------
# Captioners
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CaptionBatch:
    """What a captioner may use for a batch of images; lists are aligned with `images`.

    Args:
        images: the (cropped, resized) face images.
        expressions: the known expression of each image (one of `EXPRESSIONS`), or `None`.
        action_units: the AU dict of each image in the dataset's AU space.
        descriptions: a coarse description of each image (`None`: "a photo of a face").
        keys: a stable integer per image (its source index): wording choices are drawn from it.
    """

    images: list[PIL.Image.Image]
    expressions: list[str | None]
    action_units: list[dict[str, float]]
    descriptions: list[str | None]
    keys: list[int]


class Captioner(Protocol):
    """Anything that captions a [`CaptionBatch`] and describes itself for the dataset plan."""

    name: str

    def __call__(self, batch: CaptionBatch) -> list[str]: ...

    def to_config(self) -> dict[str, Any]: ...


class TemplateCaptioner:
    r"""
    FEText-style captions without a model: description + expression + strongest AUs in FACS words, with the
    templates and phrasings of [`~synfer_diffusers.prompts.enrich_prompt`] chosen per image from `(seed, key)`.

    Args:
        seed (`int`, defaults to 0): seed of the wording choices.

    Example:

    ```py
    >>> batch = CaptionBatch([image], ["happy"], [{"AU6": 2.0, "AU12": 3.5}], [None], [0])
    >>> TemplateCaptioner()(batch)[0]
    'a photo of a face, close-up, a joyful smile, lip corner puller and cheek raiser.'
    ```
    """

    name = "template"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed}

    def __call__(self, batch: CaptionBatch) -> list[str]:
        captions = []
        for expression, action_units, description, key in zip(
            batch.expressions, batch.action_units, batch.descriptions, batch.keys
        ):
            template, phrase = map(int, np.random.default_rng([self.seed, key]).integers(3, size=2))
            captions.append(enrich_prompt(description, expression, action_units, template, phrase))
        return captions


class ModelCaptioner:
    r"""
    Captions from a transformers image-text-to-text model (`pipeline("image-text-to-text")`).

    With a `prompt`, models whose processor has a chat template get one user turn (image + prompt), the others
    the prompt as text prefix; `prompt=None` captions from the image alone.

    Args:
        pipeline: a transformers `ImageTextToTextPipeline`.
        prompt (`str`, *optional*): the caption request; `None` for models that take no prompt.
        max_new_tokens (`int`, defaults to 77): caption length limit (77 = CLIP's context).
        name (`str`): how the captioner is recorded in plans and provenance columns.

    Example:

    ```py
    >>> captioner = ModelCaptioner.from_pretrained("HuggingFaceTB/SmolVLM-256M-Instruct")
    >>> captioner(CaptionBatch([image], [None], [{}], [None], [0]))
    ['A young woman with long brown hair smiles broadly; her cheeks are raised and her lip corners pulled up.']
    ```
    """

    def __init__(self, pipeline: Any, prompt: str | None, max_new_tokens: int = 77, name: str = "model"):
        self.pipeline, self.prompt, self.max_new_tokens, self.name = pipeline, prompt, max_new_tokens, name
        processor = getattr(pipeline, "processor", None)
        self.uses_chat = prompt is not None and getattr(processor, "chat_template", None) is not None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        prompt: str | None = DEFAULT_CAPTION_PROMPT,
        max_new_tokens: int = 77,
        device: str | int | None = None,
        **kwargs: Any,
    ) -> ModelCaptioner:
        """Checks from the config alone that the model is image-text-to-text and takes `prompt`, then loads it
        (safetensors only); `kwargs` go to `transformers.pipeline` (e.g. `revision`, `token`, `dtype`)."""
        model_type = AutoConfig.from_pretrained(name_or_path, **kwargs).model_type
        if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            raise ValueError(
                f"`captioner`: {name_or_path} is a {model_type!r} model, not an image-text-to-text model "
                "(e.g. llava, qwen2_vl, smolvlm, blip, git); use 'template' for captions without a model."
            )
        if prompt is not None and model_type in PROMPTLESS_MODEL_TYPES:
            raise ValueError(
                f"`caption_prompt`: {name_or_path} ({model_type}) captions from the image alone and takes no "
                "prompt; pass no prompt (CLI: --caption-prompt '')."
            )
        pipe = transformers_pipeline(
            "image-text-to-text",
            model=str(name_or_path),
            device=device,
            model_kwargs={"use_safetensors": True},
            **kwargs,
        )
        return cls(pipe, prompt, max_new_tokens, name=str(name_or_path))

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "prompt": self.prompt, "max_new_tokens": self.max_new_tokens}

    def __call__(self, batch: CaptionBatch) -> list[str]:
        images = [image.convert("RGB") for image in batch.images]
        generate = {"max_new_tokens": self.max_new_tokens, "return_full_text": False}
        if self.uses_chat:
            chats = [[{"role": "user", "content": [{"type": "image", "image": image},
                                                    {"type": "text", "text": self.prompt}]}] for image in images]  # fmt: skip
            outputs = [turns[0] for turns in self.pipeline(text=chats, **generate)]  # one list per chat
        else:  # the pipeline needs a text per image: the prompt as prefix, or "" to caption from the image alone
            outputs = self.pipeline(images=images, text=[self.prompt or ""] * len(images), **generate)
        return [" ".join(output["generated_text"].split()) for output in outputs]
