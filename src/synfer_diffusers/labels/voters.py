"""Voters: anything that gives probabilities over `EXPRESSIONS` for a batch of generated images.

A voter is one small protocol ([`Voter`]): a `name` (its key in the `votes` column and in `weights`), a `config()`
(JSON: everything that decides its votes, e.g. its weights' fingerprint; recorded in the plan so a resume or a
relabel with another voter is refused) and `vote(batch)` -> `(B, 7)` probabilities over `EXPRESSIONS`, where a row of
zeros abstains. The kinds shipped here:

| kind | class | votes from | `--voter` |
|---|---|---|---|
| `classifier` | [`ClassifierVoter`] | the images, any transformers image classifier | `classifier:PATH` (or `PATH`) |
| `feranno` | [`FERAnnoVoter`] | the images, a separate FERAnno pass ([`FERAnnoPipeline`] folder) | `feranno:PATH` |
| `callable` | [`CallableVoter`] | the images, a plain Python function | `callable:module.sub:function` |
| (in-loop) | [`GivenVoter`] | probabilities the pipeline computed, e.g. in-loop FERAnno | - |
| (target) | [`TargetVoter`] | the generation target, one-hot | - |

A new kind is one class with `from_spec(spec: str)` registered in [`VOTER_KINDS`].
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

from ..facs import EXPRESSIONS, classifier_expression_probabilities, map_classifier_labels
from ..fingerprint import module_fingerprint
from ..hub_utils import load_error_reason
from ..pipelines.synfer.semantic_guidance import GuidePreprocessing
from .config import TARGET_VOTER

__all__ = [
    "CallableVoter",
    "ClassifierVoter",
    "FERAnnoVoter",
    "GivenVoter",
    "TARGET_VOTER",
    "TargetVoter",
    "VOTER_KINDS",
    "VoteBatch",
    "Voter",
    "load_voter",
]


@dataclass
class VoteBatch:
    """What voters may look at for a batch of `B` images: `images` (PIL), `targets` (expression names, `None` where an
    image has none), `probabilities` that were computed elsewhere, by voter name (e.g. `{"feranno": (B, 7)}` from
    the generation loop) and, optionally, `pixel_values`: the same images as the pipeline made them, `(B, 3, H, W)`
    in [0, 1] on its device, which voters that read tensors ([`ClassifierVoter`], [`FERAnnoVoter`]) take instead of
    the PIL images."""

    images: Sequence[Any] | None = None
    targets: Sequence[str | None] | None = None
    probabilities: Mapping[str, torch.Tensor] = field(default_factory=dict)
    pixel_values: torch.Tensor | None = None

    def require_images(self, voter: str) -> Sequence[Any]:
        if self.images is None:
            raise ValueError(f"`images` are required: voter {voter!r} votes on them.")
        return self.images


@runtime_checkable
class Voter(Protocol):
    """A voter: `name`, `config()` (JSON) and `vote(batch) -> (B, 7)` probabilities (a zero row abstains)."""

    name: str

    def config(self) -> dict[str, Any]: ...

    def vote(self, batch: VoteBatch) -> torch.Tensor: ...


class ClassifierVoter:
    r"""
    A transformers image classifier as a voter: its logits reordered into `EXPRESSIONS` (unmapped outputs dropped),
    then softmax. Given a batch's `pixel_values` (the pipeline's tensors), it preprocesses them in torch on their
    device as its image processor would ([`GuidePreprocessing`], as semantic guidance does; within about 1/255 of
    the processor's PIL result) instead of re-encoding PIL images; its `config()` records that preprocessing.

    Args:
        model ([`~transformers.PreTrainedModel`]): an image classifier returning `logits` `(B, num_classes)` with an
            `id2label` in its config.
        image_processor: a transformers image processor; `image_processor(images, return_tensors="pt")` must give
            the model's `pixel_values`.
        name (`str`, *optional*): the voter's name in results and weights (default: `model.config.name_or_path`,
            else its `model_type`).
        label_mapping (`dict`, *optional*): renames the classifier's labels onto `EXPRESSIONS` (`None` drops an
            output), see [`~synfer_diffusers.facs.map_classifier_labels`]; unmappable labels raise a `ValueError`.
        batch_size (`int`, defaults to 32): images per forward pass in [`vote`].

    Example:

    ```py
    >>> voter = ClassifierVoter.from_pretrained("runs/judge", name="resnet", label_mapping={"contempt": None})
    ```
    """

    kind = "classifier"

    def __init__(
        self,
        model: PreTrainedModel,
        image_processor: Any,
        name: str | None = None,
        label_mapping: Mapping[str, str | None] | None = None,
        batch_size: int = 32,
    ):
        self.model = model.eval()
        self.image_processor = image_processor
        self.name = name or model.config.name_or_path or model.config.model_type
        self.index_map = map_classifier_labels(model.config.id2label, label_mapping, field="label_mapping")
        self.batch_size = batch_size
        try:
            self.preprocessing = GuidePreprocessing.from_processor(image_processor)
        except ValueError:  # a `size` of another form: this voter reads the PIL images (config: None)
            self.preprocessing = None

    @classmethod
    def from_pretrained(
        cls, path: str, name: str | None = None, label_mapping: Mapping[str, str | None] | None = None, **kwargs: Any
    ) -> ClassifierVoter:
        """Loads model and image processor with the Auto classes from a folder or a Hub repo id."""
        model = AutoModelForImageClassification.from_pretrained(path, **kwargs)
        return cls(model, AutoImageProcessor.from_pretrained(path), name=name, label_mapping=label_mapping)

    @classmethod
    def from_spec(cls, spec: str) -> ClassifierVoter:
        return cls.from_pretrained(spec)

    @property
    def family(self) -> str:
        """The model family (`model_type`, e.g. `resnet`), as the dataset card names it."""
        return self.model.config.model_type

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "fingerprint": module_fingerprint(self.model),
                "labels": self.index_map,
                "tensor_preprocessing": asdict(self.preprocessing) if self.preprocessing is not None else None}  # fmt: skip

    @torch.no_grad()
    def __call__(self, images: Any) -> torch.Tensor:  # (B, len(EXPRESSIONS))
        """Probabilities of PIL `images`, or of pipeline tensors `(B, 3, H, W)` in [0, 1] (where its image
        processor has a torch equivalent, `preprocessing`)."""
        if isinstance(images, torch.Tensor) and self.preprocessing is not None:
            pixel_values = self.preprocessing(images.to(self.model.device, torch.float32))
        else:
            pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        logits = self.model(pixel_values=pixel_values.to(self.model.device, self.model.dtype)).logits
        return classifier_expression_probabilities(logits, self.index_map).cpu()  # (B, C) -> (B, 7)

    def vote(self, batch: VoteBatch) -> torch.Tensor:  # (B, 7)
        tensors = batch.pixel_values is not None and self.preprocessing is not None
        images = batch.pixel_values if tensors else batch.require_images(self.name)
        return torch.cat([self(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)])


class FERAnnoVoter:
    r"""
    FERAnno as a separate pass on the images ([`FERAnnoPipeline`], e.g. a FERAnno checkpoint from the Hub), its
    labels mapped onto `EXPRESSIONS` by name. Each image is noised with a generator seeded by `seed`, so votes do
    not depend on the batch. (FERAnno *in the generation loop* is a [`GivenVoter`] named `"feranno"`.)

    Given a batch's `pixel_values` (the pipeline's tensors) at the labeller's resolution, it labels them on their
    device, rounded to the 8-bit values their PIL images hold: the same pixels as the PIL path, bit for bit, without
    the host round trip ([`pixels`]); at another resolution it reads the PIL images, which the labeller resizes.

    Args:
        pipeline ([`FERAnnoPipeline`]): the labeller.
        name (`str`, defaults to `"feranno_pass"`): the voter's name.
        seed (`int`, defaults to 0): seed of each image's noise.
        batch_size (`int`, defaults to 16): images per UNet pass.
    """

    kind = "feranno"

    def __init__(self, pipeline: Any, name: str = "feranno_pass", seed: int = 0, batch_size: int = 16):
        self.pipeline = pipeline
        self.name = name
        self.seed = seed
        self.batch_size = batch_size
        self.index_map = pipeline.head.expression_index_map(None)

    @classmethod
    def from_spec(cls, spec: str) -> FERAnnoVoter:
        from ..pipelines.synfer.pipeline_feranno import FERAnnoPipeline

        pipeline = FERAnnoPipeline.from_pretrained(spec)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline)

    def config(self) -> dict[str, Any]:
        components = {n: module_fingerprint(c) for n, c in sorted(self.pipeline.components.items()) if c is not None}
        return {"kind": self.kind, "name": self.name, "seed": self.seed, "fingerprints": components}

    def pixels(self, batch: VoteBatch) -> torch.Tensor | list[Any]:
        """What the labeller reads: `batch.pixel_values` `(B, 3, R, R)` at its resolution `R`, rounded to multiples of
        1/255 as `image_processor.numpy_to_pil` rounds them (so `2 x - 1` equals the PIL path's `v / 127.5 - 1`
        exactly), else the PIL images."""
        pixel_values = batch.pixel_values
        if pixel_values is not None and tuple(pixel_values.shape[-2:]) == (self.pipeline.resolution,) * 2:
            return (pixel_values.float() * 255).round() / 255
        return list(batch.require_images(self.name))

    def vote(self, batch: VoteBatch) -> torch.Tensor:  # (B, 7)
        images = self.pixels(batch)
        generators = [torch.Generator().manual_seed(self.seed) for _ in range(len(images))]
        logits = self.pipeline(images, batch_size=self.batch_size, generator=generators).probabilities.log()
        return classifier_expression_probabilities(logits, self.index_map)


class CallableVoter:
    r"""
    A plain function `images -> (B, 7)` probabilities over `EXPRESSIONS` as a voter (a zero row abstains).

    Args:
        function (`Callable`): the voter.
        name (`str`, *optional*): default the function's qualified name.
        fingerprint (`dict`, *optional*): JSON describing what decides its votes (default: its import path), for the
            plan.

    Example:

    ```py
    >>> def always_happy(images):
    ...     return torch.nn.functional.one_hot(torch.full((len(images),), 1), 7).float()
    >>> voter = CallableVoter(always_happy)
    ```
    """

    kind = "callable"

    def __init__(
        self,
        function: Callable[[Sequence[Any]], Any],
        name: str | None = None,
        fingerprint: Mapping[str, Any] | None = None,
    ):
        if not callable(function):
            raise TypeError(f"`function` must be callable, got {type(function).__name__}.")
        self.function = function
        self.path = f"{function.__module__}:{getattr(function, '__qualname__', type(function).__name__)}"
        self.name = name or self.path.rsplit(":", 1)[-1]
        self.fingerprint = dict(fingerprint or {"import_path": self.path})

    @classmethod
    def from_spec(cls, spec: str) -> CallableVoter:
        """`module.sub:function` (importable from the current environment)."""
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"a callable voter is named 'module.sub:function', got {spec!r}.")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot import {spec!r}: {error}") from error
        return cls(function)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, **self.fingerprint}

    def vote(self, batch: VoteBatch) -> torch.Tensor:  # (B, 7)
        images = batch.require_images(self.name)
        values = torch.as_tensor(self.function(images), dtype=torch.float32)
        if values.shape != (len(images), len(EXPRESSIONS)):
            raise ValueError(
                f"voter {self.name!r} returned shape {tuple(values.shape)}, expected ({len(images)}, {len(EXPRESSIONS)})."
            )
        return values


class GivenVoter:
    """Probabilities computed elsewhere and passed in the batch under this voter's `name`, e.g. FERAnno in the
    generation loop (`"feranno"`, the pipeline output's `feranno_probabilities`)."""

    kind = "given"

    def __init__(self, name: str):
        self.name = name

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name}

    def vote(self, batch: VoteBatch) -> torch.Tensor:  # (B, 7)
        if self.name not in batch.probabilities:
            raise ValueError(f"`probabilities` must hold voter {self.name!r}, got {sorted(batch.probabilities)}.")
        return torch.as_tensor(batch.probabilities[self.name], dtype=torch.float32).cpu()


