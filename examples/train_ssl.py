#!/usr/bin/env python
"""Self-supervised pretraining of a face-image encoder (SimCLR) and its linear-probe evaluation.

The paper shows synthetic SynFER data helping representation learning too (MoCo v3, ResNet-50, linear probe on
AffectNet: 51.03% with real data only, 57.84% with real + SynFER data). This is the same experiment at a size that
fits a CPU: SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations") on a
small transformers ResNet, images only (labels are never read while pretraining).

Each step draws two augmented views of every image of the batch (random resized crop, horizontal flip, colour
jitter, random grey, Gaussian blur: SimCLR's family of augmentations, every draw from the step's seeded random
source), embeds them with encoder + MLP projector, and minimises the NT-Xent loss (eq. 1 of the paper, temperature
`--temperature`): each view must find its partner among the `2B - 1` other views. The saved model is the encoder, a
transformers `ResNetModel` (safetensors); `--resume_from_checkpoint latest` continues a killed run with the same
losses.

With `--probe_dataset` the frozen encoder is evaluated at the end by a linear probe: a logistic regression on its
pooled features of the first `--probe_num_train` rows of the probe's train split (labels `--probe_label_column`),
tested on its test split against `--probe_test_label_column`; the result goes to `probe.json`.

```bash
python -m synfer_diffusers.data.faceworld --output-dir runs/faceworld --num-train 20000 --num-test 2000 --seed 0
python examples/train_ssl.py --dataset_name runs/faceworld --output_dir runs/ssl --train_batch_size 128 \
    --learning_rate 1e-3 --max_train_steps 1000 --checkpointing_steps 250 --probe_dataset runs/faceworld \
    --resume_from_checkpoint latest
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ResNetConfig, ResNetModel

from synfer_diffusers.facs import EXPRESSIONS
from synfer_diffusers.training import (
    ExampleTransform,
    StepRandom,
    TrainingConfig,
    TrainingSummary,
    check_positive,
    check_probability,
    expression_label_ids,
    finish_run,
    load_images,
    load_train_split,
    load_training_dataset,
    make_optimizer,
    parse_config,
    prepare_run,
    run_from_command_line,
    run_training_loop,
    training_batches,
    training_card_text,
    validate_columns,
)

PROBE_FILE = "probe.json"


@dataclass(kw_only=True)
class SSLTrainingConfig(TrainingConfig):
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128], metadata={"help": "ResNet stage widths."})
    depths: list[int] = field(default_factory=lambda: [1, 1, 1], metadata={"help": "ResNet blocks per stage."})
    projection_dim: int = field(default=64, metadata={"help": "Output width of the MLP projector."})
    temperature: float = field(default=0.2, metadata={"help": "NT-Xent temperature."})
    crop_scale: float = field(default=0.5, metadata={"help": "Smallest area fraction of the random resized crop."})
    jitter: float = field(default=0.4, metadata={"help": "Colour-jitter strength (brightness, contrast, saturation)."})
    grey_prob: float = field(default=0.2, metadata={"help": "Probability of a grey view."})
    blur_prob: float = field(default=0.5, metadata={"help": "Probability of a Gaussian-blurred view."})
    probe_dataset: str | None = field(
        default=None, metadata={"help": "Labelled dataset (train/test splits) for the linear probe at the end."}
    )
    probe_num_train: int = field(default=2000, metadata={"help": "Probe: first N train rows."})
    probe_label_column: str = field(default="label", metadata={"help": "Probe: expression column of the train rows."})
    probe_test_label_column: str = field(
        default="clean_label", metadata={"help": "Probe: expression column the test rows are scored against."}
    )
    probe_steps: int = field(default=500, metadata={"help": "Probe: optimisation steps of the logistic regression."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "projection_dim", "temperature", "probe_num_train", "probe_steps")
        check_probability(self, "crop_scale", "grey_prob", "blur_prob")
        check_positive(self, "jitter", allow_zero=True)
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            raise ValueError("`hidden_sizes` and `depths` must be non-empty lists of the same length.")


class SimCLRModel(nn.Module):
    """Encoder (a transformers `ResNetModel`, pooled) and the MLP projector SimCLR trains through."""

    def __init__(self, config: SSLTrainingConfig):
        super().__init__()
        self.encoder = ResNetModel(ResNetConfig(embedding_size=config.hidden_sizes[0], hidden_sizes=config.hidden_sizes,
                                                depths=config.depths, layer_type="basic"))  # fmt: skip
        width = config.hidden_sizes[-1]
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, config.projection_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, R, R) -> (B, projection_dim)
        return self.projector(self.encoder(pixel_values=pixel_values).pooler_output.flatten(1))


def augment(images: torch.Tensor, random: StepRandom, config: SSLTrainingConfig) -> torch.Tensor:
    """One SimCLR view of each image `(B, 3, R, R)` in [0, 1]: crop, flip, colour jitter, grey, blur."""
    batch = images.shape[0]
    draws = random.rand((batch, 10))  # every draw of the view, per image
    area = config.crop_scale + (1 - config.crop_scale) * draws[:, 0]  # (B,)
    side = area.sqrt()  # (B,) crop side as a fraction of the image
    centre = side[:, None] / 2 + (1 - side[:, None]) * draws[:, 1:3]  # (B, 2) in the unit square
    flip = torch.where(draws[:, 3] < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip, side
    theta[:, :, 2] = centre * 2 - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid.to(images), align_corners=False, padding_mode="reflection")
    scale = lambda d: (1 + config.jitter * (2 * d - 1)).view(-1, 1, 1, 1).to(images)  # noqa: E731
    views = views * scale(draws[:, 4])  # brightness
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    views = (views - mean) * scale(draws[:, 5]) + mean  # contrast
    grey = views.mean(dim=1, keepdim=True)
    views = (views - grey) * scale(draws[:, 6]) + grey  # saturation
    views = torch.where((draws[:, 7] < config.grey_prob).view(-1, 1, 1, 1).to(images.device), grey.expand_as(views), views)
    blurred = F.avg_pool2d(F.pad(views, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    views = torch.where((draws[:, 8] < config.blur_prob).view(-1, 1, 1, 1).to(images.device), blurred, views)
    return views.clamp(0, 1)


def nt_xent(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over `(2B, D)` embeddings whose rows `i` and `i + B` are two views of one image."""
    z = F.normalize(embeddings.float(), dim=1)
    similarity = z @ z.T / temperature  # (2B, 2B)
    similarity.fill_diagonal_(float("-inf"))
    half = len(z) // 2
    partners = torch.cat([torch.arange(half, 2 * half), torch.arange(half)]).to(z.device)
    return F.cross_entropy(similarity, partners)


