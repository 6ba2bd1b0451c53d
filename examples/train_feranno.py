#!/usr/bin/env python
"""SynFER stage 3: train FERAnno, the expression classifier on diffusion features, with the diffusion model frozen.

Takes any `SynFERPipeline` folder (or Hub id; a plain text-to-image pipeline works too) and any dataset of labelled
face images (an `Image` column and an expression column: a `ClassLabel` of any label set, e.g. AffectNet-8 with
"contempt", or strings naming `EXPRESSIONS`). The head's `id2label` is that label set (the `ClassLabel`'s names in
order, else `EXPRESSIONS`), as in a transformers classifier; voting maps it onto `EXPRESSIONS` by name. Each step
VAE-encodes a batch, noises it to the head's timestep (default t = 1) with fresh noise (DDPM's forward process from the
scheduler's `alphas_cumprod`, as `FERAnnoPipeline` labels), runs the frozen UNet once with the head's prompt (default
`""`) and the null AU condition, and trains a new `FERAnnoHead` on the recorded decoder feature maps and
cross-attention maps with cross-entropy.

Every `--validation_steps` (and at the end) the head is evaluated on `--eval_split` with the package's `evaluate`
metric (`synfer_diffusers.metrics`: accuracy, macro-F1, per-class recall, confusion matrix); results accumulate in
`evaluation.json`. The output folder is a `FERAnnoPipeline` with a model card (`FERAnnoPipeline.from_pretrained`);
`--push_to_hub` uploads it. Rerun with `--resume_from_checkpoint latest` after a kill to continue from the newest
checkpoint with the same losses.

FaceWorld on a CPU (after the stage-2 pipeline in `runs/stage_b`):

```bash
python -m synfer_diffusers.data.faceworld --output-dir runs/faceworld --num-train 20000 --num-test 2000 --seed 0
python examples/train_feranno.py --pretrained_model runs/stage_b --dataset_name runs/faceworld \
    --output_dir runs/feranno --resolution 64 --train_batch_size 64 --learning_rate 3e-4 \
    --max_train_steps 2000 --checkpointing_steps 500 --validation_steps 500 --resume_from_checkpoint latest
```

Stable Diffusion 1.5 size on a GPU: `accelerate launch examples/train_feranno.py ... --resolution 512
--mixed_precision bf16 --train_batch_size 32 --dataloader_num_workers 8`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from synfer_diffusers.facs import ExpressionVocabulary
from synfer_diffusers.metrics import load_fer_metric
from synfer_diffusers.models.feranno import FERAnnoHead
from synfer_diffusers.pipelines.synfer.pipeline_feranno import FERAnnoPipeline, noise_to_timestep
from synfer_diffusers.pipelines.synfer.pipeline_synfer import SynFERPipeline
from synfer_diffusers.training import (
    ExampleTransform,
    ExpressionLabels,
    StepRandom,
    TrainingConfig,
    TrainingSummary,
    check_existing_path,
    check_positive,
    dataset_label_names,
    expression_label_ids,
    finish_run,
    frozen_weight_dtype,
    is_local_path,
    load_config_split,
    load_images,
    load_train_split,
    make_optimizer,
    normalize_images,
    parse_config,
    prepare_run,
    run_from_command_line,
    run_training_loop,
    training_batches,
    training_card_text,
    validate_columns,
)
from synfer_diffusers.value_checks import check_number

EVALUATION_FILE = "evaluation.json"


@dataclass(kw_only=True)
class FERAnnoTrainingConfig(TrainingConfig):
    """Options of `train_feranno.py` (besides the shared ones of `TrainingConfig`)."""

    pretrained_model: str = field(metadata={"help": "SynFERPipeline folder or Hub id whose UNet features are read."})
    label_column: str = field(default="label", metadata={"help": "Expression column (ClassLabel or names)."})
    eval_split: str | None = field(
        default="test", metadata={"help": "Split to evaluate on; unset or '': no evaluation."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N rows only."})
    eval_batch_size: int = field(default=64, metadata={"help": "Images per UNet pass during evaluation."})
    hidden_dim: int = field(default=256, metadata={"help": "FERAnnoHead token width."})
    tokens_per_side: int = field(default=8, metadata={"help": "Each map is pooled to this many positions a side."})
    num_heads: int = field(default=8, metadata={"help": "Attention heads of the fusion blocks."})
    num_fusion_layers: int = field(default=1, metadata={"help": "Bidirectional cross-attention blocks."})
    dropout: float = field(default=0.1, metadata={"help": "Head dropout."})
    timestep: int = field(default=1, metadata={"help": "Diffusion timestep of the UNet pass (the paper's t ~ 1)."})
    prompt: str = field(default="", metadata={"help": "Prompt of the UNet pass ('' = CFG's unconditional branch)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the cross-entropy."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.eval_split = self.eval_split or None
        if is_local_path(self.pretrained_model):
            check_existing_path(self, "pretrained_model")
        check_positive(self, "eval_batch_size", "hidden_dim", "tokens_per_side", "num_heads", "num_fusion_layers")
        check_positive(self, "max_eval_samples", allow_none=True)
        check_positive(self, "timestep", "dropout", allow_zero=True)
        check_number("label_smoothing", self.label_smoothing, 0, 1, open_maximum=True)


def load_eval_split(
    config: FERAnnoTrainingConfig, label_names: ExpressionVocabulary
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(images (N, 3, R, R) uint8, labels (N,) ids into label_names)` of `--eval_split` (a bounded set, held in
    memory; `--max_eval_samples` bounds it), labels matched by name; data errors name the column."""
    if config.eval_split is None:
        return None
    dataset = load_config_split(config, config.eval_split, config.max_eval_samples)
    validate_columns(
        dataset, {config.image_column: "images (--image_column)", config.label_column: "expressions (--label_column)"}
    )
    images = load_images(dataset, config.image_column, config.resolution)  # (N, 3, R, R) uint8
    return images, expression_label_ids(dataset, config.label_column, label_names)


