"""Training configurations: dataclasses whose fields carry their help text and are checked in `__post_init__`,
the command-line parser, the `Accelerator` and the optimizer every example shares."""

from __future__ import annotations

import difflib
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, NoReturn, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.utils import is_bitsandbytes_available, is_xformers_available
from huggingface_hub.errors import RevisionNotFoundError
from torch import nn
from transformers import HfArgumentParser

from ..facs import EXPRESSIONS
from ..hub_utils import MODEL_LOAD_ERRORS, hub_read_error, load_error_reason
from ..value_checks import check_int, check_positive, check_probability
from .checkpoints import resolve_checkpoint


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
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A local dataset folder (parquet / imagefolder layout, or `save_to_disk`) or a Hub id."},
    )
    train_data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Instead of `dataset_name` (diffusers' option): a folder read by the `imagefolder` builder, images "
            "with a `metadata.jsonl` / `metadata.csv` giving the other columns (captions, labels, AUs)."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images (`Image` feature)."})
    resolution: int = field(
        default=64, metadata={"help": "Images are resized (shorter side) to this side, then cropped to a square."}
    )
    center_crop: bool = field(
        default=False,
        metadata={"help": "Crop the centre of each resized image; unset: a random crop (diffusers' meaning)."},
    )
    random_flip: bool = field(default=False, metadata={"help": "Flip each training image horizontally with p = 0.5."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N rows (quick runs, debugging)."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the dataset (`load_dataset(..., streaming=True)`) instead of memory-mapping it."},
    )
    shuffle_buffer_size: int = field(
        default=1000, metadata={"help": "With `--streaming`: rows in the shuffle buffer."}
    )
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "DataLoader worker processes decoding rows (0: in the main process)."}
    )
    train_batch_size: int = field(default=64, metadata={"help": "Batch size per process (one micro-batch)."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches accumulated into one optimizer step."}
    )
    max_train_steps: int | None = field(
        default=None,
        metadata={"help": "Total optimizer steps (resumed runs included); unset: `num_train_epochs` epochs."},
    )
    num_train_epochs: int = field(default=100, metadata={"help": "Epochs, where `max_train_steps` is unset."})
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
    allow_tf32: bool = field(
        default=False, metadata={"help": "Allow TF32 matmuls on Ampere or newer GPUs (faster, slightly less exact)."}
    )
    use_8bit_adam: bool = field(default=False, metadata={"help": "bitsandbytes' 8-bit AdamW (needs bitsandbytes)."})
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
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "`latest` (the newest `checkpoint-*` of `output_dir`; a fresh start if none) or a checkpoint "
            "folder to continue from (`accelerator.load_state`)."
        },
    )
    validation_steps: int = field(
        default=500, metadata={"help": "Write validation images every N steps (and at the last step)."}
    )
    report_to: str | None = field(
        default=None,
        metadata={"help": "accelerate tracker(s) for losses and learning rate: `tensorboard`, `wandb`, `all`..."},
    )
    logging_dir: str = field(default="logs", metadata={"help": "Tracker folder, relative to `output_dir`."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the output folder to `hub_model_id`."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repo id to push to (default: the output folder's name)."}
    )

    deprecated_options: ClassVar[dict[str, str]] = {}
    """Old option -> its new name (`--old value` still works, with a `FutureWarning`)."""

    @property
    def dataset_source(self) -> str:
        """The training data: `dataset_name`, or else `train_data_dir`."""
        return self.dataset_name or self.train_data_dir

    def __post_init__(self) -> None:
        if (self.dataset_name is None) == (self.train_data_dir is None):
            raise ValueError("Give exactly one of `dataset_name` and `train_data_dir`.")
        if self.use_8bit_adam and not is_bitsandbytes_available():
            raise ValueError("`use_8bit_adam` needs bitsandbytes: `pip install bitsandbytes`.")
        for name in ("output_dir", "dataset_name", "train_data_dir", "dataset_split", "image_column"):
            if getattr(self, name) is None and name in ("dataset_name", "train_data_dir"):
                continue
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"`{name}` must be a non-empty string, got {getattr(self, name)!r}.")
        for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                     "checkpointing_steps", "validation_steps", "shuffle_buffer_size"):  # fmt: skip
            check_int(name, getattr(self, name), 1)
        for name in ("max_train_samples", "max_train_steps", "checkpoints_total_limit"):
            check_int(name, getattr(self, name), 1, optional=True)
        check_int("lr_warmup_steps", self.lr_warmup_steps, 0)
        check_int("dataloader_num_workers", self.dataloader_num_workers, 0)
        check_positive(self, "learning_rate")
        check_positive(self, "adam_weight_decay", "max_grad_norm", allow_zero=True)
        resolve_checkpoint(self.output_dir, self.resume_from_checkpoint)  # a named checkpoint must exist