@torch.no_grad()
def encode(encoder: ResNetModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Pooled features `(N, width)` of uint8 images `(N, 3, R, R)`."""
    encoder.eval()
    features = [encoder(pixel_values=batch.float() / 255).pooler_output.flatten(1) for batch in images.split(batch_size)]
    return torch.cat(features)


def linear_probe(encoder: ResNetModel, config: SSLTrainingConfig) -> dict:
    """Logistic regression on the frozen encoder's features: fit on the probe's first train rows, scored on its test
    split. The same rows and steps for every encoder, so probes compare encoders only."""
    splits = {}
    for split, column, count in (("train", config.probe_label_column, config.probe_num_train),
                                 ("test", config.probe_test_label_column, None)):  # fmt: skip
        data = load_training_dataset(config.probe_dataset, split, count)
        validate_columns(data, {config.image_column: "images", column: f"expressions (--probe_{split}_label_column)"})
        images = load_images(data, config.image_column, config.resolution)
        splits[split] = (encode(encoder, images), expression_label_ids(data, column, EXPRESSIONS))
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        probe = nn.Linear(train_x.shape[1], len(EXPRESSIONS))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(config.probe_steps):
        loss = F.cross_entropy(probe(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float((probe(test_x).argmax(1) == test_y).float().mean())
    return {"accuracy": accuracy, "num_train": len(train_y), "num_test": len(test_y), "train_loss": float(loss)}


def main(argv: Sequence[str] | None = None) -> TrainingSummary:
    config = parse_config(SSLTrainingConfig, argv, description=__doc__.splitlines()[0])
    accelerator = prepare_run(config)
    dataset = load_train_split(config, {}, accelerator.num_processes)
    transform = ExampleTransform.from_config(config)
    batches = training_batches(dataset, transform, config, accelerator.process_index, accelerator.num_processes)
    model = SimCLRModel(config)
    optimizer, lr_scheduler = make_optimizer(config, list(model.parameters()))
    model, optimizer = accelerator.prepare(model, optimizer)

    def compute_loss(batch: dict[str, torch.Tensor], random: StepRandom) -> torch.Tensor:
        images = batch["pixel_values"].to(accelerator.device).float() / 255  # (B, 3, R, R)
        views = torch.cat([augment(images, random, config), augment(images, random, config)])  # (2B, 3, R, R)
        return nt_xent(model(views), config.temperature)  # the ResNet has no dropout: no global draws

    model.train()
    summary = run_training_loop(
        accelerator, config, batches, compute_loss, optimizer, lr_scheduler, {"model": model}, project="ssl"
    )
    if accelerator.is_main_process:
        encoder = accelerator.unwrap_model(model).encoder
        encoder.save_pretrained(config.output_dir)
        with open(os.path.join(config.output_dir, "training.md"), "w") as f:
            f.write(training_card_text(config, "train_ssl.py"))
        if config.probe_dataset is not None:
            result = linear_probe(encoder, config)
            with open(os.path.join(config.output_dir, PROBE_FILE), "w") as f:
                json.dump(result, f, indent=1)
            accelerator.print(f"Linear probe: accuracy {result['accuracy']:.4f} on {result['num_test']} test faces.")
    finish_run(accelerator, config)
    return summary


if __name__ == "__main__":
    run_from_command_line(main)
