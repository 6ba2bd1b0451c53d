"""Synthetic persons (`synfer generate --persons K`): K new identities, each in every requested expression.

Person `p` is planned from its own seed ([`person_seed`]) alone: a coarse description (the person: age, gender,
hair, accessories), the neutral prompt and AUs (EMFACS neutral with jitter), and its neutral face, generated with
those at a generated set's CFG ([`DEFAULT_GUIDANCE_SCALE`]) and no semantic guidance. The set is then an edit set of
these faces ([`plan_edit_sample`]): sample `i` is person `i // E` edited into expression `i % E` with
`SynFERPipeline.edit`, which inverts the neutral face under its own condition (the description with the neutral AUs)
and denoises under the target's, so the person comes back from the inverted noise. Every process plans a person the
same way and generates its face on first use, so a person's images share their source face across shards, processes
and resumes.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import PIL.Image
import torch

from ..pipelines.synfer.conditions import plan_image_condition
from ..pipelines.synfer.pipeline_synfer import SynFERPipeline
from .config import DEFAULT_DESCRIPTIONS, DEFAULT_GUIDANCE_SCALE, SyntheticSetConfig

T = TypeVar("T")


def person_seed(master_seed: int, person_id: int) -> int:
    """The seed of person `person_id`: 63 bits of `sha256("synfer-person:<master_seed>:<person_id>")` (a stream apart
    from the samples' seeds)."""
    digest = hashlib.sha256(f"synfer-person:{master_seed}:{person_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class _OnFirstUse(Generic[T]):
    """A sequence of `length` items, each made by `make(index)` when first read and kept."""

    def __init__(self, length: int, make: Callable[[int], T]):
        self._length, self._make, self._items = length, make, {}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> T:
        if index not in self._items:
            self._items[index] = self._make(index)
        return self._items[index]


class SyntheticPersons:
    """
    The source faces of a persons set, with the interface of an edit set's [`EditSource`] (`captions`,
    `action_units`, `images`, `image_sha256`, `name`, `fingerprint`): the captions are the persons' descriptions, the
    AUs their neutral AUs, and each face is generated on first use.

    Args:
        config ([`SyntheticSetConfig`]): the set's config (`persons`, `seed`, `descriptions`, `prototype_intensity`,
            `au_jitter`, `num_inference_steps`, `au_scale`, `height`, `width`).
        pipe ([`SynFERPipeline`]): the configured pipeline that generates the faces.
    """

    is_person = True

    def __init__(self, config: SyntheticSetConfig, pipe: SynFERPipeline):
        self.config, self.pipe = config, pipe
        self.seeds = [person_seed(config.seed, p) for p in range(config.persons)]
        descriptions = config.descriptions or DEFAULT_DESCRIPTIONS
        self.captions, self.prompts, rows = [], [], []
        for seed in self.seeds:
            rng = np.random.default_rng(seed)
            description = descriptions[rng.integers(len(descriptions))]
            jitter = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
            prompt, action_units = plan_image_condition(
                pipe.au_space, description, "neutral", None, jitter, config.prototype_intensity, config.au_jitter,
                enrich=True,
            )  # fmt: skip
            self.captions.append(description)
            self.prompts.append(prompt)
            rows.append(action_units.numpy())
        self.action_units = np.stack(rows).astype(np.float32)  # (K, num_aus)
        self.images = _OnFirstUse(len(self.seeds), self.generate_face)
        self.image_sha256 = _OnFirstUse(len(self.seeds), lambda p: hashlib.sha256(_png(self.images[p])).hexdigest())
        self.name = "synthetic persons"
        plan = {"seeds": self.seeds, "prompts": self.prompts, "action_units": self.action_units.tolist(),
                "guidance_scale": DEFAULT_GUIDANCE_SCALE}  # fmt: skip
        self.fingerprint = hashlib.sha256(json.dumps(plan).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.seeds)

    def generate_face(self, person_id: int) -> PIL.Image.Image:
        """Person `person_id`'s neutral face: its prompt and AUs, its seed, a generated set's CFG."""
        config = self.config
        return self.pipe(
            prompt=[self.prompts[person_id]], expression=["neutral"],
            action_units=torch.from_numpy(self.action_units[person_id : person_id + 1]), enrich_prompt=False,
            num_inference_steps=config.num_inference_steps, guidance_scale=DEFAULT_GUIDANCE_SCALE,
            au_scale=config.au_scale, height=config.height, width=config.width, label_with_feranno=False,
            generator=[torch.Generator().manual_seed(self.seeds[person_id])], output_type="pil",
        ).images[0]  # fmt: skip


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
