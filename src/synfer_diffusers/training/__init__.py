"""Shared pieces of the training examples (`examples/train_*.py`), one module a section:

- [`config`]: [`TrainingConfig`] / [`DiffusionTrainingConfig`], dataclasses whose fields carry their help text
  and are checked in `__post_init__`; [`parse_config`] (transformers' `HfArgumentParser`), [`prepare_run`] (the
  `Accelerator`), [`make_optimizer`].
- [`data`]: the per-example transform of training rows; it re-exports [`load_training_dataset`] (a local folder
  or a Hub id) and the column checks of `synfer_diffusers.data.loading`, which raise a `ValueError` naming the
  column before anything trains.
- [`determinism`]: the batch of step `s` ([`BatchOrder`]) and every random draw of that step
  ([`step_generator`]) are functions of `(seed, s)`, so a resumed run repeats the uninterrupted one.
- [`augmentation`]: FineFace's AU smoothing and IP-Adapter's condition dropout.
- [`au_consistency`]: [`AUConsistencyLoss`], an AU estimator's error on the decoded one-step estimate.
- [`diffusion`]: latents, forward noising, the epsilon / v loss (optional min-SNR weighting), the UNet LoRA.
- [`checkpoints`]: diffusers-style `checkpoint-{step}` folders (`accelerator.save_state`), the last K kept.
- [`loader`]: DataLoader batches with per-example transforms in workers, memory-mapped or streamed.
- [`latent_cache`]: `--cache_latents`, the VAE posterior of every image computed once.
- [`loop`]: [`run_training_loop`] (accumulation, trackers, checkpoints, resume, validation), `--push_to_hub`.
- [`validation`]: image grids and the expressions x identities grid of a `SynFERPipeline`.

This package imports the rest of `synfer_diffusers`, never `examples/`.
"""

from ..data.loading import (
    AnyDataset,
    ExpressionLabels,
    dataset_columns,
    dataset_label_names,
    expression_label_ids,
    first_row,
    is_local_path,
    load_action_units,
    load_images,
    load_training_dataset,
    num_examples,
    pixel_tensor,
    validate_action_units_column,
    validate_columns,
    validate_image_column,
)
from ..image_utils import tile_images
from .au_consistency import AUConsistencyLoss, denoised_estimate
from .augmentation import condition_dropout_masks, smooth_action_units
from .checkpoints import (
    CHECKPOINT_FILES,
    check_checkpoint,
    checkpoint_step,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import (
    DiffusionTrainingConfig,
    TrainingConfig,
    check_existing_path,
    check_positive,
    check_probability,
    command_line_options,
    frozen_weight_dtype,
    launched_on_cpus,
    load_pretrained,
    make_optimizer,
    parse_config,
    prepare_run,
    run_from_command_line,
    training_card_text,
)
from .data import ExampleTransform, drop_captions, normalize_images, tokenize_captions
from .determinism import BatchOrder, StepRandom
from .diffusion import (
    LORA_TARGET_MODULES,
    add_training_noise,
    add_unet_lora,
    apply_unet_memory_options,
    diffusion_loss,
    encode_latents,
    sample_posterior,
    training_latents,
    training_noise_scheduler,
)
from .latent_cache import cache_latents, diffusion_training_batches, latent_cache_fingerprint
from .loader import (
    AugmentationDraws,
    StepBatchSampler,
    StepRows,
    load_config_split,
    load_train_split,
    resolve_max_train_steps,
    training_batches,
)
from .loop import LossParts, TrainingSummary, finish_run, push_output_to_hub, run_training_loop
from .validation import save_expression_grid

__all__ = [
    "CHECKPOINT_FILES",
    "check_checkpoint",
    "AUConsistencyLoss",
    "LossParts",
    "denoised_estimate",
    "add_training_noise",
    "add_unet_lora",
    "apply_unet_memory_options",
    "AugmentationDraws",
    "AnyDataset",
    "BatchOrder",
    "cache_latents",
    "check_existing_path",
    "check_positive",
    "check_probability",
    "checkpoint_step",
    "command_line_options",
    "condition_dropout_masks",
    "dataset_columns",
    "diffusion_loss",
    "diffusion_training_batches",
    "DiffusionTrainingConfig",
    "drop_captions",
    "encode_latents",
    "ExampleTransform",
    "expression_label_ids",
    "dataset_label_names",
    "ExpressionLabels",
    "finish_run",
    "first_row",
    "frozen_weight_dtype",
    "is_local_path",
    "latent_cache_fingerprint",
    "launched_on_cpus",
    "load_pretrained",
    "list_checkpoints",
    "load_config_split",
    "load_train_split",
    "load_action_units",
    "load_images",
    "load_training_dataset",
    "LORA_TARGET_MODULES",
    "make_optimizer",
    "normalize_images",
    "num_examples",
    "parse_config",
    "run_from_command_line",
    "prepare_run",
    "pixel_tensor",
    "push_output_to_hub",
    "resolve_checkpoint",
    "resolve_max_train_steps",
    "run_training_loop",
    "sample_posterior",
    "save_checkpoint",
    "save_expression_grid",
    "smooth_action_units",
    "StepBatchSampler",
    "StepRandom",
    "StepRows",
    "tile_images",
    "tokenize_captions",
    "training_batches",
    "training_card_text",
    "training_latents",
    "training_noise_scheduler",
    "TrainingConfig",
    "TrainingSummary",
    "validate_action_units_column",
    "validate_columns",
    "validate_image_column",
]
