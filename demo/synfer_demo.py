"""What the demo's buttons call: plain functions of one loaded SynFER checkpoint, testable without a browser.

[`SynFERDemo`] wraps a [`~synfer_diffusers.SynFERPipeline`] and offers one method per button: [`SynFERDemo.preset`]
(an expression's EMFACS prototype for the AU controls), [`SynFERDemo.generate`] (a batch with its enriched prompts
and label probabilities), [`SynFERDemo.sweep`] (one AU from 0 to its maximum at a fixed seed, as a strip) and
[`SynFERDemo.edit`] (a face given another expression). Bad input is checked with the pipeline's own
`check_call` / `check_edit_call` before anything runs and raised as `gradio.Error`, which the page shows as a message.
`app.py` lays the page out and wires these methods to it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import PIL.Image
import torch

from synfer_diffusers import EXPRESSIONS, AUSpace, SynFERPipeline, expression_prototype
from synfer_diffusers.facs import describe_au
from synfer_diffusers.generate import resolve_pipeline
from synfer_diffusers.image_utils import resize_and_center_crop
from synfer_diffusers.labels import ClassifierVoter
from synfer_diffusers.value_checks import check_int

MODEL_ENV = "SYNFER_DEMO_MODEL"
"""Environment variable naming the checkpoint (a folder or Hub repo id) when `--model` is not given."""
NO_EXPRESSION = "none"
"""The preset for "no target expression": the AUs alone condition the image, which then has no target label."""
PRESETS = (NO_EXPRESSION, *EXPRESSIONS)
FERANNO, GUIDE = "FERAnno", "guide"
"""Names of the labellers whose probabilities the demo charts."""
MAX_SEED = 2**63 - 1

Progress = Callable[..., Any]
"""`gradio.Progress` or any callable taking `((done, total), desc=...)`."""


def au_label(name: str) -> str:
    """The control label of an AU: its name and FACS name, e.g. "AU12 lip corner puller"."""
    return f"{name} {describe_au(name)}"


def control_values(space: AUSpace, action_units: Mapping[str, float]) -> list:
    """AU values -> the values of the AU controls: one slider per AU (intensity spaces), or one checkbox group whose
    value lists the AUs present (occurrence spaces: value >= 0.5)."""
    if space.kind == "occurrence":
        return [[name for name in space.names if action_units.get(name, 0.0) >= 0.5]]
    return [float(action_units.get(name, 0.0)) for name in space.names]


def action_units_from_controls(space: AUSpace, values: Sequence) -> dict[str, float]:
    """The inverse of [`control_values`]: the AU controls' values -> `{name: value}` over the whole space."""
    if space.kind == "occurrence":
        (present,) = values
        return {name: float(name in present) for name in space.names}
    if len(values) != space.num_aus:
        raise gr.Error(f"`action_units`: expected {space.num_aus} slider values, got {len(values)}.")
    with page_errors():
        return {name: space.validate_value(value, name) for name, value in zip(space.names, values)}


@dataclass
class Generation:
    """A generated batch: PIL `images`, the `prompts` actually encoded (after enrichment) and, per labeller, the
    label `probabilities` `(num_images, 7)` in `EXPRESSIONS` order."""

    images: list[PIL.Image.Image]
    prompts: list[str]
    probabilities: dict[str, np.ndarray]

    def captions(self) -> list[str]:
        """Per image: its number and each labeller's most probable expression."""
        return [
            " · ".join([f"#{i + 1}"] + [f"{name}: {_top_label(p[i])}" for name, p in self.probabilities.items()])
            for i in range(len(self.images))
        ]

    def gallery(self) -> list[tuple[PIL.Image.Image, str]]:
        """`(image, caption)` pairs, as a `gradio.Gallery` shows them."""
        return list(zip(self.images, self.captions()))

    def prompt_text(self) -> str:
        """The distinct prompts of the batch, one a line."""
        return "\n".join(dict.fromkeys(self.prompts))

    def label_frame(self, labeller: str, index: int = 0) -> pd.DataFrame:
        """Image `index`'s probabilities by `labeller` as a bar-chart table (`expression`, `probability`)."""
        return pd.DataFrame({"expression": list(EXPRESSIONS), "probability": self.probabilities[labeller][index]})


