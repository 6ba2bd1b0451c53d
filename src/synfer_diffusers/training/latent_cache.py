"""`--cache_latents`: the VAE posterior of every training image, computed once and stored as a `datasets` cache.

Each row's posterior mean and standard deviation (`latent_mean`, `latent_std`, float32 `(C, h, w)`, unscaled) are
written in shards of parquet under `latent_cache_dir/<fingerprint>/`, beside the dataset's other columns (captions,
AUs, labels), so the UNet trains without the VAE on the hot path and stage A, stage B and FERAnno reuse one cache.
Training then samples `mean + std * eps` with the step's [`StepRandom`] draws: the loss trajectory is the one of
on-the-fly encoding (up to the float rounding of a different VAE batch composition).

The fingerprint covers the dataset (its `datasets` fingerprint), the image column, the resolution and the VAE
(config and weights): any change makes a new cache. Shards are written to a temporary name and renamed, and a
rerun keeps the finished ones, so a run killed while caching resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from ..data.loading import AnyDataset, pixel_tensor
from .config import DiffusionTrainingConfig
from .data import ExampleTransform, normalize_images
from .loader import training_batches

SHARD_ROWS = 1024
LATENT_COLUMNS = ("latent_mean", "latent_std")


def latent_cache_fingerprint(dataset: datasets.Dataset, image_column: str, resolution: int, vae: AutoencoderKL) -> str:
    """A hash of what the cached latents depend on: the rows, the image column, the resolution and the VAE."""
    digest = hashlib.sha256()
    digest.update(json.dumps([dataset._fingerprint, image_column, resolution, dict(vae.config)], default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def _encode_shard(dataset: datasets.Dataset, image_column: str, resolution: int, vae: AutoencoderKL, batch: int):
    means, stds = [], []
    for rows in dataset.select_columns([image_column]).iter(batch_size=batch):
        pixels = torch.stack([pixel_tensor(image, resolution) for image in rows[image_column]])
        latent_dist = vae.encode(normalize_images(pixels).to(vae.device, vae.dtype)).latent_dist
        means.append(latent_dist.mean.float().cpu().numpy())
        stds.append(latent_dist.std.float().cpu().numpy())
    return np.concatenate(means), np.concatenate(stds)


def cache_latents(
    dataset: datasets.Dataset,
    image_column: str,
    resolution: int,
    vae: AutoencoderKL,
    cache_dir: str | None,
    accelerator: Accelerator,
    batch_size: int = 32,
) -> datasets.Dataset:
    """The dataset with `image_column` replaced by `latent_mean` / `latent_std` (see the module docstring). The main
    process encodes the missing shards; the others wait and read the same cache. `cache_dir` unset:
    `synfer_latents` in the datasets cache, shared by every run on the machine."""
    cache_dir = cache_dir or os.path.join(datasets.config.HF_DATASETS_CACHE, "synfer_latents")
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError("`cache_latents` needs a memory-mapped dataset: it cannot be combined with `streaming`.")
    folder = os.path.join(cache_dir, latent_cache_fingerprint(dataset, image_column, resolution, vae))
    num_shards = -(-len(dataset) // SHARD_ROWS)
    paths = [os.path.join(folder, f"latents-{i:05d}-of-{num_shards:05d}.parquet") for i in range(num_shards)]
    if accelerator.is_main_process:
        os.makedirs(folder, exist_ok=True)
        missing = [i for i, path in enumerate(paths) if not os.path.exists(path)]
        for i in tqdm(missing, desc="Caching latents", disable=not missing):
            rows = dataset.select(range(i * SHARD_ROWS, min((i + 1) * SHARD_ROWS, len(dataset))))
            mean, std = _encode_shard(rows, image_column, resolution, vae, batch_size)
            shape = mean.shape[1:]
            features = datasets.Features({name: datasets.Array3D(shape, "float32") for name in LATENT_COLUMNS})
            shard = datasets.Dataset.from_dict({"latent_mean": mean, "latent_std": std}, features=features)
            shard.to_parquet(paths[i] + ".tmp")
            os.replace(paths[i] + ".tmp", paths[i])
    accelerator.wait_for_everyone()
    latents = datasets.load_dataset("parquet", data_files=paths, split="train", cache_dir=os.path.join(folder, ".hf"))
    return datasets.concatenate_datasets([dataset.remove_columns([image_column]), latents], axis=1)


def diffusion_training_batches(
    dataset: AnyDataset,
    transform: ExampleTransform,
    config: DiffusionTrainingConfig,
    accelerator: Accelerator,
    vae: AutoencoderKL,
) -> Callable[[int], Iterator[dict[str, torch.Tensor]]]:
    """[`training_batches`] over the latent cache with `--cache_latents` (built first if missing), over the images
    otherwise. Call it with the VAE on its device and in its training dtype."""
    if config.cache_latents:
        dataset = cache_latents(
            dataset, config.image_column, config.resolution, vae, config.latent_cache_dir, accelerator,
            config.train_batch_size,
        )  # fmt: skip
        transform = dataclasses.replace(transform, cached_latents=True)
    return training_batches(dataset, transform, config, accelerator.process_index, accelerator.num_processes)
