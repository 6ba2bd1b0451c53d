"""Training of a FaceWorld judge (expression classifier) or AU regressor, a small stock transformers image model
built from config (no downloads): [`TrainFERConfig`], [`train`] and [`evaluate`] (test metrics on original, blurred
and 64 -> 32 -> 64 images). `examples/train_fer_classifier.py` is their command line; the benchmarks train their
downstream classifiers with the same code.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    PreTrainedModel,
    RegNetConfig,
    RegNetForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from ..data.loading import expression_label_ids
from ..evaluation import (
    IMAGE_SIZE,
    downscale_upscale,
    evaluate_au_regressor,
    evaluate_expression_classifier,
    gaussian_blur,
    images_to_tensor,
    predict,
    to_pixel_values,
)
from ..facs import EXPRESSIONS, AUSpace
from ..value_checks import check_int, check_number, check_positive

__all__ = [
    "ARCHITECTURES",
    "AU_NAMES",
    "TASKS",
    "TrainFERConfig",
    "augment",
    "build_model",
    "evaluate",
    "load_splits",
    "train",
]

TASKS = ("expression", "action_units")
ARCHITECTURES = ("resnet", "convnext", "mobilenet_v2", "vit", "regnet")
AU_NAMES = AUSpace.disfa12().names


@dataclass
class TrainFERConfig:
    """Settings of one training run (every field is a command-line flag)."""

    dataset_name: str = field(metadata={"help": "A folder (or Hub id) that `datasets.load_dataset` reads, with "
                                               "`train` and `test` splits, e.g. one written by "
                                               "`python -m synfer_diffusers.data.faceworld`."})  # fmt: skip
    output_dir: str = field(metadata={"help": "Where to save the model, image processor and metrics.json."})
    test_dataset_name: str | None = field(
        default=None,
        metadata={"help": "A dataset whose `test` split scores the model instead of `dataset_name`'s, e.g. real "
                          "labelled faces for a classifier trained on a synthetic set."},
    )  # fmt: skip
    task: str = field(default="expression", metadata={"help": f"One of {TASKS}."})
    architecture: str = field(default="resnet", metadata={"help": f"One of {ARCHITECTURES}."})
    label_column: str = field(
        default="label", metadata={"help": "Expression column to train on (`label` = annotated, noisy)."}
    )
    hidden_sizes: list[int] = field(
        default_factory=lambda: [32, 64, 128], metadata={"help": "Stage widths (resnet, convnext, regnet)."}
    )
    depths: list[int] = field(
        default_factory=lambda: [1, 1, 1], metadata={"help": "Blocks per stage (resnet, convnext, regnet)."}
    )
    depth_multiplier: float = field(default=0.5, metadata={"help": "Channel multiplier of mobilenet_v2."})
    patch_size: int = field(
        default=8, metadata={"help": "vit: patch side in pixels (its width is the last of `hidden_sizes`, its "
                                     "layers the sum of `depths`)."}
    )  # fmt: skip
    max_train_steps: int = field(default=2000, metadata={"help": "Optimisation steps (one-cycle schedule over them)."})
    time_budget_s: float | None = field(
        default=None,
        metadata={"help": "Stop early after this many seconds of training (the schedule is not rescaled)."},
    )
    train_batch_size: int = field(default=128, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    adam_weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing (expression task)."})
    augment: bool = field(default=True, metadata={"help": "Blur/noise/colour/shift augmentation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N train rows."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use only the first N test rows."})
    eval_batch_size: int = field(default=256, metadata={"help": "Batch size of evaluation."})
    num_threads: int = field(default=2, metadata={"help": "torch CPU threads."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, batch order and augmentation."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the output folder to `hub_model_id`."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repo id to push to (default: the output folder's name)."}
    )

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"`task` must be one of {list(TASKS)}, got {self.task!r}.")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"`architecture` must be one of {list(ARCHITECTURES)}, got {self.architecture!r}.")
        check_positive(self, "depth_multiplier")
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            raise ValueError(
                f"`hidden_sizes` and `depths` must be non-empty lists of the same length, got {self.hidden_sizes} "
                f"and {self.depths}."
            )
        for name in ("max_train_steps", "train_batch_size", "eval_batch_size", "num_threads"):
            check_int(name, getattr(self, name), 1)
        check_number("label_smoothing", self.label_smoothing, 0, 1, open_maximum=True)

    @property
    def target_columns(self) -> tuple[str, ...]:
        """Columns a split must have besides `image` (the test split may add `clean_label`, scored when present)."""
        return (self.label_column,) if self.task == "expression" else ("action_units",)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation of `(B, 3, H, W)` images in [0, 1]: flip, shift/scale/rotation, blur
    (sigma ~ U(0, 1.5) on half the batch), 64 -> 32 -> 64 on a quarter, brightness/contrast/colour, noise.
    Horizontal flips keep the labels: FaceWorld AUs are bilateral."""
    batch = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, *shape, generator=generator)

    flip = torch.rand(batch, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)

    angle, scale = uniform(-0.09, 0.09), uniform(0.93, 1.07)  # +-5 degrees, +-7% scale
    shift = uniform(-0.1, 0.1, 2)  # +-3 px at 64 (grid units span 2 / 64 per pixel)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    sigma = uniform(0.0, 1.5) * (torch.rand(batch, generator=generator) < 0.5)
    images = gaussian_blur(images, sigma)
    downscaled = torch.rand(batch, generator=generator) < 0.25
    images = torch.where(downscaled[:, None, None, None], downscale_upscale(images), images)

    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(0.75, 1.25)[:, None, None, None]
    images = (images - mean) * contrast + mean
    images = images * uniform(0.75, 1.25)[:, None, None, None] * uniform(0.9, 1.1, 3)[:, :, None, None]
    images = images + uniform(0.0, 0.04)[:, None, None, None] * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1)


