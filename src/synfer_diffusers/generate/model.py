"""The generating model: which checkpoint (the embedded default unless named), loaded how (dtype, scheduler,
device), and its fingerprint for the plan."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import diffusers
import torch
from huggingface_hub import snapshot_download

from ..fingerprint import update_with_component
from ..hub_utils import MODEL_LOAD_ERRORS, is_hub_repo_id, load_error_reason
from ..labels import ClassifierVoter
from ..pipelines.synfer.pipeline_synfer import SynFERPipeline
from .config import SyntheticSetConfig, check_eta, torch_dtype

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"
"""The embedded default checkpoint (a FaceWorld-trained `SynFERPipeline` folder), used when no model is named."""
DEFAULT_MODEL_ENV = "SYNFER_DEFAULT_MODEL"
"""Environment variable naming another folder to use when no model is given."""
TINY_MODEL_NAME = "synfer-tiny-random"
"""Name recorded for the stand-in used while no embedded default exists: tiny random weights, 64x64 noise."""

def default_model_dir() -> Path:
    """The checkpoint used when no model is given: `$SYNFER_DEFAULT_MODEL` if set, else the embedded default."""
    return Path(os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_MODEL_DIR)


def resolve_pipeline(model: str | None = None, dtype: torch.dtype | None = None) -> tuple[SynFERPipeline, str]:
    """Loads `model` (a `SynFERPipeline` folder or Hub repo id) in `dtype` (default float32); with `None`, the default
    checkpoint ([`default_model_dir`]: the embedded FaceWorld model in `synfer_diffusers/default_model/` unless
    `$SYNFER_DEFAULT_MODEL` names another folder), or, where that folder holds none, tiny random components (64x64
    images of noise, with a warning; float32). Returns `(pipeline, name)`."""
    dtype = dtype or torch.float32  # the embedded default is stored in float16 to keep the package small
    if model is None:
        folder = default_model_dir()
        if (folder / "model_index.json").is_file():
            default = SynFERPipeline.from_pretrained(folder, dtype=dtype)
            return default, "synfer_diffusers/default_model" if folder == DEFAULT_MODEL_DIR else str(folder)
        from ..tiny import make_tiny_components

        logger.warning(
            f"No default checkpoint in {folder}: using tiny RANDOM components "
            f"({TINY_MODEL_NAME}); the images are noise. Pass --model to use a trained SynFERPipeline."
        )
        return SynFERPipeline(**make_tiny_components(seed=0, sample_size=32)), TINY_MODEL_NAME
    if not is_hub_repo_id(str(model)) and not (Path(model) / "model_index.json").is_file():
        raise ValueError(f"`model` {str(model)!r} is not a SynFERPipeline folder: it has no model_index.json.")
    try:
        pipe = SynFERPipeline.from_pretrained(model, dtype=dtype)
    except MODEL_LOAD_ERRORS as error:
        raise ValueError(
            f"`model` {str(model)!r} could not be loaded as a SynFERPipeline: {load_error_reason(error)}"
        ) from error
    return pipe, str(model)


VOTERS_FOLDER = "voters"
"""A checkpoint's folder of extra voters shipped with it: `voters/<name>/` holds a transformers image classifier
(`config.json` with an `id2label` mappable onto `EXPRESSIONS`, safetensors weights, image processor)."""


def checkpoint_voters(model: str | None = None) -> list[ClassifierVoter]:
    """The voters a checkpoint ships in its `voters/` folder ([`VOTERS_FOLDER`]), named by their sub-folders, for
    `model` (a folder or Hub repo id; `None`: the default checkpoint). `synfer generate` adds them to the vote."""
    if model is None:
        folder = default_model_dir()
    elif is_hub_repo_id(str(model)) and not Path(model).is_dir():
        try:
            folder = Path(snapshot_download(str(model), allow_patterns=[f"{VOTERS_FOLDER}/**"]))
        except (OSError, ValueError) as error:
            reason = load_error_reason(error)
            raise ValueError(f"`model` {str(model)!r}: its voters could not be read: {reason}") from error
    else:
        folder = Path(model)
    voters = []
    for path in sorted((folder / VOTERS_FOLDER).glob("*/config.json")):
        try:
            voters.append(ClassifierVoter.from_pretrained(str(path.parent), name=path.parent.name))
        except MODEL_LOAD_ERRORS as error:
            raise ValueError(f"`model`: its voter {path.parent.name!r} could not be loaded: {error}") from error
    return voters


def configure_pipeline(pipe: SynFERPipeline, config: SyntheticSetConfig, device: torch.device) -> SynFERPipeline:
    """Gives `pipe` (in place) the config's sampler (`scheduler` built from the checkpoint's scheduler config; DDIM
    with `clip_sample=False`, as latents need), `dtype`, `device`, `channels_last` memory format (UNet and VAE) and
    `compile` (the UNet's repeated blocks, `compile_repeated_blocks`, after [`check_compile`]; a pipeline compiled
    before stays compiled), and checks that `prototype_intensity` fits the
    model's AU space and `eta` the scheduler. Returns `pipe`."""
    pipe.au_space.prototype_value(config.prototype_intensity, field="prototype_intensity")
    if config.scheduler is not None:
        scheduler_class = getattr(diffusers, config.scheduler)
        latent_options = {"clip_sample": False} if scheduler_class is diffusers.DDIMScheduler else {}
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **latent_options)
    check_eta(config.eta, type(pipe.scheduler))
    dtype = torch_dtype(config.dtype)
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if any(parameter.dtype != dtype for module in modules for parameter in module.parameters()):
        pipe.to(dtype=dtype)
    pipe.to(device)
    if config.channels_last:
        for module in (pipe.unet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    if config.compile:
        check_compile(device)
        pipe.unet.compile_repeated_blocks()
    return pipe


def _compile_probe(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * 2 + 1


def check_compile(device: torch.device) -> None:
    """Refuses `compile` where torch cannot compile for `device` (no C++ compiler for the CPU, no Triton for a GPU,
    an unsupported Python): a tiny function is compiled and run there first (a few seconds, once per process); a
    `ValueError` naming `compile` (`--compile`) and torch's reason otherwise."""
    try:
        torch.compile(_compile_probe, dynamic=False)(torch.ones(2, device=device))
    except Exception as error:  # torch raises InductorError, BackendCompilerFailed, RuntimeError, ... here
        reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ValueError(
            f"`compile`: torch cannot compile for {device.type} on this machine ({reason}); run without it."
        ) from error


def pipeline_fingerprint(pipe: SynFERPipeline) -> str:
    """sha256 over the components' public configs, weights and tokenizer vocabulary: the model's identity in a
    plan, the same in every process and wherever the checkpoint is stored."""
    digest = hashlib.sha256()
    for name, component in sorted(pipe.components.items()):
        digest.update(name.encode())
        update_with_component(digest, component)
    return digest.hexdigest()


