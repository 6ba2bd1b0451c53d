"""Shared pieces of the training examples (`examples/train_*.py`), one module a section:

- [`config`]: [`TrainingConfig`] / [`DiffusionTrainingConfig`], dataclasses whose fields carry their help text
  and are checked in `__post_init__`; [`parse_config`] (transformers' `HfArgumentParser`), [`prepare_run`] (the
  `Accelerator`), [`make_optimizer`].
- [`data`]: [`load_training_dataset`] (a local folder or a Hub id) and the column checks, which raise a
  `ValueError` naming the column before anything trains.
- [`determinism`]: the batch of step `s` ([`BatchOrder`]) and every random draw of that step
  ([`step_generator`]) are functions of `(seed, s)`, so a resumed run repeats the uninterrupted one.
- [`augmentation`]: FineFace's AU smoothing and IP-Adapter's condition dropout.
- [`diffusion`]: latents, forward noising, the epsilon / v loss (optional min-SNR weighting), the UNet LoRA.
- [`checkpoints`]: resumable `checkpoint-{step}` folders.
- [`loop`]: [`run_training_loop`] (progress bar, checkpoints, resume, validation callback).
- [`validation`]: image grids and the expressions x identities grid of a `SynFERPipeline`.

This package imports the rest of `synfer_diffusers`, never `examples/`.
"""

from .augmentation import condition_dropout_masks, smooth_action_units
from .checkpoints import (
    TrainingState,
    find_latest_checkpoint,
    list_checkpoints,
    load_latest_training_state,
    load_training_state,
    save_training_state,
    trainable_state_dict,
)
from .config import (
    DiffusionTrainingConfig,
    TrainingConfig,
    check_existing_path,
    check_positive,
    check_probability,
    frozen_weight_dtype,
    make_optimizer,
    parse_config,
    prepare_run,
    training_card_text,
)
from .data import (
    drop_captions,
    expression_label_ids,
    is_local_path,
    load_action_units,
    load_images,
    load_training_dataset,
    normalize_images,
    tokenize_captions,
    validate_action_units_column,
    validate_columns,
)
from .determinism import BatchOrder, step_generator
from .diffusion import LORA_TARGET_MODULES, add_training_noise, add_unet_lora, diffusion_loss, encode_latents
from .loop import TrainingSummary, run_training_loop
from .validation import save_expression_grid, tile_images

__all__ = [
    "BatchOrder",
    "DiffusionTrainingConfig",
    "LORA_TARGET_MODULES",
    "TrainingConfig",
    "TrainingState",
    "TrainingSummary",
    "add_training_noise",
    "add_unet_lora",
    "check_existing_path",
    "check_positive",
    "check_probability",
    "condition_dropout_masks",
    "diffusion_loss",
    "drop_captions",
    "encode_latents",
    "expression_label_ids",
    "find_latest_checkpoint",
    "frozen_weight_dtype",
    "is_local_path",
    "list_checkpoints",
    "load_action_units",
    "load_images",
    "load_latest_training_state",
    "load_training_dataset",
    "load_training_state",
    "make_optimizer",
    "normalize_images",
    "parse_config",
    "prepare_run",
    "run_training_loop",
    "save_expression_grid",
    "save_training_state",
    "smooth_action_units",
    "step_generator",
    "tile_images",
    "tokenize_captions",
    "trainable_state_dict",
    "training_card_text",
    "validate_action_units_column",
    "validate_columns",
]