def build_model(config: TrainFERConfig) -> PreTrainedModel:
    """A small stock transformers image model from config (random init, no downloads)."""
    if config.task == "expression":
        head = {"num_labels": len(EXPRESSIONS), "id2label": EXPRESSIONS.id2label, "label2id": EXPRESSIONS.label2id,
                "problem_type": "single_label_classification"}  # fmt: skip
    else:
        head = {"num_labels": len(AU_NAMES), "id2label": dict(enumerate(AU_NAMES)),
                "label2id": {name: i for i, name in enumerate(AU_NAMES)}, "problem_type": "regression"}  # fmt: skip
    if config.architecture == "resnet":
        model_config = ResNetConfig(
            embedding_size=config.hidden_sizes[0], hidden_sizes=config.hidden_sizes, depths=config.depths,
            layer_type="basic", **head,
        )  # fmt: skip
        model_class = ResNetForImageClassification
    elif config.architecture == "vit":  # attention over patches, no convolution past the patch embedding
        width = config.hidden_sizes[-1]
        model_config = ViTConfig(
            image_size=IMAGE_SIZE, patch_size=config.patch_size, hidden_size=width, num_hidden_layers=sum(config.depths),
            num_attention_heads=max(1, width // 32), intermediate_size=2 * width, **head,
        )  # fmt: skip
        model_class = ViTForImageClassification
    elif config.architecture == "regnet":  # RegNetX: grouped-convolution bottlenecks (16-channel groups)
        model_config = RegNetConfig(
            embedding_size=config.hidden_sizes[0] // 2, hidden_sizes=config.hidden_sizes, depths=config.depths,
            groups_width=16, layer_type="x", **head,
        )  # fmt: skip
        model_class = RegNetForImageClassification
    elif config.architecture == "mobilenet_v2":  # depthwise-separable inverted residuals: another model family
        model_config = MobileNetV2Config(
            image_size=IMAGE_SIZE, depth_multiplier=config.depth_multiplier, classifier_dropout_prob=0.2, **head
        )
        model_class = MobileNetV2ForImageClassification
    else:
        model_config = ConvNextConfig(
            patch_size=2, num_stages=len(config.hidden_sizes), hidden_sizes=config.hidden_sizes, depths=config.depths,
            image_size=IMAGE_SIZE, **head,
        )  # fmt: skip
        model_class = ConvNextForImageClassification
    model_config.faceworld_task = config.task
    if config.task == "action_units":  # how AU consumers (annotators, evaluation) read the outputs
        model_config.au_names = list(AU_NAMES)
        model_config.au_max_value = 5.0
    model_config.input_size = IMAGE_SIZE
    return model_class(model_config)


def mean_baseline_mae(train_aus: np.ndarray, test_aus: np.ndarray) -> dict:
    """MAE of predicting the train mean of every AU."""
    per_au = np.abs(test_aus - train_aus.mean(axis=0)).mean(axis=0)
    return {"mae": float(per_au.mean()), "mae_per_au": dict(zip(AU_NAMES, map(float, per_au)))}


def load_splits(config: TrainFERConfig) -> dict[str, dict[str, np.ndarray]]:
    """Reads the train split of `dataset_name` and the test split of `test_dataset_name` (default: the same) into
    memory, expression labels as ids into [`EXPRESSIONS`] matched by name; checks splits and columns before any
    training."""
    splits = {}
    for split, name, limit in (
        ("train", config.dataset_name, config.max_train_samples),
        ("test", config.test_dataset_name or config.dataset_name, config.max_test_samples),
    ):
        data = _load_split(name, split, limit)
        optional = ("clean_label",) if split == "test" and config.task == "expression" else ()
        columns = ["image", *config.target_columns] + [c for c in optional if c in data.column_names]
        missing = [c for c in columns if c not in data.column_names]
        if missing:
            raise ValueError(
                f"The {split} split of {name!r} lacks the column(s) {missing} needed by task {config.task!r}; it has "
                f"{data.column_names}."
            )
        arrays = data.select_columns(columns).with_format("numpy")
        splits[split] = {
            column: expression_label_ids(data, column).numpy() if column in (config.label_column, "clean_label")
            and config.task == "expression" else np.asarray(arrays[column])
            for column in columns
        }  # fmt: skip
    images = splits["train"]["image"]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`image` must hold RGB images, got an array of shape {images.shape}.")
    return splits


def _load_split(name: str, split: str, limit: int | None) -> datasets.Dataset:
    """The first `limit` rows of `split` of the dataset `name` (a folder or Hub id)."""
    field = "dataset_name" if split == "train" else "test_dataset_name (or dataset_name)"
    if os.path.isdir(name) and not any(Path(name).iterdir()):
        raise ValueError(f"`{field}` {name!r} is empty.")
    dataset = datasets.load_dataset(name)
    if split not in dataset:
        raise ValueError(f"`{field}` {name!r} must have a `{split}` split, found {list(dataset)}.")
    data = dataset[split]
    return data if limit is None else data.select(range(min(limit, len(data))))


def _loss(config: TrainFERConfig, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if config.task == "expression":
        return F.cross_entropy(outputs, targets, label_smoothing=config.label_smoothing)
    return F.smooth_l1_loss(outputs, targets, beta=0.1)


def train(config: TrainFERConfig, splits: dict[str, dict[str, np.ndarray]]) -> tuple[PreTrainedModel, dict]:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(config)
    images = torch.from_numpy(splits["train"]["image"]).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    target_column = config.label_column if config.task == "expression" else "action_units"
    targets = torch.from_numpy(splits["train"][target_column])
    targets = targets.long() if config.task == "expression" else targets.float()

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.max_train_steps, pct_start=0.1
    )
    model.train()
    order, position, losses = torch.randperm(len(images), generator=generator), 0, []
    start = time.perf_counter()
    progress = tqdm(range(config.max_train_steps), desc=f"train {config.task}", mininterval=5, file=sys.stdout)
    for step in progress:
        if position + config.train_batch_size > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        batch = order[position : position + config.train_batch_size]
        position += config.train_batch_size
        pixels = images[batch].float() / 255.0  # (B, 3, H, W)
        if config.augment:
            pixels = augment(pixels, generator)
        loss = _loss(config, model(pixel_values=to_pixel_values(pixels)).logits, targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 50 == 0:
            progress.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if config.time_budget_s is not None and time.perf_counter() - start > config.time_budget_s:
            break
    seconds = time.perf_counter() - start
    progress.close()
    summary = {"steps": len(losses), "train_seconds": round(seconds, 1), "final_loss": float(np.mean(losses[-50:])),
               "num_parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    return model.eval(), summary


def evaluate(model: PreTrainedModel, config: TrainFERConfig, splits: dict[str, dict[str, np.ndarray]]) -> dict:
    """Test metrics on original, blurred (sigma 1) and 64 -> 32 -> 64 images."""
    test = splits["test"]
    originals = images_to_tensor(test["image"])
    conditions = {
        "original": originals,
        "blur_sigma1": gaussian_blur(originals, 1.0),
        "downscale_upscale_2x": downscale_upscale(originals),
    }
    metrics = {}
    for name, images in conditions.items():
        if config.task == "expression":
            logits = predict(model, images, config.eval_batch_size)
            clean = {  # FaceWorld's true labels, beside the annotated (noisy) `label_column`
                "clean_labels": evaluate_expression_classifier(
                    model, images, test["clean_label"], config.eval_batch_size
                )
            } if "clean_label" in test else {}  # fmt: skip
            accuracy = float((logits.argmax(1).numpy() == test[config.label_column]).mean())
            metrics[name] = {**clean, "noisy_labels": {"accuracy": accuracy}}
        else:
            metrics[name] = evaluate_au_regressor(model, images, test["action_units"], config.eval_batch_size)
    if config.task == "action_units":
        metrics["baseline_predict_train_mean"] = mean_baseline_mae(
            splits["train"]["action_units"], test["action_units"]
        )
    return metrics
