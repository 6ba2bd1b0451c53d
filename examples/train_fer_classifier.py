#!/usr/bin/env python
"""Train a FaceWorld judge (expression classifier) or AU regressor: a small stock transformers image model.

Two tasks, one script:

- `--task expression`: 7-way classification over `EXPRESSIONS` (`id2label` in the config), trained on the
  annotated (noisy) `label` column with label smoothing. Used as the independent judge of generated faces and,
  with another `--architecture` / `--seed`, as the semantic-guidance classifier.
- `--task action_units`: regression of the 12 DISFA intensities (`num_labels=12`, `problem_type="regression"`,
  `config.au_names`), trained with a smooth L1 loss.

Training images are augmented on the fly in torch (flip, small shift/scale/rotation, Gaussian blur with sigma
in [0, 1.5], 64 -> 32 -> 64 downscaling, brightness/contrast/colour jitter, noise), so that the model judges
expressions rather than sharpness or colour. Models are built from config (no downloads) and saved with
`save_pretrained` (safetensors) beside a ViT-style image processor (`x / 127.5 - 1` at 64x64), a model card
(`README.md`) and `metrics.json` with the test metrics on original, blurred (sigma 1) and 64 -> 32 -> 64 images.

Example:

```bash
python -m synfer_diffusers.data.faceworld --output-dir runs/faceworld --num-train 20000 --num-test 2000 --seed 0
python examples/train_fer_classifier.py --dataset_name runs/faceworld --output_dir runs/judge --task expression
python examples/train_fer_classifier.py --dataset_name runs/faceworld --output_dir runs/au_regressor \\
    --task action_units
```

`--test_dataset_name` scores the model on another dataset's `test` split, e.g. a classifier trained on a synthetic
set (`synfer generate`) tested on real labelled faces; labels are matched by class name, and a `clean_label` column,
where the test split has one (FaceWorld's true labels), is scored too.

The model, its training and its evaluation live in `synfer_diffusers.training.fer_classifier` and
`synfer_diffusers.evaluation` (which benchmark code imports); this file is their command line.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from synfer_diffusers.evaluation import IMAGE_SIZE
from synfer_diffusers.facs import EXPRESSIONS
from synfer_diffusers.hub_utils import write_model_card
from synfer_diffusers.training import parse_config, push_output_to_hub, run_from_command_line
from synfer_diffusers.training.fer_classifier import AU_NAMES, TrainFERConfig, evaluate, load_splits, train


def save(model: PreTrainedModel, config: TrainFERConfig, metrics: dict) -> None:
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    ViTImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(output_dir)
    (output_dir / "training_config.json").write_text(json.dumps(asdict(config), indent=2))
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_model_card(output_dir, "fer_classifier.md", model_card_fields(model, config, metrics))


def model_card_fields(model: PreTrainedModel, config: TrainFERConfig, metrics: dict) -> dict:
    """The `model_cards/fer_classifier.md` fields: what the model is, its data and its test numbers."""
    expression = config.task == "expression"
    return {
        "pipeline_tag": "image-classification" if expression else None,  # the Hub has no image-regression task
        "datasets": [config.dataset_name],
        "metrics": ["accuracy"] if expression else ["mae"],
        "labels": list(EXPRESSIONS) if expression else list(AU_NAMES),
        "task": config.task,
        "architecture": config.architecture,
        "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": IMAGE_SIZE,
        "training": f"Trained with `examples/train_fer_classifier.py` (`--task {config.task} --architecture "
        f"{config.architecture}`, {metrics['steps']} steps, seed {config.seed}) on `{config.dataset_name}`; every "
        "setting is in `training_config.json`.",
        "evaluation": f"On the test split (`metrics.json` has every number): {_headline(metrics['test'])}.",
    }


def _headline(metrics: dict) -> str:
    if "baseline_predict_train_mean" in metrics:
        return " | ".join(
            f"{name}: MAE {m['mae']:.3f}" for name, m in metrics.items() if isinstance(m, dict) and "mae" in m
        )
    kinds = ("clean_labels", "noisy_labels")  # clean only where the test split has FaceWorld's true labels
    return " | ".join(
        f"{name}: " + " ".join(f"{k.removesuffix('_labels')} {m[k]['accuracy']:.4f}" for k in kinds if k in m)
        for name, m in metrics.items() if isinstance(m, dict) and "noisy_labels" in m
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Parses flags, checks the data, trains, evaluates and saves; returns the metrics."""
    config = parse_config(TrainFERConfig, argv, description=__doc__.splitlines()[0])
    torch.set_num_threads(config.num_threads)
    splits = load_splits(config)  # every data error surfaces here, before training
    model, summary = train(config, splits)
    metrics = {
        "task": config.task,
        "architecture": config.architecture,
        **summary,
        "test": evaluate(model, config, splits),
    }
    save(model, config, metrics)
    if config.push_to_hub:
        print(f"Pushed {config.output_dir}: {push_output_to_hub(config.output_dir, config.hub_model_id)}")
    print(f"{config.task}: {summary['steps']} steps in {summary['train_seconds']} s; {_headline(metrics['test'])}")
    return metrics


if __name__ == "__main__":
    run_from_command_line(main)
