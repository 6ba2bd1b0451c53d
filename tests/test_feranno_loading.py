"""FERAnno from a SynFER checkpoint: `FERAnnoPipeline.from_pretrained(synfer_folder)` and `from_pipe(synfer_pipe)`
take its `feranno_head` as the head, label exactly as a FERAnno pipeline built from the same parts, and say
nothing about the SynFER-only components they skip."""

import logging

import numpy as np
import pytest
import torch

from synfer_diffusers import FERAnnoHead, FERAnnoPipeline, SynFERPipeline
from synfer_diffusers.tiny import make_tiny_components


@pytest.fixture(scope="module")
def synfer_folder(tmp_path_factory):
    components = make_tiny_components(seed=0, sample_size=8)
    pipe = SynFERPipeline(**components, feranno_head=FERAnnoHead.from_unet(components["unet"]))
    folder = tmp_path_factory.mktemp("synfer")
    pipe.save_pretrained(folder)
    return folder


def labels(pipe):
    images = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    return pipe(images, generator=torch.Generator().manual_seed(0)).probabilities


def test_from_pretrained_and_from_pipe_take_a_synfer_checkpoints_head(synfer_folder, caplog):
    synfer = SynFERPipeline.from_pretrained(synfer_folder)
    built = FERAnnoPipeline(**synfer.base_components, head=synfer.feranno_head)
    with caplog.at_level(logging.WARNING):
        loaded = FERAnnoPipeline.from_pretrained(synfer_folder)
        piped = FERAnnoPipeline.from_pipe(synfer)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "diffusers" in r.name]
    assert sorted(loaded.components) == sorted(piped.components) == ["head", "scheduler", "text_encoder", "tokenizer",
                                                                     "unet", "vae"]  # fmt: skip
    assert piped.head is synfer.feranno_head
    assert torch.equal(labels(loaded), labels(built)) and torch.equal(labels(piped), labels(built))


def test_from_pipe_without_a_head_says_so(synfer_folder):
    parts = make_tiny_components(seed=0, sample_size=8)
    with pytest.raises(ValueError, match="no FERAnno head"):
        FERAnnoPipeline.from_pipe(SynFERPipeline(**parts))