@dataclass
class Edit:
    """An edit: the `source` as the model reads it (resized to its image size), the `edited` face and the target
    `prompt` it was denoised under."""

    source: PIL.Image.Image
    edited: PIL.Image.Image
    prompt: str


class SynFERDemo:
    r"""
    The demo's functions on one checkpoint.

    Args:
        pipe ([`~synfer_diffusers.SynFERPipeline`]): a pipeline whose UNet has an AU adapter.
        name (`str`): the checkpoint's name, shown in the page.

    Example:

    ```py
    >>> demo = SynFERDemo.from_model(None)  # the embedded default; or a folder / Hub repo id
    >>> out = demo.generate("a photo of a face", "happy", demo.preset("happy"), num_inference_steps=25)
    >>> out.images, out.prompts[0], out.probabilities["FERAnno"].shape
    ```
    """

    def __init__(self, pipe: SynFERPipeline, name: str):
        if pipe.au_space is None:
            raise ValueError("`pipe`: the demo needs a UNet with an AU adapter (AUConditionedUNet2DConditionModel).")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.name = name
        self.guide = None
        if pipe.guidance_classifier is not None and pipe.guidance_image_processor is not None:
            self.guide = ClassifierVoter(pipe.guidance_classifier, pipe.guidance_image_processor, name=GUIDE)

    @classmethod
    def from_model(cls, model: str | None = None) -> SynFERDemo:
        """Loads `model` (a `SynFERPipeline` folder or Hub repo id), else `$SYNFER_DEMO_MODEL`, else the embedded
        default (as `synfer generate` does, see `synfer_diffusers.generate.resolve_pipeline`)."""
        pipe, name = resolve_pipeline(model or os.environ.get(MODEL_ENV) or None)
        return cls(pipe, name)

    @property
    def au_space(self) -> AUSpace:
        return self.pipe.au_space

    @property
    def image_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def labellers(self) -> list[str]:
        """The labellers this checkpoint has: FERAnno (a `feranno_head`) and the guide classifier."""
        return [name for name, present in ((FERANNO, self.pipe.feranno_head), (GUIDE, self.guide)) if present]

    def preset(self, expression: str) -> dict[str, float] | None:
        """The EMFACS prototype of `expression` in the checkpoint's AU space (all AUs 0 for neutral); `None` for
        [`NO_EXPRESSION`]: the AUs stay as they are."""
        if expression == NO_EXPRESSION:
            return None
        with page_errors():
            return expression_prototype(expression, self.au_space)

    def generate(
        self,
        description: str,
        expression: str,
        action_units: Mapping[str, float],
        au_scale: float = 1.0,
        semantic_guidance_scale: float = 0.0,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        seed: int = 0,
        num_images: int = 4,
        progress: Progress | None = None,
    ) -> Generation:
        """`num_images` images of `description` with `expression` (or [`NO_EXPRESSION`]) and exactly these AUs, image
        `i` from seed `seed + i`, labelled by each of [`labellers`]."""
        seeds = _seeds(seed, num_images)
        kwargs = self._call_kwargs(description, expression, au_scale, semantic_guidance_scale, num_inference_steps,
                                   guidance_scale)  # fmt: skip
        kwargs.update(action_units=dict(action_units), num_images_per_prompt=num_images)
        return self._run(kwargs, seeds, progress, f"Generating {num_images} images")

    def sweep(
        self,
        description: str,
        expression: str,
        action_units: Mapping[str, float],
        au_name: str,
        num_frames: int = 6,
        au_scale: float = 1.0,
        semantic_guidance_scale: float = 0.0,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> tuple[PIL.Image.Image, list[float]]:
        """AU `au_name` from 0 to the space's maximum in `num_frames` steps (the other AUs as given), every frame from
        the same seed: returns the frames side by side (left: 0) and the AU's value in each."""
        with page_errors():
            self.au_space.index(au_name, "au_name")
            check_int("num_frames", num_frames, 2)
        values = np.linspace(0.0, self.au_space.max_value, num_frames).round(3).tolist()
        rows = [{**action_units, au_name: value} for value in values]
        kwargs = self._call_kwargs(description, expression, au_scale, semantic_guidance_scale, num_inference_steps,
                                   guidance_scale)  # fmt: skip
        kwargs["action_units"] = rows
        frames = self._run(kwargs, _seeds(seed, 1) * num_frames, progress, f"Sweeping {au_name}").images
        return horizontal_strip(frames), values

    def edit(
        self,
        image: PIL.Image.Image | None,
        source_expression: str,
        target: str,
        action_units: Mapping[str, float],
        description: str = "",
        edit_strength: float = 0.8,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> Edit:
        """Edits `image` (resized and centre-cropped to the model's size) into `target`: an expression, or
        [`NO_EXPRESSION`] for exactly `action_units`. The source's AUs are `source_expression`'s prototype (the
        checkpoint's AU estimator's estimate for [`NO_EXPRESSION`])."""
        if image is None:
            raise gr.Error("Upload a face to edit (`image`).")
        source = PIL.Image.fromarray(resize_and_center_crop(image, self.image_size))
        kwargs = {
            "image": source,
            "source_prompt": description.strip() or None,
            "edit_strength": edit_strength,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "generator": torch.Generator().manual_seed(_seeds(seed, 1)[0]),
        }
        with page_errors():
            if source_expression != NO_EXPRESSION:
                kwargs["source_action_units"] = expression_prototype(source_expression, self.au_space)
            if target == NO_EXPRESSION:
                kwargs["target_action_units"] = dict(action_units)
            else:
                kwargs["target_expression"] = target
            self.pipe.check_edit_call(**kwargs)
        _report(progress, 0, 1, "Inverting and editing")
        out = self.pipe.edit(**kwargs)
        _report(progress, 1, 1, "Edited")
        return Edit(source=source, edited=out.images[0], prompt=out.prompts[0])

    def _call_kwargs(
        self,
        description: str,
        expression: str,
        au_scale: float,
        semantic_guidance_scale: float,
        num_inference_steps: int,
        guidance_scale: float,
    ) -> dict[str, Any]:
        return {
            "prompt": description.strip() or None,
            "expression": None if expression == NO_EXPRESSION else expression,
            "au_scale": au_scale,
            "semantic_guidance_scale": semantic_guidance_scale,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
        }

    def _run(self, kwargs: dict[str, Any], seeds: list[int], progress: Progress | None, desc: str) -> Generation:
        """Checks the call (errors become page messages), runs it with one generator per image and labels it."""
        kwargs["generator"] = [torch.Generator().manual_seed(s) for s in seeds]
        with page_errors():
            self.pipe.check_call(**kwargs)
        steps = kwargs["num_inference_steps"]

        def on_step(pipe: SynFERPipeline, i: int, t: torch.Tensor, tensors: dict) -> dict:
            _report(progress, i + 1, steps, desc)
            return {}

        _report(progress, 0, steps, desc)
        out = self.pipe(**kwargs, callback_on_step_end=on_step)
        probabilities = {}
        if out.feranno_probabilities is not None:
            probabilities[FERANNO] = out.feranno_probabilities.float().cpu().numpy()
        if self.guide is not None:
            probabilities[GUIDE] = self.guide(out.images).numpy()
        return Generation(images=out.images, prompts=out.prompts, probabilities=probabilities)


@contextlib.contextmanager
def page_errors() -> Iterator[None]:
    """Raises the `ValueError` / `TypeError` of bad input as a `gradio.Error`: a message in the page, no traceback."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise gr.Error(str(error)) from error


def horizontal_strip(frames: Sequence[PIL.Image.Image]) -> PIL.Image.Image:
    """Equal-size frames side by side, left to right."""
    width, height = frames[0].size
    strip = PIL.Image.new("RGB", (width * len(frames), height))
    for i, frame in enumerate(frames):
        strip.paste(frame, (i * width, 0))
    return strip


def _seeds(seed: int, count: int) -> list[int]:
    """`seed, seed + 1, ...`, checked: a whole number whose `count` successors are valid torch seeds."""
    number = isinstance(seed, (int, float)) and not isinstance(seed, bool) and float(seed).is_integer()
    if not number or not 0 <= seed <= MAX_SEED - count:
        raise gr.Error(f"`seed` must be a whole number in [0, {MAX_SEED - count}], got {seed!r}.")
    return [int(seed) + i for i in range(count)]


def _report(progress: Progress | None, done: int, total: int, desc: str) -> None:
    if progress is not None:
        progress((done, total), desc=desc)


def _top_label(probabilities: np.ndarray) -> str:
    index = int(np.argmax(probabilities))
    return f"{EXPRESSIONS[index]} {probabilities[index]:.2f}"
