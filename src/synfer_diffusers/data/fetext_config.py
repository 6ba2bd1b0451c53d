"""[`FETextConfig`]: everything that determines an FEText set besides its source (no torch or datasets: the
command line reads its help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from ..facs import AUSpace
from ..prompts import DEFAULT_CAPTION_PROMPT
from ..value_checks import check_int, check_number

__all__ = ["BAD_IMAGE_POLICIES", "FETextConfig"]

BadImagePolicy = Literal["skip", "error"]
BAD_IMAGE_POLICIES: tuple[str, ...] = get_args(BadImagePolicy)


@dataclass
class FETextConfig:
    """Everything that determines an FEText set besides its source (all of it is stored in the plan).

    Example:

    ```py
    >>> config = FETextConfig(au_estimator="runs/fetext_au_estimator", label_column="label", image_size=64)
    ```
    """

    au_estimator: str = field(
        metadata={
            "help": "AU estimator: folder or Hub id of a transformers image model with one output per AU "
            "(`config.au_names` or `id2label` name the AUs; problem_type regression or "
            "multi_label_classification)."
        },
    )
    au_space: str = field(
        default="disfa12",
        metadata={"help": "AU space of `action_units` (an `AUSpace` preset).", "choices": AUSpace.presets()},
    )
    au_fill_missing: float | None = field(
        default=None,
        metadata={
            "help": "Value of AUs of `au_space` the estimator does not predict; default: such AUs are an error."
        },
    )
    occurrence_threshold: float = field(
        default=1.0, metadata={"help": "Intensity at or above which an AU counts as present in an occurrence space."}
    )
    captioner: str = field(
        default="template",
        metadata={
            "help": "'template' (captions from label and AUs, offline) or the folder / Hub id of a "
            "transformers image-text-to-text model."
        },
    )
    caption_prompt: str | None = field(
        default=DEFAULT_CAPTION_PROMPT,
        metadata={
            "help": "Prompt of a model captioner (expression and facial-muscle detail); None (or '') for models "
            "that take no prompt."
        },
    )
    caption_max_new_tokens: int = field(default=77, metadata={"help": "Length limit of model captions, in tokens."})
    caption_seed: int = field(default=0, metadata={"help": "Seed of the template captioner's wording choices."})
    image_column: str = field(default="image", metadata={"help": "Column of the source holding the images."})
    label_column: str | None = field(
        default=None,
        metadata={"help": "Column of expression labels (ClassLabel or strings naming EXPRESSIONS); None: unlabelled."},
    )
    description_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with a coarse description per image for the template captioner "
            "(default: 'a photo of a face')."
        },
    )
    face_box_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with a face box [x0, y0, x1, y1] in pixels per image (e.g. from a face detector); "
            "the image is cropped to it (plus `face_box_margin`)."
        },
    )
    face_box_margin: float = field(
        default=0.2, metadata={"help": "Margin added on each side of a face box, as a fraction of its size."}
    )
    center_crop: bool = field(default=False, metadata={"help": "Crop a centre square (after any face box crop)."})
    image_size: int | None = field(
        default=None, metadata={"help": "Resize images to this square side (after cropping); None keeps their size."}
    )
    min_image_size: int = field(
        default=32, metadata={"help": "Images (after cropping) whose shorter side is below this are too small."}
    )
    min_sharpness: float | None = field(
        default=None,
        metadata={
            "help": "Blur filter: minimum variance of the Laplacian of the grey image (0-255 units, after "
            "resizing); None disables it."
        },
    )
    bad_images: BadImagePolicy = field(
        default="skip",
        metadata={
            "help": "Unreadable, too small or blurry images: 'skip' (leave out and count) or 'error' (stop "
            "before writing)."
        },
    )
    shard_size: int = field(default=1000, metadata={"help": "Rows per parquet shard (fixes the shard grid)."})

    def __post_init__(self) -> None:
        AUSpace.from_preset(self.au_space)
        if self.bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"`bad_images` must be one of {list(BAD_IMAGE_POLICIES)}, got {self.bad_images!r}.")
        for name in ("caption_max_new_tokens", "min_image_size", "shard_size"):
            check_int(name, getattr(self, name), 1)
        check_int("image_size", self.image_size, 1, optional=True)
        check_number("min_sharpness", self.min_sharpness, 0, optional=True)
        check_number("face_box_margin", self.face_box_margin, 0, 1)
        if self.caption_prompt == "":
            self.caption_prompt = None

    @property
    def space(self) -> AUSpace:
        return AUSpace.from_preset(self.au_space)