def build_pipeline(config: FERAnnoTrainingConfig, label_names: ExpressionVocabulary) -> FERAnnoPipeline:
    """The frozen diffusion model of `--pretrained_model` with a new head configured by its UNet, whose
    `id2label` is `label_names`."""
    diffusion = SynFERPipeline.from_pretrained(config.pretrained_model)
    head = FERAnnoHead.from_unet(
        diffusion.unet, hidden_dim=config.hidden_dim, tokens_per_side=config.tokens_per_side,
        num_heads=config.num_heads, num_fusion_layers=config.num_fusion_layers, dropout=config.dropout,
        timestep=config.timestep, prompt=config.prompt, id2label=label_names.id2label,
    )  # fmt: skip
    pipe = FERAnnoPipeline.from_pipe(diffusion, head=head)  # shares the diffusion model's modules
    if config.resolution != pipe.resolution:
        raise ValueError(f"`resolution` {config.resolution} differs from the pretrained model's {pipe.resolution} px.")
    return pipe


@torch.no_grad()
def predict_labels(pipe: FERAnnoPipeline, images: torch.Tensor, config: FERAnnoTrainingConfig) -> torch.Tensor:
    """`(N,)` predicted ids (into the head's `id2label`) for uint8 `images` `(N, 3, R, R)`, with the noise of
    `--seed`; the head is left in training mode."""
    pipe.head.eval()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        images.float() / 255, batch_size=config.eval_batch_size, generator=torch.Generator().manual_seed(config.seed)
    )
    pipe.head.train()
    return out.label_ids