class TargetVoter:
    """The generation target as a one-hot vote; it abstains for images without a target."""

    kind = "target"
    name = TARGET_VOTER

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name}

    def vote(self, batch: VoteBatch) -> torch.Tensor:  # (B, 7)
        if batch.targets is None:
            raise ValueError("`targets` are required with `VotingConfig(use_target=True)`.")
        votes = torch.zeros(len(batch.targets), len(EXPRESSIONS))
        for i, target in enumerate(batch.targets):
            if target is not None:
                votes[i, EXPRESSIONS.label_id(target, field=f"targets[{i}]")] = 1.0
        return votes


VOTER_KINDS: dict[str, Callable[[str], Voter]] = {
    ClassifierVoter.kind: ClassifierVoter.from_spec,
    FERAnnoVoter.kind: FERAnnoVoter.from_spec,
    CallableVoter.kind: CallableVoter.from_spec,
}
"""`--voter KIND:SPEC` loaders, by kind."""


def load_voter(spec: str, field: str = "voters") -> Voter:
    """The voter a `--voter` value names: `KIND:SPEC` with a kind of [`VOTER_KINDS`], or a bare path / Hub id of a
    transformers image classifier. Raises a `ValueError` naming `field` when it cannot be loaded."""
    kind, separator, rest = spec.partition(":")
    if not separator or kind not in VOTER_KINDS:
        kind, rest = ClassifierVoter.kind, spec
    try:
        return VOTER_KINDS[kind](rest)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as error:
        raise ValueError(
            f"`{field}`: {spec!r} could not be loaded as a {kind} voter: {load_error_reason(error)}"
        ) from error
