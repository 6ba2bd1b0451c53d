#!/usr/bin/env python
"""Train a small `AutoencoderKL` (the latent space of a from-scratch SynFER model) on any image dataset.

Loss: L1 (or MSE) reconstruction + `kl_weight` x KL(posterior || N(0, I)) (Kingma & Welling 2014, eq. 10; Stable
Diffusion's VAE uses a small weight so the latent stays detailed) + optionally `edge_loss_weight` x L1 between
the images' finite differences, which keeps thin expression cues (brows, lids, lip corners) sharp.

After training the script measures the latent standard deviation on training images and stores
`scaling_factor = 1 / std` in the config (diffusion then sees unit-variance latents), and saves the model with
`save_pretrained` (safetensors) with a model card: `AutoencoderKL.from_pretrained(output_dir)` loads it.

**The gate** (`--judge_path`, `--au_regressor_path`, models from `examples/train_fer_classifier.py`): a
diffusion model cannot draw expressions its autoencoder loses, so before any UNet training the judge classifies
reconstructions of real test faces. It passes when judge accuracy on reconstructions is at least
`min_judge_ratio` (0.95) times its accuracy on the originals and the AU regressor's error grows by at most
`max_au_mae_ratio` (1.1x). The numbers go to `gate.json` and are printed.

FaceWorld, 64x64 -> 32x32x4 latents, on a 2-core CPU (~15 min; judge and AU regressor from
`examples/train_fer_classifier.py`):

```bash
python -m synfer_diffusers.data.faceworld --output-dir runs/faceworld --num-train 20000 --num-test 2000
python examples/train_autoencoder.py --dataset_name runs/faceworld --output_dir runs/vae \
    --block_out_channels 32 64 --train_batch_size 16 --learning_rate 5e-4 --lr_warmup_steps 50 \
    --edge_loss_weight 0.5 --max_train_steps 600 --checkpointing_steps 100 --validation_steps 200 \
    --judge_path runs/judge --au_regressor_path runs/au_regressor --label_column clean_label
```

On a GPU: `accelerate launch examples/train_autoencoder.py ... --mixed_precision bf16 --dataloader_num_workers 8`.
Rerun with `--resume_from_checkpoint latest` after a kill to continue with the same losses.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import datasets
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image
from torch import nn
from transformers import AutoModelForImageClassification

from synfer_diffusers.evaluation import evaluate_au_regressor, evaluate_expression_classifier
from synfer_diffusers.facs import EXPRESSIONS, AUSpace
from synfer_diffusers.hub_utils import write_model_card
from synfer_diffusers.training import (
    AnyDataset,
    ExampleTransform,
    StepRandom,
    TrainingConfig,
    TrainingSummary,
    check_existing_path,
    check_positive,
    expression_label_ids,
    finish_run,
    load_action_units,
    load_config_split,
    load_images,
    load_train_split,
    make_optimizer,
    normalize_images,
    parse_config,
    pixel_tensor,
    prepare_run,
    run_from_command_line,
    run_training_loop,
    sample_posterior,
    tile_images,
    training_batches,
    training_card_text,
    validate_action_units_column,
    validate_columns,
)


@dataclass(kw_only=True)
class AutoencoderTrainingConfig(TrainingConfig):
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate after warmup."})
    train_batch_size: int = field(default=16, metadata={"help": "Batch size per process."})
    block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64],
        metadata={"help": "Channels per level; n levels downsample by 2^(n-1) (2 levels: 64 px -> 32x32 latents)."},
    )
    layers_per_block: int = field(default=1, metadata={"help": "ResNet layers per level."})
    latent_channels: int = field(default=4, metadata={"help": "Latent channels (Stable Diffusion: 4)."})
    norm_num_groups: int = field(default=32, metadata={"help": "GroupNorm groups; must divide every channel count."})
    mid_block_attention: bool = field(
        default=False,
        metadata={
            "help": "Self-attention in the middle blocks (SD's VAE has it; about 30 percent of a CPU step at 32x32 latents)."
        },
    )
    reconstruction_loss: Literal["l1", "mse"] = field(default="l1", metadata={"help": "Pixel reconstruction loss."})
    kl_weight: float = field(default=1e-6, metadata={"help": "Weight of the KL term (summed over latent elements)."})
    edge_loss_weight: float = field(
        default=0.0, metadata={"help": "Weight of the L1 loss between image gradients (finite differences); 0: off."}
    )
    num_scaling_images: int = field(
        default=2048, metadata={"help": "Training images encoded to measure the latent std (scaling_factor)."}
    )
    test_split: str = field(
        default="test", metadata={"help": "Held-out split for the reconstruction grid, PSNR and the gate; '' : none."}
    )
    num_test_images: int = field(default=1000, metadata={"help": "Test images used for PSNR and the gate."})
    judge_path: str | None = field(
        default=None, metadata={"help": "Expression judge (examples/train_fer_classifier.py); enables the gate."}
    )
    au_regressor_path: str | None = field(
        default=None, metadata={"help": "AU regressor (examples/train_fer_classifier.py) for the gate's AU error."}
    )
    label_column: str = field(default="label", metadata={"help": "Expression column of the test split (gate)."})
    au_column: str = field(default="action_units", metadata={"help": "AU column of the test split (gate)."})
    au_space: str = field(
        default="disfa12",
        metadata={"help": "AU space of au_column (an `AUSpace` preset).", "choices": AUSpace.presets()},
    )
    min_judge_ratio: float = field(default=0.95, metadata={"help": "Gate: judge accuracy reconstructions/originals."})
    max_au_mae_ratio: float = field(default=1.1, metadata={"help": "Gate: AU MAE reconstructions/originals."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.block_out_channels:
            raise ValueError("`block_out_channels` must list at least one channel count.")
        AUSpace.from_preset(self.au_space)
        check_positive(self, "layers_per_block", "latent_channels", "norm_num_groups", "num_scaling_images")
        check_positive(self, "num_test_images", "min_judge_ratio", "max_au_mae_ratio")
        check_positive(self, "kl_weight", "edge_loss_weight", allow_zero=True)
        if any(c <= 0 or c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"`block_out_channels` {self.block_out_channels} must be positive multiples of `norm_num_groups` "
                f"({self.norm_num_groups})."
            )
        if self.resolution % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError(f"`resolution` {self.resolution} must be divisible by the downsampling factor.")
        check_existing_path(self, "judge_path", "au_regressor_path")
        if (self.judge_path or self.au_regressor_path) and not self.test_split:
            raise ValueError("`test_split` is required for the gate (`judge_path` / `au_regressor_path`).")


def build_autoencoder(config: AutoencoderTrainingConfig) -> AutoencoderKL:
    levels = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        mid_block_add_attention=config.mid_block_attention,
        sample_size=config.resolution,
    )


class AutoencoderWithKL(nn.Module):
    """Encode -> sample -> decode in one `forward`, so accelerate (DDP, autocast) wraps the whole pass."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, random: StepRandom) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixels).latent_dist
        reconstruction = self.vae.decode(sample_posterior(posterior, random)).sample  # (B, 3, H, W)
        return reconstruction, posterior.kl().mean()  # KL summed over latent elements, averaged over the batch


