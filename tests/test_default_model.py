"""The embedded default checkpoint (FaceWorld, 64x64): it ships with the package, loads offline and generates
labelled faces, and the main job uses it when no model is given."""

import json
import os
import shutil

import datasets
import numpy as np
import PIL.Image
import torch

from synfer_diffusers import EXPRESSIONS, FERAnnoHead, SynFERPipeline
from synfer_diffusers.cli import main
from synfer_diffusers.data.faceworld import render_faces, sample_faceworld_attributes
from synfer_diffusers.generate import DEFAULT_MODEL_DIR, default_model_dir, resolve_pipeline

MAX_SIZE_MB = 21


def test_default_ships_as_safetensors_within_budget():
    files = [os.path.join(d, f) for d, _, names in os.walk(DEFAULT_MODEL_DIR) for f in names]
    assert any(f.endswith("model_index.json") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for f in files)
    assert sum(os.path.getsize(f) for f in files) / 2**20 < MAX_SIZE_MB
    assert "FaceWorld" in (DEFAULT_MODEL_DIR / "README.md").read_text()


def test_default_loads_offline_and_generates_labelled_faces(monkeypatch):
    monkeypatch.delenv("SYNFER_DEFAULT_MODEL", raising=False)
    assert default_model_dir() == DEFAULT_MODEL_DIR
    pipe, name = resolve_pipeline(None)
    assert name == "synfer_diffusers/default_model" and pipe.unet.dtype == torch.float32
    assert isinstance(pipe.feranno_head, FERAnnoHead) and pipe.guidance_classifier is not None
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a photo of a face", expression=["happy", "surprise"], num_inference_steps=4,
               guidance_scale=3.0, semantic_guidance_scale=1.0, output_type="np",
               generator=[torch.Generator().manual_seed(s) for s in (0, 1)])  # fmt: skip
    assert out.images.shape == (2, 64, 64, 3) and np.isfinite(out.images).all() and out.images.std() > 0.05
    assert out.feranno_probabilities.shape == (2, len(EXPRESSIONS))
    assert torch.allclose(out.feranno_probabilities.sum(-1), torch.ones(2), atol=1e-5)
    # the faces show the requested expressions, by the benchmark's committed judge (1.2 MB; trained on FaceWorld
    # labels, it takes no part in generation, guidance or voting), with its own preprocessing
    judged = _judge((out.images * 255).round().astype(np.uint8))
    assert [EXPRESSIONS[i] for i in judged.argmax(-1).tolist()] == ["happy", "surprise"], judged.softmax(-1)


def _judge(images: np.ndarray) -> torch.Tensor:
    """Logits of `benchmarks/measurement_models/judge` on uint8 images, as `examples/train_fer_classifier.py` scores."""
    from pathlib import Path

    from transformers import AutoModelForImageClassification

    from synfer_diffusers.evaluation import predict

    judge = AutoModelForImageClassification.from_pretrained(
        Path(__file__).resolve().parents[1] / "benchmarks" / "measurement_models" / "judge"
    )
    with torch.no_grad():
        return predict(judge, images)


def test_default_edits_with_estimated_source_action_units():
    """The default ships an AU estimator onto the UNet's AU space, so `edit(source_action_units=None)` runs; its
    estimate of FaceWorld faces is close to their ground-truth AUs."""
    pipe = SynFERPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    assert list(pipe.au_estimator.config.au_names) == list(pipe.au_space.names)
    attributes = sample_faceworld_attributes(4, 1)
    faces = [PIL.Image.fromarray(face) for face in render_faces(attributes)]
    out = pipe.edit(image=faces, target_expression="surprise", source_action_units=None, num_inference_steps=2,
                    output_type="np", generator=[torch.Generator().manual_seed(i) for i in range(4)])  # fmt: skip
    assert out.images.shape == (4, 64, 64, 3) and np.isfinite(out.images).all()
    estimated = np.array([[row[name] for name in pipe.au_space.names] for row in out.source_action_units])
    truth = attributes["action_units"]
    assert np.abs(estimated - truth).mean() < 0.6, estimated  # the estimator's test MAE: 0.233; a constant: 1.12


def test_main_job_without_model_uses_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNFER_DEFAULT_MODEL", raising=False)
    folder = tmp_path / "set"
    argv = [
        "generate",
        "--output-dir",
        str(folder),
        "--num-samples",
        "3",
        "--num-inference-steps",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    dataset = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 3 and dataset[0]["image"].size == (64, 64)
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["model"]["name"] == "synfer_diffusers/default_model"
    assert plan["labeler"]["name"] == "vote:guide,regnet,feranno,target"  # the shipped independent voter votes
    assert "regnet" in {vote["voter"] for vote in dataset[0]["votes"]}


def test_plain_from_pretrained_of_the_fp16_default_runs_without_a_dtype():
    """The default stores float16 weights; a plain `from_pretrained` (no `dtype`) must give one dtype for every
    component (transformers alone would keep the text encoder and the guide in float16 next to a float32 UNet)."""
    pipe = SynFERPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    dtypes = {name: module.dtype for name, module in pipe.components.items() if hasattr(module, "dtype")}
    assert set(dtypes.values()) == {torch.float32}, dtypes
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a photo of a face", expression="sad", num_inference_steps=2, guidance_scale=3.0,
               semantic_guidance_scale=1.0, output_type="np", generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert np.isfinite(out.images).all()
    half = SynFERPipeline.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.bfloat16)
    assert {m.dtype for m in half.components.values() if hasattr(m, "dtype")} == {torch.bfloat16}


def test_main_job_on_a_copy_of_the_default(tmp_path):
    """`synfer generate --model <a folder>` loads it with the plain `from_pretrained` route."""
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "model")
    argv = ["generate", "--output-dir", str(tmp_path / "set"), "--model", str(tmp_path / "model"),
            "--num-samples", "2", "--num-inference-steps", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