@dataclass(kw_only=True)
class DiffusionTrainingConfig(TrainingConfig):
    """Options shared by the two UNet stages (text-to-image fine-tune and AU adapter)."""

    deprecated_options: ClassVar[dict[str, str]] = {"text_column": "caption_column", "lora_rank": "rank"}

    caption_column: str = field(
        default="text", metadata={"help": "Column holding the captions (formerly `--text_column`)."}
    )
    text_dropout_prob: float = field(
        default=0.05, metadata={"help": "Probability of replacing a caption by '' (for classifier-free guidance)."}
    )
    snr_gamma: float | None = field(
        default=None,
        metadata={"help": "Min-SNR loss weighting gamma (Hang et al. 2023; 5.0 is usual); unset: plain MSE."},
    )
    rank: int = field(
        default=4, metadata={"help": "Rank of the UNet LoRA layers, where LoRA is used (formerly `--lora_rank`)."}
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha; unset: equal to the rank."})
    cache_latents: bool = field(
        default=False,
        metadata={
            "help": "Encode every image's centre crop with the VAE once into a latent cache reused by later runs "
            "and stages (random crops and flips cannot be cached)."
        },
    )
    latent_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder of latent caches; unset: `synfer_latents` in the datasets cache."}
    )
    noise_offset: float = field(
        default=0.0,
        metadata={"help": "Offset noise (Lin et al. 2023): add this scale times a per-channel N(0, 1) to the noise."},
    )
    prediction_type: Literal["epsilon", "v_prediction"] | None = field(
        default=None,
        metadata={
            "help": "What the UNet learns to predict, for the loss and the saved scheduler; unset: the base "
            "scheduler's `prediction_type` (epsilon from scratch)."
        },
    )
    revision: str | None = field(
        default=None, metadata={"help": "Git revision (branch, tag, commit) of a pretrained model on the Hub."}
    )
    variant: str | None = field(
        default=None, metadata={"help": "Weights variant of the pretrained model's files, e.g. `fp16`."}
    )
    enable_xformers_memory_efficient_attention: bool = field(
        default=False, metadata={"help": "xformers' memory-efficient attention in the UNet (CUDA GPU, xformers)."}
    )
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
        check_positive(self, "rank", allow_zero=True)
        check_positive(self, "lora_alpha", allow_none=True)
        check_positive(self, "noise_offset", allow_zero=True)
        check_positive(self, "validation_guidance_scale", allow_zero=True)
        if self.cache_latents and self.streaming:
            raise ValueError("`cache_latents` needs a memory-mapped dataset: drop `streaming` (or the cache).")
        if self.cache_latents and self.random_flip:
            raise ValueError("`cache_latents` stores one encoding per image: drop `random_flip` (or the cache).")
        if self.enable_xformers_memory_efficient_attention and not is_xformers_available():
            raise ValueError("`enable_xformers_memory_efficient_attention` needs xformers: `pip install xformers`.")
        if self.enable_xformers_memory_efficient_attention and not torch.cuda.is_available():
            raise ValueError("`enable_xformers_memory_efficient_attention` needs a CUDA GPU; none is available.")
        if not self.validation_expressions:
            raise ValueError("`validation_expressions` must name at least one expression.")
        for i, name in enumerate(self.validation_expressions):
            EXPRESSIONS.label_id(name, field=f"validation_expressions[{i}]")


C = TypeVar("C")
T = TypeVar("T")