def image_gradient_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences of two image batches."""
    loss = F.l1_loss(prediction.diff(dim=-1), target.diff(dim=-1))
    return loss + F.l1_loss(prediction.diff(dim=-2), target.diff(dim=-2))


def autoencoder_loss(
    model: nn.Module, pixels: torch.Tensor, random: StepRandom, config: AutoencoderTrainingConfig
) -> torch.Tensor:
    reconstruction, kl = model(pixels, random)
    reconstruction = reconstruction.float()
    pixel_loss = F.l1_loss if config.reconstruction_loss == "l1" else F.mse_loss
    loss = pixel_loss(reconstruction, pixels) + config.kl_weight * kl
    if config.edge_loss_weight:
        loss = loss + config.edge_loss_weight * image_gradient_loss(reconstruction, pixels)
    return loss


@torch.no_grad()
def measure_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, batch_size: int) -> float:
    """`1 / std` of posterior samples of `images` (uint8), as Stable Diffusion's 0.18215 was measured."""
    generator = torch.Generator().manual_seed(0)
    latents = [
        vae.encode(normalize_images(chunk).to(vae.device)).latent_dist.sample(generator=generator).float().cpu()
        for chunk in images.split(batch_size)
    ]
    return 1.0 / torch.cat(latents).std().item()


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 images -> uint8 reconstructions through the posterior mean (what a diffusion model's latents decode)."""
    outputs = []
    for chunk in images.split(batch_size):
        latents = vae.encode(normalize_images(chunk).to(vae.device)).latent_dist.mode()
        decoded = vae.decode(latents).sample.float().cpu()
        outputs.append(((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(outputs)


def psnr(reconstructions: torch.Tensor, originals: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of uint8 image batches."""
    mse = F.mse_loss(reconstructions.float(), originals.float()).item()
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def save_reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str) -> None:
    """Two rows: originals and their reconstructions."""
    rows = [
        [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in batch] for batch in (originals, reconstructions)
    ]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tile_images(rows, row_labels=["real", "recon"]).save(path)


def load_gate_models(config: AutoencoderTrainingConfig) -> dict:
    """The judge and/or AU regressor (transformers image models), checked before training: the judge's classes
    must be the [`EXPRESSIONS`] in order, the regressor must have one output per AU."""
    models = {}
    if config.judge_path:
        judge = AutoModelForImageClassification.from_pretrained(config.judge_path)
        classes = [judge.config.id2label[i] for i in range(judge.config.num_labels)]
        if classes != list(EXPRESSIONS):
            raise ValueError(f"`judge_path`: the classifier's classes {classes} must be {list(EXPRESSIONS)}.")
        models["judge"] = judge
    if config.au_regressor_path:
        regressor = AutoModelForImageClassification.from_pretrained(config.au_regressor_path)
        num_aus = AUSpace.from_preset(config.au_space).num_aus
        if regressor.config.num_labels != num_aus:
            raise ValueError(
                f"`au_regressor_path`: the regressor has {regressor.config.num_labels} outputs, not {num_aus}."
            )
        models["au_regressor"] = regressor
    return models


def run_gate(
    config: AutoencoderTrainingConfig,
    models: dict,
    gate_data: dict,
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
) -> dict:
    """Judge accuracy and AU error on originals vs reconstructions (uint8), their ratios and the verdict."""
    result: dict = {"num_images": len(originals)}
    passed = True
    if "judge" in models:
        labels = gate_data["labels"]
        original = evaluate_expression_classifier(models["judge"], originals, labels)["accuracy"]
        reconstructed = evaluate_expression_classifier(models["judge"], reconstructions, labels)["accuracy"]
        ratio = reconstructed / max(original, 1e-8)
        result.update(judge_accuracy_original=original, judge_accuracy_reconstructed=reconstructed, judge_ratio=ratio)
        passed &= ratio >= config.min_judge_ratio
    if "au_regressor" in models:
        aus = gate_data["action_units"]
        original = evaluate_au_regressor(models["au_regressor"], originals, aus)["mae"]
        reconstructed = evaluate_au_regressor(models["au_regressor"], reconstructions, aus)["mae"]
        ratio = reconstructed / max(original, 1e-8)
        result.update(au_mae_original=original, au_mae_reconstructed=reconstructed, au_mae_ratio=ratio)
        passed &= ratio <= config.max_au_mae_ratio
    return {
        **result,
        "min_judge_ratio": config.min_judge_ratio,
        "max_au_mae_ratio": config.max_au_mae_ratio,
        "passed": passed,
    }


def load_test_data(config: AutoencoderTrainingConfig) -> tuple[torch.Tensor | None, dict]:
    """Test images (uint8) and, for the gate, their validated labels and AUs; all checked before training."""
    if not config.test_split:
        return None, {}
    test_set = load_config_split(config, config.test_split, config.num_test_images)
    required = {config.image_column: "images (--image_column)"}
    if config.judge_path:
        required[config.label_column] = "expression labels for the judge (--label_column)"
    if config.au_regressor_path:
        required[config.au_column] = "AU values for the AU regressor (--au_column)"
    validate_columns(test_set, required)
    gate_data = {}
    if config.judge_path:
        gate_data["labels"] = expression_label_ids(test_set, config.label_column)
    if config.au_regressor_path:
        au_space = AUSpace.from_preset(config.au_space)
        validate_action_units_column(test_set, config.au_column, au_space)
        gate_data["action_units"] = load_action_units(test_set, config.au_column, au_space)
    return load_images(test_set, config.image_column, config.resolution, desc="Test images"), gate_data


def model_card_fields(vae: AutoencoderKL, config: AutoencoderTrainingConfig, report: dict | None) -> dict:
    """The `model_cards/autoencoder.md` fields: sizes, the measured scaling, data and the test report."""
    latent_side = config.resolution // 2 ** (len(config.block_out_channels) - 1)
    if report is None:
        evaluation = "Not evaluated (no `--test_split`)."
    else:
        numbers = ", ".join(f"`{k}` {v:.4g}" if isinstance(v, float) else f"`{k}` {v}" for k, v in report.items())
        evaluation = f"On the `{config.test_split}` split (PSNR and, with the gate, `gate.json`): {numbers}."
    return {
        "datasets": [config.dataset_source],
        "parameters": sum(p.numel() for p in vae.parameters()),
        "resolution": config.resolution,
        "latent_shape": f"{vae.config.latent_channels}x{latent_side}x{latent_side}",
        "scaling_factor": f"{vae.config.scaling_factor:.4f}",
        "training": training_card_text(config, "train_autoencoder.py"),
        "evaluation": evaluation,
    }


def first_images(dataset: AnyDataset, config: AutoencoderTrainingConfig, count: int) -> torch.Tensor:
    """The first `count` training images (or all, if fewer), uint8 `(n, 3, R, R)`: a bounded set."""
    if isinstance(dataset, datasets.IterableDataset):
        head = dataset.take(count)
    else:
        head = dataset.select(range(min(count, len(dataset))))
    return torch.stack([pixel_tensor(row[config.image_column], config.resolution) for row in head])


def main(argv: Sequence[str] | None = None) -> TrainingSummary:
    config = parse_config(AutoencoderTrainingConfig, argv, description=__doc__.splitlines()[0])
    accelerator = prepare_run(config)
    train_set = load_train_split(config, {}, accelerator.num_processes)
    test_images, gate_data = load_test_data(config)
    gate_models = load_gate_models(config)  # fail now, not after training, if the gate cannot run
    batches = training_batches(
        train_set, ExampleTransform.from_config(config), config, accelerator.process_index,
        accelerator.num_processes,
    )  # fmt: skip
    preview = test_images[:8] if test_images is not None else first_images(train_set, config, 8)

    vae = build_autoencoder(config)
    if config.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    optimizer, lr_scheduler = make_optimizer(config, list(vae.parameters()))
    model, optimizer = accelerator.prepare(AutoencoderWithKL(vae), optimizer)
    vae = accelerator.unwrap_model(model).vae

    def compute_loss(batch: dict[str, torch.Tensor], random: StepRandom) -> torch.Tensor:
        pixels = normalize_images(batch["pixel_values"]).to(accelerator.device)  # (B, 3, R, R)
        return autoencoder_loss(model, pixels, random, config)

    def validate(step: int) -> None:
        vae.eval()
        path = os.path.join(config.output_dir, "validation", f"reconstructions-{step:06d}.png")
        save_reconstruction_grid(preview, reconstruct(vae, preview, config.train_batch_size), path)
        vae.train()

    model.train()
    summary = run_training_loop(
        accelerator, config, batches, compute_loss, optimizer, lr_scheduler, {"model": model}, validate=validate,
        project="autoencoder",
    )  # fmt: skip
    if accelerator.is_main_process:
        vae.eval()
        scaling_images = first_images(train_set, config, config.num_scaling_images)
        scaling_factor = measure_scaling_factor(vae, scaling_images, config.train_batch_size)
        vae.register_to_config(scaling_factor=scaling_factor)
        vae.save_pretrained(config.output_dir)
        accelerator.print(f"Saved the autoencoder to {config.output_dir} (scaling_factor {scaling_factor:.4f}).")
        report = None
        if test_images is not None:
            reconstructions = reconstruct(vae, test_images, config.train_batch_size)
            report = {"psnr": psnr(reconstructions, test_images)}
            if gate_models:
                report.update(run_gate(config, gate_models, gate_data, test_images, reconstructions))
                with open(os.path.join(config.output_dir, "gate.json"), "w") as f:
                    json.dump(report, f, indent=2)
            accelerator.print(json.dumps(report, indent=2))
        write_model_card(config.output_dir, "autoencoder.md", model_card_fields(vae, config, report))
    finish_run(accelerator, config)
    return summary


if __name__ == "__main__":
    run_from_command_line(main)
