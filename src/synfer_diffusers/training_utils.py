"""Shared pieces of the training examples (`examples/train_autoencoder.py`, `examples/train_text_to_image.py`,
`examples/train_au_adapter.py`).

- **Configs**: [`TrainingConfig`] / [`DiffusionTrainingConfig`] are dataclasses whose fields carry their help
  text (`metadata={"help": ...}`) and are checked in `__post_init__`; [`parse_config`] turns a command line into
  one with transformers' `HfArgumentParser` (`--field value`, `--flag`).
- **Data**: [`load_training_dataset`] (a local folder or a Hub id), [`validate_columns`] and the column checks
  raise a `ValueError` naming the column before anything trains; images are held in memory as a uint8 tensor
  ([`load_images`]), which is what makes small-model training fast on a CPU.
- **Determinism**: the batch of step `s` ([`BatchOrder`]) and every random draw of that step ([`step_generator`])
  are functions of `(seed, s)`, so a run resumed from a checkpoint repeats the uninterrupted run exactly.
- **Conditioning**: FineFace's AU smoothing ([`smooth_action_units`]) and IP-Adapter's condition dropout
  ([`condition_dropout_masks`]).
- **Diffusion loss**: [`add_training_noise`] and [`diffusion_loss`] (epsilon / v targets, optional min-SNR
  weighting).
- **Checkpoints**: [`save_training_state`] / [`load_latest_training_state`] write and read safetensors + JSON
  only (nothing is unpickled), atomically, keeping the last `K`.
- **Loop and validation**: [`run_training_loop`] (progress bar, checkpoints, resume, validation callback) and
  [`save_expression_grid`] (expressions x identities PNG from a `SynFERPipeline`).

This module imports the package, never `examples/`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from peft import LoraConfig
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import HfArgumentParser, PreTrainedTokenizerBase

from .facs import EXPRESSIONS, AUSpace
from .hub_utils import is_hub_repo_id
from .image_utils import resize_and_center_crop

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

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
"""UNet attention projections that get LoRA layers (as diffusers' LoRA training scripts); the AU projections
`to_k_au` / `to_v_au` are not matched."""

# ----------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------


def check_positive(config: Any, *names: str, allow_zero: bool = False, allow_none: bool = False) -> None:
    """Raises a `ValueError` naming the first field of `config` that is not > 0 (or >= 0 with `allow_zero`)."""
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value!r}.")


def check_probability(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must be a probability in [0, 1], got {value!r}.")


def check_existing_path(config: Any, *names: str) -> None:
    """For optional path fields: raises if a given path does not exist."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not os.path.exists(os.path.expanduser(value)):
            raise ValueError(f"`{name}`: no such file or folder: {value!r}.")


@dataclass(kw_only=True)
class TrainingConfig:
    """Options every training example shares. Subclasses add their own fields and extend `__post_init__`."""

    output_dir: str = field(metadata={"help": "Folder for the trained model, `checkpoint-*` folders and images."})
    dataset_name: str = field(
        metadata={"help": "A local dataset folder (parquet / imagefolder layout, or `save_to_disk`) or a Hub id."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images (`Image` feature)."})
    resolution: int = field(default=64, metadata={"help": "Images are resized and centre-cropped to this side."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N rows (quick runs, debugging)."}
    )
    train_batch_size: int = field(default=64, metadata={"help": "Batch size per process."})
    max_train_steps: int = field(default=1000, metadata={"help": "Total optimizer steps (resumed runs included)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate after warmup."})
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = field(default="constant_with_warmup", metadata={"help": "Learning-rate schedule (diffusers names)."})
    lr_warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps."})
    adam_weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables clipping."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass to save memory (GPU, large models)."},
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no", metadata={"help": "accelerate mixed precision; frozen models are cast to this dtype."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds initialisation, data order and every random draw."})
    checkpointing_steps: int = field(
        default=500, metadata={"help": "Save a resumable `checkpoint-{step}` every N steps (and at the last step)."}
    )
    checkpoints_total_limit: int | None = field(
        default=2, metadata={"help": "Keep only the newest N checkpoints; unset keeps all."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the newest checkpoint in `output_dir` (fresh start if none)."}
    )
    validation_steps: int = field(
        default=500, metadata={"help": "Write validation images every N steps (and at the last step)."}
    )

    def __post_init__(self) -> None:
        for name in ("output_dir", "dataset_name", "dataset_split", "image_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"`{name}` must be a non-empty string, got {getattr(self, name)!r}.")
        check_positive(self, "resolution", "train_batch_size", "max_train_steps", "learning_rate")
        check_positive(self, "checkpointing_steps", "validation_steps")
        check_positive(self, "lr_warmup_steps", "adam_weight_decay", "max_grad_norm", allow_zero=True)
        check_positive(self, "max_train_samples", "checkpoints_total_limit", allow_none=True)
        for name in ("resolution", "train_batch_size", "max_train_steps", "checkpointing_steps", "validation_steps"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"`{name}` must be an integer, got {getattr(self, name)!r}.")


@dataclass(kw_only=True)
class DiffusionTrainingConfig(TrainingConfig):
    """Options shared by the two UNet stages (text-to-image fine-tune and AU adapter)."""

    text_column: str = field(default="text", metadata={"help": "Column holding the captions."})
    text_dropout_prob: float = field(
        default=0.05, metadata={"help": "Probability of replacing a caption by '' (for classifier-free guidance)."}
    )
    snr_gamma: float | None = field(
        default=None,
        metadata={"help": "Min-SNR loss weighting gamma (Hang et al. 2023; 5.0 is usual); unset: plain MSE."},
    )
    lora_rank: int = field(default=4, metadata={"help": "Rank of the UNet LoRA layers, where LoRA is used."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha; unset: equal to the rank."})
    validation_prompt: str = field(
        default="a photo of a face", metadata={"help": "Coarse description for the validation grid."}
    )
    validation_expressions: list[str] = field(
        default_factory=lambda: list(EXPRESSIONS), metadata={"help": "Rows of the validation grid."}
    )
    num_validation_identities: int = field(default=4, metadata={"help": "Columns (fixed seeds) of the grid."})
    validation_inference_steps: int = field(default=25, metadata={"help": "DDIM steps for validation images."})
    validation_guidance_scale: float = field(default=3.0, metadata={"help": "CFG scale for validation images."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_probability(self, "text_dropout_prob")
        check_positive(self, "snr_gamma", allow_none=True)
        check_positive(self, "num_validation_identities", "validation_inference_steps")
        check_positive(self, "lora_rank", allow_zero=True)
        check_positive(self, "lora_alpha", allow_none=True)
        check_positive(self, "validation_guidance_scale", allow_zero=True)
        if not self.validation_expressions:
            raise ValueError("`validation_expressions` must name at least one expression.")
        for i, name in enumerate(self.validation_expressions):
            EXPRESSIONS.label_id(name, field=f"validation_expressions[{i}]")


C = TypeVar("C", bound=TrainingConfig)


def parse_config(config_class: type[C], argv: Sequence[str] | None = None, description: str | None = None) -> C:
    """Command line -> `config_class` (one `--field` per dataclass field, help text from its metadata). Invalid
    values raise the config's `ValueError`; unknown options exit with argparse's usage message."""
    parser = HfArgumentParser(config_class, description=description)
    (config,) = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    return config


def prepare_run(config: TrainingConfig) -> Accelerator:
    """The `Accelerator`, with every RNG seeded so models built next are initialised identically in every process
    and on resume. Nothing is written yet: `output_dir` is created when training starts."""
    accelerator = Accelerator(mixed_precision=config.mixed_precision, project_dir=config.output_dir)
    set_seed(config.seed)
    return accelerator


def frozen_weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """dtype for frozen models under mixed precision (trained weights stay float32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def make_optimizer(
    config: TrainingConfig, parameters: list[nn.Parameter]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over `parameters` and the configured learning-rate schedule (stepped once per optimizer step)."""
    if not parameters:
        raise ValueError("Nothing to train: no parameter requires a gradient.")
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_train_steps,
    )
    return optimizer, lr_scheduler


def training_card_text(config: TrainingConfig, script: str) -> str:
    """The "Training" section of a model card: the script and its full configuration."""
    settings = json.dumps(asdict(config), indent=2)
    return (
        f"Trained with `examples/{script}` for {config.max_train_steps} steps on `{config.dataset_name}` "
        f"(split `{config.dataset_split}`).\n\n```json\n{settings}\n```"
    )


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def is_local_path(name_or_path: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else (absolute, `./`, `~`, deeper paths) is a local path
    (the complement of [`~synfer_diffusers.hub_utils.is_hub_repo_id`])."""
    return not is_hub_repo_id(name_or_path)


def load_training_dataset(name_or_path: str, split: str, max_samples: int | None = None) -> datasets.Dataset:
    """Loads one split of a dataset.

    Args:
        name_or_path: a folder written by `Dataset.save_to_disk` (read with `load_from_disk`), any folder that
            `datasets.load_dataset(folder)` reads (parquet shards, imagefolder; works offline), or a Hub id.
        split: the split to return (a `save_to_disk` folder holding a single `Dataset` has no split names).
        max_samples: keep only the first `max_samples` rows.
    """
    if is_local_path(name_or_path):
        path = os.path.expanduser(name_or_path)
        if not os.path.isdir(path):
            raise ValueError(f"`dataset_name`: no dataset folder at {name_or_path!r}.")
        saved_to_disk = any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))
        loaded = datasets.load_from_disk(path) if saved_to_disk else datasets.load_dataset(path)
    else:
        try:
            loaded = datasets.load_dataset(name_or_path)
        except Exception as error:  # offline, unknown repo, ...: say which option is wrong
            raise ValueError(
                f"`dataset_name`: {name_or_path!r} is not a local folder and could not be loaded from the Hub ({error})."
            ) from error
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"`dataset_split`: {name_or_path!r} has splits {list(loaded)}, not {split!r}.")
        loaded = loaded[split]
    if max_samples is not None:
        loaded = loaded.select(range(min(max_samples, len(loaded))))
    if len(loaded) == 0:
        raise ValueError(f"`dataset_name`: split {split!r} of {name_or_path!r} is empty.")
    return loaded


def validate_columns(dataset: datasets.Dataset, required: Mapping[str, str]) -> None:
    """Raises a `ValueError` listing every required column the dataset lacks.

    Args:
        required: `{column: what it must hold}`, e.g. `{"text": "captions (--text_column)"}`.
    """
    missing = [
        f"{column!r} ({description})" for column, description in required.items() if column not in dataset.column_names
    ]
    if missing:
        raise ValueError(
            f"The dataset lacks the column(s) {', '.join(missing)}; its columns are {dataset.column_names}. "
            "Point the `--*_column` options at the right names."
        )


def validate_action_units_column(dataset: datasets.Dataset, column: str, au_space: AUSpace) -> None:
    """Checks from the features alone (no data read) that `column` is a list of AU values whose fixed length, if
    declared, matches `au_space`. Values are checked by [`load_action_units`]."""
    feature = dataset.features[column]
    if not isinstance(feature, (datasets.List, datasets.Sequence, datasets.LargeList)):
        raise ValueError(f"Column {column!r} must hold a list of {au_space.num_aus} AU values per row, got {feature}.")
    length = getattr(feature, "length", -1)
    if length not in (-1, None, au_space.num_aus):
        raise ValueError(
            f"Column {column!r} holds {length} AU values per row but the AU space has {au_space.num_aus} "
            f"({', '.join(au_space.names)}); choose the matching `--au_space`."
        )


def load_action_units(dataset: datasets.Dataset, column: str, au_space: AUSpace) -> torch.Tensor:
    """The AU column as a validated `(N, num_aus)` float32 tensor (width, NaN/inf and range checked)."""
    rows = dataset.with_format("numpy", columns=[column])[:][column]  # (N, num_aus), or an object array if ragged
    try:
        values = torch.from_numpy(np.stack(list(rows)).astype(np.float32))
    except ValueError as error:
        raise ValueError(
            f"Column {column!r} has rows of different lengths; expected {au_space.num_aus} values each."
        ) from error
    return au_space.validate_tensor(values, field=f"dataset column {column!r}")


def expression_label_ids(dataset: datasets.Dataset, column: str) -> torch.Tensor:
    """The expression column as `(N,)` ids into [`EXPRESSIONS`], mapped by name: a `ClassLabel` whose names are
    expressions, or strings. Unknown names raise a `ValueError` naming the column and the allowed values."""
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        to_global = [EXPRESSIONS.label_id(name, field=f"class names of column {column!r}") for name in feature.names]
        return torch.tensor([to_global[i] for i in dataset[column]], dtype=torch.long)
    if feature == datasets.Value("string"):
        return torch.tensor([EXPRESSIONS.label_id(name, field=f"column {column!r}") for name in dataset[column]])
    raise ValueError(f"Column {column!r} must be a ClassLabel or strings naming expressions, got {feature}.")


def load_images(
    dataset: datasets.Dataset, column: str, resolution: int, desc: str = "Loading images"
) -> torch.Tensor:  # (N, 3, R, R) uint8
    """Decodes every image of `column`, resized (shorter side) and centre-cropped to `resolution`, into one uint8
    tensor: 20k FaceWorld faces take 250 MB, and batches are then plain indexing."""
    if not isinstance(dataset.features[column], datasets.Image):
        raise ValueError(f"Column {column!r} must be an `Image` feature, got {dataset.features[column]}.")
    images = torch.empty((len(dataset), 3, resolution, resolution), dtype=torch.uint8)
    rows = dataset.select_columns([column]).iter(batch_size=256)
    start = 0
    for batch in tqdm(rows, desc=desc, total=-(-len(dataset) // 256), leave=False):
        array = np.stack([resize_and_center_crop(image, resolution) for image in batch[column]])  # (b, R, R, 3)
        images[start : start + len(array)] = torch.from_numpy(array).permute(0, 3, 1, 2)
        start += len(array)
    return images


def drop_captions(input_ids: torch.Tensor, drop_mask: torch.Tensor, empty_ids: torch.Tensor) -> torch.Tensor:
    """Token ids `(B, L)` with the rows where `drop_mask` is True replaced by the empty prompt's ids `(1, L)`."""
    return torch.where(drop_mask[:, None], empty_ids, input_ids)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 `(B, 3, H, W)` in [0, 255] -> float32 in [-1, 1], the range of `AutoencoderKL`."""
    return images.float() / 127.5 - 1.0


def tokenize_captions(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str]) -> torch.Tensor:  # (N, L)
    """Token ids padded / truncated to the tokenizer's `model_max_length`, as `SynFERPipeline.encode_prompt`."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


# ----------------------------------------------------------------------------------------------------------
# Deterministic data order and randomness
# ----------------------------------------------------------------------------------------------------------


def _generator(*entropy: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def step_generator(seed: int, step: int, process_index: int = 0) -> torch.Generator:
    """The CPU generator for every random draw of `step` (noise, timesteps, dropout masks, AU smoothing): a
    function of `(seed, step, process)`, so a resumed run draws exactly what the uninterrupted run drew."""
    return _generator(seed, step, process_index, 1)


@dataclass
class BatchOrder:
    """Which rows form each step's batch: epoch `e` walks a permutation seeded by `(seed, e)`, dropping the last
    partial batch. With several processes the global batch of `batch_size * num_processes` rows is split
    between them."""

    num_samples: int
    batch_size: int
    seed: int
    process_index: int = 0
    num_processes: int = 1

    def __post_init__(self) -> None:
        global_batch = self.batch_size * self.num_processes
        if global_batch > self.num_samples:
            raise ValueError(
                f"`train_batch_size` x processes ({global_batch}) exceeds the {self.num_samples} training rows."
            )
        self.steps_per_epoch = self.num_samples // global_batch

    def indices(self, step: int) -> torch.Tensor:  # (batch_size,)
        epoch, position = divmod(step, self.steps_per_epoch)
        permutation = torch.randperm(self.num_samples, generator=_generator(self.seed, epoch, 0))
        global_batch = self.batch_size * self.num_processes
        batch = permutation[position * global_batch : (position + 1) * global_batch]
        return batch[self.process_index :: self.num_processes]


# ----------------------------------------------------------------------------------------------------------
# Conditioning augmentations
# ----------------------------------------------------------------------------------------------------------


def smooth_action_units(
    action_units: torch.Tensor,  # (B, num_aus)
    au_space: AUSpace,
    generator: torch.Generator,
    noise_std: float = 0.2,
    noise_prob: float = 1.0,
    round_prob: float = 0.1,
) -> torch.Tensor:  # (B, num_aus)
    """FineFace's AU "distribution smoothing": each row gets Gaussian noise (std `noise_std`) with probability
    `noise_prob`, or, with probability `round_prob`, is rounded to whole intensity levels instead; the result is
    clipped to the space's range. Training on nearby values makes the adapter respond smoothly to intensities
    it never saw exactly (FineFace reports better AU consistency)."""
    batch = action_units.shape[0]
    noise = torch.randn(action_units.shape, generator=generator) * noise_std
    add_noise = torch.rand(batch, generator=generator) < noise_prob
    round_row = torch.rand(batch, generator=generator) < round_prob
    smoothed = torch.where(add_noise[:, None], action_units + noise.to(action_units), action_units)
    smoothed = torch.where(round_row[:, None].to(action_units.device), action_units.round(), smoothed)
    return smoothed.clamp(0.0, au_space.max_value)


def condition_dropout_masks(
    batch_size: int, generator: torch.Generator, text_prob: float, au_prob: float = 0.0, both_prob: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:  # (B,) bool each: drop text, drop AUs
    """IP-Adapter's condition dropout: each row independently drops only the text (`text_prob`), only the AUs
    (`au_prob`) or both (`both_prob`), the three events disjoint (their sum must be <= 1). Dropped text is the
    empty prompt; dropped AUs are the UNet's null AU tokens (what classifier-free guidance uses)."""
    if text_prob + au_prob + both_prob > 1.0:
        raise ValueError(f"Condition dropout probabilities sum to {text_prob + au_prob + both_prob} > 1.")
    u = torch.rand(batch_size, generator=generator)
    text_only = u < text_prob
    au_only = (u >= text_prob) & (u < text_prob + au_prob)
    both = (u >= text_prob + au_prob) & (u < text_prob + au_prob + both_prob)
    return text_only | both, au_only | both


# ----------------------------------------------------------------------------------------------------------
# Diffusion loss
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_latents(vae: nn.Module, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images in [-1, 1] `(B, 3, H, W)` -> scaled latents `(B, C, H/f, W/f)`, sampled from the posterior."""
    pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
    latents = vae.encode(pixel_values).latent_dist.sample(generator=generator)
    return latents.float() * vae.config.scaling_factor


def add_training_noise(
    latents: torch.Tensor, scheduler: DDPMScheduler, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward diffusion at uniformly drawn timesteps (DDPM eq. 4): `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`.
    Returns `(x_t, eps, t)`."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(latents.device)
    return scheduler.add_noise(latents, noise, timesteps), noise, timesteps


def diffusion_loss(
    model_pred: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler: DDPMScheduler,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """MSE to the scheduler's target (epsilon, or v for `v_prediction` models), optionally with min-SNR-gamma
    weighting (Hang et al. 2023, eq. 9: `min(SNR_t, gamma) / SNR_t` for epsilon, `/ (SNR_t + 1)` for v)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"Unsupported scheduler `prediction_type` {prediction_type!r}; use epsilon or v_prediction.")
    if snr_gamma is None:
        return F.mse_loss(model_pred.float(), target.float())
    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def add_unet_lora(unet: nn.Module, rank: int, alpha: float | None = None) -> None:
    """Adds peft LoRA layers (gaussian init, zero output at start) to the UNet's attention projections. peft
    marks only the LoRA weights trainable."""
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGET_MODULES)
    )
    unet.add_adapter(config)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors + JSON, atomic, last K kept
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """What [`load_training_state`] restored: the step reached, the caller's `extra` dict and the folder."""

    step: int
    extra: dict[str, Any]
    path: str


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained (`requires_grad=True`). Frozen weights are not stored: a resumed run rebuilds
    them from the pretrained model (or the seed) exactly as the first run did."""
    return {name: p.detach().cpu().contiguous() for name, p in module.named_parameters() if p.requires_grad}


def _flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors, with their few scalars for JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, python_state, gauss_next = random.getstate()
    tensors["python"] = torch.tensor(python_state, dtype=torch.int64)
    return tensors, {"numpy": [kind, position, has_gauss, cached_gaussian], "python": [version, gauss_next]}


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    kind, position, has_gauss, cached_gaussian = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(tensors["python"].tolist()), gauss_next))


def _checkpoint_step(name: str) -> int | None:
    suffix = name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """Complete `checkpoint-{step}` folders of `output_dir`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(step, name) for name in os.listdir(output_dir) if (step := _checkpoint_step(name)) is not None]
    return [os.path.join(output_dir, name) for _, name in sorted(found)]


def find_latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_training_state(
    output_dir: str | os.PathLike,
    step: int,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    extra: Mapping[str, Any] | None = None,
    total_limit: int | None = None,
) -> str:
    """Writes `output_dir/checkpoint-{step}` and returns its path.

    Layout: `{name}.safetensors` per module ([`trainable_state_dict`]), `optimizer.safetensors` (per-parameter
    state tensors, keys `"{param index}.{name}"`), `rng_state.safetensors`, and `training_state.json` (step,
    `extra`, optimizer param groups and scalars, LR-scheduler state, RNG scalars). The folder is written under a
    temporary name and renamed, so a killed run never leaves a partial `checkpoint-*`; then only the newest
    `total_limit` checkpoints are kept.
    """
    final = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    temporary = os.path.join(output_dir, f".{CHECKPOINT_PREFIX}{step}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    for name, module in modules.items():
        save_file(trainable_state_dict(module), os.path.join(temporary, f"{name}.safetensors"))
    optimizer_tensors, optimizer_meta = _flatten_optimizer_state(optimizer.state_dict())
    save_file(optimizer_tensors, os.path.join(temporary, "optimizer.safetensors"))
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, os.path.join(temporary, "rng_state.safetensors"))
    state = {
        "step": step,
        "modules": list(modules),
        "optimizer": optimizer_meta,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "rng": rng_meta,
        "extra": dict(extra or {}),
    }
    with open(os.path.join(temporary, STATE_FILE), "w") as f:
        json.dump(state, f, indent=1)
    if os.path.exists(final):  # a rerun reached the same step: swap the folders, never mix their files
        shutil.rmtree(final)
    os.replace(temporary, final)
    if total_limit is not None:
        for stale in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(stale)
    return final


def _load_module_state(module: nn.Module, path: str) -> None:
    tensors = load_file(path)
    expected = trainable_state_dict(module).keys()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint file {path} does not match the model being trained (same options as the first run?): "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}."
        )
    module.load_state_dict(tensors, strict=False)


def load_training_state(
    checkpoint_dir: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> TrainingState:
    """Restores what [`save_training_state`] wrote into the given (already built) modules, optimizer, scheduler
    and the global RNGs."""
    with open(os.path.join(checkpoint_dir, STATE_FILE)) as f:
        state = json.load(f)
    if sorted(state["modules"]) != sorted(modules):
        raise ValueError(f"Checkpoint {checkpoint_dir} holds modules {state['modules']}, expected {list(modules)}.")
    for name, module in modules.items():
        _load_module_state(module, os.path.join(checkpoint_dir, f"{name}.safetensors"))
    optimizer_tensors = load_file(os.path.join(checkpoint_dir, "optimizer.safetensors"))
    optimizer.load_state_dict(_unflatten_optimizer_state(optimizer_tensors, state["optimizer"]))
    if lr_scheduler is not None and state["lr_scheduler"] is not None:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    _set_rng_state(load_file(os.path.join(checkpoint_dir, "rng_state.safetensors")), state["rng"])
    return TrainingState(step=state["step"], extra=state["extra"], path=str(checkpoint_dir))


def load_latest_training_state(
    output_dir: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> TrainingState | None:
    """[`load_training_state`] from the newest `checkpoint-*` of `output_dir`; `None` when there is none."""
    latest = find_latest_checkpoint(output_dir)
    return load_training_state(latest, modules, optimizer, lr_scheduler) if latest else None


# ----------------------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TrainingSummary:
    """What one call of [`run_training_loop`] did: the step it started from (> 0 after a resume), the step it
    reached, and the loss of every step it ran (averaged over processes)."""

    start_step: int
    final_step: int
    losses: list[float] = field(default_factory=list)


def run_training_loop(
    accelerator: Accelerator,
    config: TrainingConfig,
    compute_loss: Callable[[int, torch.Generator], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    checkpoint_modules: Mapping[str, nn.Module],
    after_step: Callable[[int], None] | None = None,
    validate: Callable[[int], None] | None = None,
    description: str = "Training",
) -> TrainingSummary:
    """Runs optimizer steps up to `config.max_train_steps`, resuming first if `config.resume`. Creates
    `output_dir` and writes the configuration to `training_config.json` there.

    Args:
        compute_loss: `(step, generator) -> scalar loss` for that step's batch; all its random draws must come
            from `generator` (see [`step_generator`]).
        checkpoint_modules: unwrapped modules whose trained parameters go into checkpoints (an EMA copy too).
        after_step: called with the number of completed steps after each optimizer step (e.g. an EMA update).
        validate: called on the main process every `config.validation_steps` steps and at the last step.
    """
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "training_config.json"), "w") as f:
            json.dump(asdict(config), f, indent=2)
    start_step = 0
    if config.resume:
        state = load_latest_training_state(config.output_dir, checkpoint_modules, optimizer, lr_scheduler)
        if state is None:
            accelerator.print(f"--resume: no checkpoint in {config.output_dir}, starting from step 0.")
        else:
            start_step = state.step
            accelerator.print(f"Resumed from {state.path} at step {start_step}.")
    summary = TrainingSummary(start_step=start_step, final_step=start_step)
    progress = tqdm(
        total=config.max_train_steps,
        initial=start_step,
        desc=description,
        disable=not accelerator.is_local_main_process,
    )
    for step in range(start_step, config.max_train_steps):
        loss = compute_loss(step, step_generator(config.seed, step, accelerator.process_index))
        accelerator.backward(loss)
        if config.max_grad_norm > 0 and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if after_step is not None:
            after_step(done)
        summary.losses.append(accelerator.gather(loss.detach()[None]).mean().item())
        summary.final_step = done
        progress.set_postfix(loss=f"{summary.losses[-1]:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        progress.update()
        last = done == config.max_train_steps
        if done % config.checkpointing_steps == 0 or last:
            if accelerator.is_main_process:
                save_training_state(
                    config.output_dir, done, checkpoint_modules, optimizer, lr_scheduler,
                    total_limit=config.checkpoints_total_limit,
                )  # fmt: skip
            accelerator.wait_for_everyone()
        if validate is not None and (done % config.validation_steps == 0 or last) and accelerator.is_main_process:
            validate(done)
    progress.close()
    return summary


# ----------------------------------------------------------------------------------------------------------
# Validation images
# ----------------------------------------------------------------------------------------------------------


def tile_images(rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str] | None = None) -> Image.Image:
    """Tiles equally sized images into a grid (one list per row), with an optional label left of each row."""
    width, height = rows[0][0].size
    margin = 8 + 6 * max(map(len, row_labels)) if row_labels else 0
    grid = Image.new("RGB", (margin + width * max(map(len, rows)), height * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB"), (margin + c * width, r * height))
        if row_labels:
            draw.text((4, r * height + height // 2 - 5), row_labels[r], fill="black")
    return grid


def save_expression_grid(
    pipeline: Any,
    path: str | os.PathLike,
    expressions: Sequence[str],
    num_identities: int,
    prompt: str,
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
) -> Image.Image:
    """Generates an expressions x identities grid with a `SynFERPipeline` and saves it as a PNG.

    Column `j` uses the seed `seed + j` in every row, so a row differs from another only by its target
    expression (prompt words, and the EMFACS prototype AUs when the UNet has an AU adapter)."""
    generators = [torch.Generator().manual_seed(seed + j) for _ in expressions for j in range(num_identities)]
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        prompt=prompt,
        expression=[name for name in expressions for _ in range(num_identities)],
        generator=generators,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    ).images
    rows = [images[i * num_identities : (i + 1) * num_identities] for i in range(len(expressions))]
    grid = tile_images(rows, row_labels=list(expressions))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    return grid
