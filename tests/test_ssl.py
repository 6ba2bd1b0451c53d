"""The self-supervised recipe (`examples/train_ssl.py`, SimCLR) on tiny FaceWorld: the contrastive loss falls, a
resumed run repeats the uninterrupted one's losses and encoder, the linear probe scores the saved encoder, and bad
options are refused before training."""

import json

import pytest
import torch
from safetensors.torch import load_file

from training_chain import load_example, run  # `faceworld_dir`: the session fixture of conftest.py

SETTINGS = dict(dataset_name=None, resolution=32, train_batch_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                projection_dim=16, learning_rate=3e-3, checkpointing_steps=2)  # fmt: skip


def settings(faceworld_dir, **overrides):
    return {**SETTINGS, "dataset_name": faceworld_dir, **overrides}


def test_nt_xent_is_low_when_each_view_finds_its_partner():
    ssl = load_example("train_ssl")
    pairs = torch.eye(4).repeat(2, 1)  # rows i and i + 4 identical, orthogonal to the others
    assert ssl.nt_xent(pairs * 10, 0.1) < 1e-3
    assert ssl.nt_xent(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), 0.1) > 1.0


def test_contrastive_loss_falls_and_resume_repeats_the_run(faceworld_dir, tmp_path):
    whole = run("train_ssl", tmp_path / "whole", **settings(faceworld_dir, max_train_steps=12))
    assert sum(whole.losses[-3:]) < sum(whole.losses[:3]), whole.losses
    run("train_ssl", tmp_path / "split", **settings(faceworld_dir, max_train_steps=6))
    resumed = run("train_ssl", tmp_path / "split", "--resume_from_checkpoint", "latest",
                  **settings(faceworld_dir, max_train_steps=12))  # fmt: skip
    assert resumed.start_step == 6 and resumed.losses == whole.losses[6:]
    ours, theirs = (load_file(tmp_path / name / "model.safetensors") for name in ("split", "whole"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_linear_probe_scores_the_saved_encoder(faceworld_dir, tmp_path):
    run("train_ssl", tmp_path, **settings(faceworld_dir, max_train_steps=2, probe_dataset=faceworld_dir,
                                          probe_num_train=24, probe_steps=50))  # fmt: skip
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["num_train"] == 24 and probe["num_test"] == 8 and 0.0 <= probe["accuracy"] <= 1.0
    assert probe["train_loss"] < 1.9  # fits its 24 faces better than chance (ln 7 = 1.95)


@pytest.mark.parametrize(("overrides", "match"), [({"temperature": 0}, "temperature"),
                                                  ({"crop_scale": 1.5}, "crop_scale"),
                                                  ({"hidden_sizes": [8], "depths": [1, 1]}, "hidden_sizes")])  # fmt: skip
def test_bad_options_are_refused_before_training(faceworld_dir, tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        run("train_ssl", tmp_path, **settings(faceworld_dir, max_train_steps=2, **overrides))
    assert not any(tmp_path.iterdir())