class ConfigParser(HfArgumentParser):
    """transformers' `HfArgumentParser` (one `--field` per dataclass field, help from its metadata) whose errors are
    one line, `prog: error: ...`, with exit status 2 (argparse prints its whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_config(config_class: type[C], argv: Sequence[str] | None = None, description: str | None = None) -> C:
    """Command line -> `config_class` ([`ConfigParser`]).

    An unknown option ends the program with one line naming it (and the closest known option) and exit status 2,
    as a missing or mistyped value does. Invalid values raise the config's `ValueError`; read from the command line
    (`argv` None) they end the program the same way. Options in `config_class.deprecated_options` are renamed with
    a `FutureWarning`.
    """
    parser = ConfigParser(config_class, description=description)
    args = _renamed_options(config_class, list(sys.argv[1:] if argv is None else argv))
    namespace, unknown = parser.parse_known_args(args=args)
    if unknown:
        known = [option for action in parser._actions for option in action.option_strings]
        close = difflib.get_close_matches(unknown[0].split("=", 1)[0], known, n=1)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{f'; did you mean {close[0]}?' if close else ''}")
    try:
        return config_class(**vars(namespace))
    except ValueError as error:
        if argv is not None:
            raise
        parser.error(str(error))


def _renamed_options(config_class: type, args: list[str]) -> list[str]:
    """`args` with each deprecated `--old` (or `--old=value`) replaced by its new name, warning once per option."""
    deprecated = getattr(config_class, "deprecated_options", {})
    renamed = []
    for arg in args:
        name, equals, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in deprecated:
            new = deprecated[name]
            warnings.warn(f"`--{name}` is deprecated; use `--{new}` (diffusers' name).", FutureWarning, stacklevel=3)
            arg = f"--{new}{equals}{value}"
        renamed.append(arg)
    return renamed


def run_from_command_line(main: Callable[[], Any]) -> None:
    """Runs a training script's `main()` as its command: a `ValueError` (the package's error for bad input, naming
    the option) ends the program with one line `script.py: error: ...` and exit status 2, as [`parse_config`] does
    for the options themselves, instead of a traceback."""
    try:
        main()
    except ValueError as error:
        message = " ".join(line.strip() for line in str(error).splitlines())
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {message}\n")
        sys.exit(2)


def load_pretrained(load: Callable[..., T], config: Any) -> T:
    """`load(config.pretrained_model_name_or_path, revision=config.revision, variant=config.variant)` (a
    `from_pretrained`); a failure is a `ValueError` with its reason in one line, naming `revision` for a revision the
    repo does not have and `pretrained_model_name_or_path` otherwise."""
    name = config.pretrained_model_name_or_path
    try:
        return load(name, revision=config.revision, variant=config.variant)
    except MODEL_LOAD_ERRORS as error:
        if isinstance(hub_read_error(error), RevisionNotFoundError):
            raise ValueError(f"`revision` {config.revision!r}: {name!r} has no such revision.") from error
        reason = load_error_reason(error)
        raise ValueError(f"`pretrained_model_name_or_path` {name!r} could not be loaded: {reason}") from error


def launched_on_cpus() -> bool:
    """Several processes (`WORLD_SIZE` > 1, as `torchrun` or `accelerate launch` set it) and no GPU. accelerate
    picks its multi-CPU mode only when told the run is on the CPU: without `cpu=True` every process would believe
    it is alone (`DistributedType.NO`), train on its own and never synchronise gradients."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def prepare_run(config: TrainingConfig) -> Accelerator:
    """The `Accelerator` (mixed precision, gradient accumulation, trackers, real multi-CPU processes: see
    [`launched_on_cpus`]), with every RNG seeded so models built next are initialised identically in every process
    and on resume. Nothing is written yet: `output_dir` is created when training starts."""
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
        ),
        cpu=launched_on_cpus(),
    )
    if config.allow_tf32:  # as diffusers' examples: TF32 for matmuls on Ampere and newer GPUs
        torch.backends.cuda.matmul.allow_tf32 = True
    set_seed(config.seed)
    return accelerator


def frozen_weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """dtype for frozen models under mixed precision (trained weights stay float32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def make_optimizer(
    config: TrainingConfig, parameters: list[nn.Parameter]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (bitsandbytes' 8-bit AdamW with `--use_8bit_adam`) over `parameters` and the configured learning-rate
    schedule (stepped once per optimizer step)."""
    if not parameters:
        raise ValueError("Nothing to train: no parameter requires a gradient.")
    if config.use_8bit_adam:
        import bitsandbytes

        optimizer_class = bitsandbytes.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    optimizer = optimizer_class(parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_train_steps,
    )
    return optimizer, lr_scheduler


def command_line_options(config: TrainingConfig) -> list[str]:
    """The options that reproduce `config`: every field that differs from its default, as `--field value`."""
    options = []
    for item in fields(config):
        value = getattr(config, item.name)
        default = item.default_factory() if item.default_factory is not MISSING else item.default
        if value == default and default is not MISSING:
            continue
        if isinstance(value, bool):
            options.append(f"--{item.name}" if value else f"--no_{item.name}")
        else:
            options += [f"--{item.name}", *map(str, value if isinstance(value, list) else [value])]
    return options


def training_card_text(config: TrainingConfig, script: str) -> str:
    """The "Training" section of a model card: the command, the script and its full configuration."""
    settings = json.dumps(asdict(config), indent=2)
    command = shlex.join(["accelerate", "launch", f"examples/{script}", *command_line_options(config)])
    return (
        f"Trained with `examples/{script}` for {config.max_train_steps} steps on `{config.dataset_source}` "
        f"(split `{config.dataset_split}`):\n\n```bash\n{command}\n```\n\n```json\n{settings}\n```"
    )