def evaluate_head(
    pipe: FERAnnoPipeline, images: torch.Tensor, labels: torch.Tensor, config: FERAnnoTrainingConfig
) -> dict:
    """Accuracy, macro-F1, per-class recall and confusion matrix of the pipeline on uint8 `images` with `labels`
    (ids into the head's `id2label`)."""
    predictions = predict_labels(pipe, images, config)
    return load_fer_metric().compute(
        predictions=predictions.tolist(), references=labels.tolist(), label_names=pipe.head.labels
    )


def evaluation_text(history: dict[str, dict]) -> str:
    """The model card's evaluation section: the last evaluation's headline numbers."""
    if not history:
        return "Not evaluated (no `--eval_split`)."
    step, metrics = max(history.items(), key=lambda item: int(item[0]))
    return (
        f"After {step} steps: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"(`synfer_diffusers.metrics` FER metric). Per-class recall: {json.dumps(metrics['per_class_recall'])}."
    )


def main(argv: Sequence[str] | None = None) -> TrainingSummary:
    config = parse_config(FERAnnoTrainingConfig, argv, description=__doc__.splitlines()[0])
    accelerator = prepare_run(config)
    dataset = load_train_split(
        config, {config.label_column: "expressions (--label_column)"}, accelerator.num_processes
    )
    label_names = dataset_label_names(dataset, config.label_column)
    labels = ExpressionLabels.from_dataset(dataset, config.label_column, label_names)
    transform = ExampleTransform.from_config(config, labels=labels)
    batches = training_batches(dataset, transform, config, accelerator.process_index, accelerator.num_processes)
    evaluation_set = load_eval_split(config, label_names)
    pipe = build_pipeline(config, label_names)

    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.requires_grad_(False).to(accelerator.device, dtype=frozen_weight_dtype(accelerator))
    head = pipe.head.to(accelerator.device)
    optimizer, lr_scheduler = make_optimizer(config, list(head.parameters()))
    model, optimizer = accelerator.prepare(head, optimizer)

    def compute_loss(batch: dict[str, torch.Tensor], random: StepRandom) -> torch.Tensor:
        with torch.no_grad():
            latents = pipe.encode_images(normalize_images(batch["pixel_values"]))  # (B, C, h, w)
            noise = random.randn(latents.shape).to(latents)
            noisy = noise_to_timestep(pipe.scheduler.alphas_cumprod, latents, noise, pipe.head.config.timestep)
            features = pipe.unet_features(noisy)
        with random.global_rng():  # the head's dropout masks, the same in a resumed run
            logits = model(features).logits  # (B, num_labels)
        return F.cross_entropy(
            logits.float(), batch["labels"].to(logits.device), label_smoothing=config.label_smoothing
        )

    history_path = os.path.join(config.output_dir, EVALUATION_FILE)
    history = {}
    if config.resume_from_checkpoint is not None and os.path.exists(history_path):
        with open(history_path) as f:
            history = json.load(f)

    def validate(step: int) -> None:
        if evaluation_set is None:
            return
        history[str(step)] = evaluate_head(pipe, *evaluation_set, config)
        with open(history_path, "w") as f:
            json.dump(history, f, indent=1)
        accelerator.print(f"step {step}: {evaluation_text({str(step): history[str(step)]})}")

    head.train()
    summary = run_training_loop(
        accelerator, config, batches, compute_loss, optimizer, lr_scheduler, {"head": model}, validate=validate,
        project="feranno",
    )  # fmt: skip
    if accelerator.is_main_process:
        for module in (pipe.vae, pipe.text_encoder, pipe.unet):
            module.to(torch.float32)
        model_card = {
            "base_model": config.pretrained_model,
            "datasets": [config.dataset_source],
            "metrics": ["accuracy", "f1"],
            "training": training_card_text(config, "train_feranno.py"),
            "evaluation": evaluation_text(history),
        }
        pipe.save_pretrained(config.output_dir, model_card=model_card)
        accelerator.print(f"Saved the FERAnno pipeline to {config.output_dir}.")
    finish_run(accelerator, config)
    return summary


if __name__ == "__main__":
    run_from_command_line(main)
