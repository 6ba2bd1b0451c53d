"""Training benchmarks: resident memory against dataset size, and training throughput.

Rows:

- `rss_N` / `rss_10N`: peak resident memory (`resource.getrusage`, the training process and, separately, its
  DataLoader workers) of `examples/train_text_to_image.py` fine-tuning a tiny Stable Diffusion (random weights)
  for a few steps on `N` and on `10 N` images at `--resolution`; `rss_ratio` = 10N / N (target: flat, < 1.3).
  Each run is a fresh subprocess. The images compress well on disk (smooth gradients) but decode to
  `3 * R * R` bytes each, so a loader that decoded the whole set (what the examples did before they streamed,
  one uint8 tensor of every image) grows by `9 * N * 3 * R * R` bytes from N to 10N.
- `images_per_s`: training images per second of the same run on N images (the whole process: imports and saving
  included).
- `sd15_recipe` (`--sd15-steps K`): the README's SD 1.5 options at SD 1.5 size, K steps (see [`sd15_rows`]).
- `cache_latents_{tiny,sd15}` (`--cache-model`): training images/s without / with a warm `--cache_latents` cache
  at `--cache-resolution`, and their ratio `speedup` (see [`cache_rows`]).
- `anchor` (`--anchor-script PATH`): our `examples/train_text_to_image.py` against diffusers' own
  `examples/text_to_image/train_text_to_image.py` (its published source, which imports torchvision: run this
  benchmark with a Python that has torchvision, never a dependency of this package; see [`anchor_rows`]), a full
  UNet fine-tune of the same tiny Stable Diffusion on the same images, batch, precision (float32), optimizer
  (AdamW 1e-4, clipping 1.0) and DataLoader workers. Training steps per second come from two runs of S and 3 S steps
  of each script ([`steps_per_second`]); `anchor_steps_per_s_ratio` =
  ours / diffusers' (target >= 1), with both peak RSS.

    python benchmarks/bench_training.py --num-images 300 --resolution 512 --steps 1 --batch-size 2 --workers 2
    python benchmarks/bench_training.py --num-images 2000 --resolution 64 --steps 3 --batch-size 8 --workers 2
    python benchmarks/bench_training.py --skip-rss --cache-model sd15 --cache-resolution 512 --cache-steps 1 \
        --batch-size 1
    python benchmarks/bench_training.py --skip-rss --cache-model tiny --cache-resolution 64 --cache-steps 10 \
        --batch-size 8
    python benchmarks/bench_training.py --skip-rss --resolution 64 --batch-size 8 --workers 2 \
        --anchor-script diffusers/examples/text_to_image/train_text_to_image.py --anchor-steps 20   # torchvision venv

Measured so on the shared 2-core development CPU, 2026-12-02, random weights (`benchmarks/results/training.json`):

- Peak RSS, N vs 10 N images, one process: 2,804 / 2,897 MB at 512 px for 300 / 3,000 images (ratio 1.03;
  workers 408 / 457 MB), where holding the decoded 10 N images would add 2,250 MB; 723 / 749 MB at 64 px for
  2,000 / 20,000 images (1.04; workers 400 / 409 MB; +234 MB if held). Written as one parquet row group (before
  `ROWS_PER_GROUP`) the same sets measured 3,090 / 3,471 MB at 512 px (1.12) and 713 / 807 MB at 64 px (1.13).
- `--cache_latents`, training images/s on the fly / cached: SD 1.5 size (512 px, LoRA rank 4, gradient
  checkpointing, batch 1, float32) 0.0283 / 0.0347 (1.23x); tiny model at 64 px, batch 8: 24.7 / 19.2 (0.78x:
  at this size the tiny VAE costs less than reading the cached posterior). One run each, with the other agents' torch jobs queued
  behind a CPU lock.
- The SD 1.5-size recipe (`--skip-rss --sd15-steps 2`: LoRA rank 4, 512 px, batch 1, float32, gradient
  checkpointing, one worker) ran as written: 341 s for the whole process, peak RSS 6.7 GB.
- Anchor (torch 2.14.1 + torchvision 0.29.1 for both scripts, tiny SD, 64 px, batch 8, 2 workers): our steps/s
  over diffusers' 0.88 (S = 10) and 0.76 (S = 20), peak RSS ratio 1.01 / 1.00, in two runs that each shared the
  CPU with another job for part of the time; a clean run has not been made, so the target (>= 1) is not shown.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_GROUP = 100
CHILD = """
import json, resource, runpy, sys, time
sys.argv = sys.argv[1:]
start = time.perf_counter()
runpy.run_path(sys.argv[0], run_name="__main__")
print("BENCH " + json.dumps({
    "seconds": time.perf_counter() - start,
    "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def smooth_images(num_images: int, size: int, seed: int = 0, num_distinct: int = 16):
    """Yields rows `{"image", "text"}`: `size` x `size` RGB gradients between two random colours, PNG-encoded once
    for `num_distinct` colour pairs and cycled (writing 10k rows then costs seconds)."""
    import PIL.Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    encoded = []
    for _ in range(num_distinct):
        low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        pixels = low + (high - low) * ramp[:, None, None] * ramp[None, :, None]  # (size, size, 3)
        buffer = io.BytesIO()
        PIL.Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    for i in range(num_images):
        yield {"image": {"bytes": encoded[i % num_distinct], "path": None}, "text": f"a photo of face {i}"}


def write_image_dataset(folder: str | os.PathLike, num_images: int, size: int, seed: int = 0) -> Path:
    """A parquet dataset folder (`data/train-*.parquet`, columns `image` and `text`) of `num_images` smooth
    images ([`smooth_images`]): small on disk, `3 * size**2` bytes each once decoded. Row groups of
    `ROWS_PER_GROUP` rows, as the Hub's parquet files have bounded row groups (`datasets` writes at most 100 MB
    each): `load_dataset` converts a parquet file one row group at a time, so one row group of the whole set
    (pyarrow's default) would make its peak memory grow with the set (measured: +142 MB from 300 to 3,000
    512-px images)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    rows = list(smooth_images(num_images, size, seed))
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    path = Path(folder) / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=ROWS_PER_GROUP)
    return Path(folder)


def save_tiny_stable_diffusion(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny `StableDiffusionPipeline` folder (the test components, random weights) to fine-tune."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from synfer_diffusers.tiny import make_tiny_base_unet, make_tiny_components

    components = make_tiny_components(seed=seed)
    StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
        unet=make_tiny_base_unet(seed=seed), scheduler=PNDMScheduler(skip_prk_steps=True), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)  # fmt: skip
    return Path(folder)


def save_sd15_size_pipeline(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A `StableDiffusionPipeline` folder of Stable Diffusion 1.5's sizes (UNet 860M, CLIP-L-size text encoder, the
    4-level VAE) with random weights (and the tiny tokenizer, whose ids fit the 49,408-token embedding)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from synfer_diffusers.tokenization import tiny_clip_tokenizer

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, max_position_embeddings=77)
    )  # fmt: skip
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
    )  # fmt: skip
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(),
        unet=UNet2DConditionModel(cross_attention_dim=768, sample_size=64), scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)  # fmt: skip
    return Path(folder)


def sd15_rows(steps: int, workdir: Path, lora_rank: int) -> dict:
    """The `sd15_recipe` row: `examples/train_text_to_image.py` with the README's SD 1.5 options (512 px,
    gradient checkpointing, min-SNR 5, caption dropout 0.1, a DataLoader worker) on SD 1.5-size random weights,
    batch 1, float32 on the CPU (bf16 is emulated on CPUs without AMX); a LoRA of `lora_rank` (0: the full UNet,
    ~15 GB)."""
    model = save_sd15_size_pipeline(workdir / "sd15")
    data = write_image_dataset(workdir / "sd15-data", 16, 512)
    argv = fine_tune_argv(data, model, workdir / "sd15-out", 512, steps, 1, 1)
    argv += ["--gradient_checkpointing", "--snr_gamma", "5.0", "--text_dropout_prob", "0.1"]
    argv += ["--rank", str(lora_rank)] if lora_rank else []
    measured = run_measured(ROOT / "examples" / "train_text_to_image.py", argv)
    return {"sd15_recipe": {"steps": steps, "lora_rank": lora_rank, **measured}}


def run_measured(script: str | os.PathLike, argv: list[str], launcher: list[str] | None = None) -> dict:
    """Runs `script argv` in a fresh Python process; returns its wall time and peak RSS (MB, self / children)."""
    command = [*(launcher or [sys.executable]), "-c", CHILD, str(script), *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"{command[-len(argv) - 1]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("BENCH "))
    return json.loads(line[len("BENCH ") :])


def fine_tune_argv(data: Path, model: Path, output: Path, resolution: int, steps: int, batch: int, workers: int):
    return [
        "--pretrained_model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(output),
        "--resolution", str(resolution), "--train_batch_size", str(batch), "--max_train_steps", str(steps),
        "--checkpointing_steps", str(10 * steps), "--validation_steps", str(10 * steps),
        "--num_validation_identities", "1", "--validation_expressions", "happy", "--validation_inference_steps", "1",
        "--dataloader_num_workers", str(workers),
    ]  # fmt: skip


def rss_rows(num_images: int, resolution: int, steps: int, batch: int, workers: int, workdir: Path) -> dict:
    """The `rss_N`, `rss_10N`, `rss_ratio` and `images_per_s` rows (see the module docstring)."""
    model = save_tiny_stable_diffusion(workdir / "model")
    rows = {}
    for name, count in (("rss_N", num_images), ("rss_10N", 10 * num_images)):
        data = write_image_dataset(workdir / f"data-{count}", count, resolution)
        argv = fine_tune_argv(data, model, workdir / f"out-{count}", resolution, steps, batch, workers)
        rows[name] = {"num_images": count, **run_measured(ROOT / "examples" / "train_text_to_image.py", argv)}
    rows["rss_ratio"] = rows["rss_10N"]["self_mb"] / rows["rss_N"]["self_mb"]
    rows["decoded_10N_mb_if_held"] = 10 * num_images * 3 * resolution**2 / 2**20
    rows["images_per_s"] = steps * batch / rows["rss_N"]["seconds"]  # whole process, imports and saving included
    return rows


def steps_per_second(script: Path, make_argv: Callable[[Path, int], list[str]], steps: int, workdir: Path) -> dict:
    """Training steps per second of `script`, from fresh processes of `steps` and `3 * steps` steps
    (`2 S / (t(3 S) - t(S))`: imports, loading and saving cancel), with the peak RSS of the two."""
    runs = [run_measured(script, make_argv(workdir / f"steps-{n}", n)) for n in (steps, 3 * steps)]
    return {
        "steps_per_s": 2 * steps / (runs[1]["seconds"] - runs[0]["seconds"]),
        "peak_rss_mb": max(run["self_mb"] for run in runs),
        "runs": runs,
    }


def cache_rows(model_kind: str, resolution: int, steps: int, batch: int, workdir: Path) -> dict:
    """The `cache_latents` rows: training images/s of `examples/train_text_to_image.py` without / with a warm
    `--cache_latents` cache (built by an earlier, untimed 1-step run), on the tiny model (a full fine-tune) or at
    SD 1.5 size (`model_kind="sd15"`: random weights, LoRA rank 4, gradient checkpointing), float32."""
    if model_kind == "sd15":
        model, extra = (
            save_sd15_size_pipeline(workdir / "cache-model"),
            ["--gradient_checkpointing", "--rank", "4"],
        )
    else:
        model, extra = save_tiny_stable_diffusion(workdir / "cache-model"), []
    data = write_image_dataset(workdir / "cache-data", 8 * batch, resolution)
    script = ROOT / "examples" / "train_text_to_image.py"

    def make_argv(output: Path, num_steps: int, *options: str) -> list[str]:
        argv = fine_tune_argv(data, model, output, resolution, num_steps, batch, 0)
        return [*argv, "--latent_cache_dir", str(workdir / "latents"), *extra, *options]

    run_measured(script, make_argv(workdir / "cache-warm", 1, "--cache_latents"))
    rows = {}
    for name, options in (("on_the_fly", ()), ("cached", ("--cache_latents",))):
        measured = steps_per_second(script, lambda out, n: make_argv(out, n, *options), steps, workdir / name)
        rows[name] = {"images_per_s": measured["steps_per_s"] * batch, **measured}
    speedup = rows["cached"]["images_per_s"] / rows["on_the_fly"]["images_per_s"]
    return {f"cache_latents_{model_kind}": {**rows, "speedup": speedup, "resolution": resolution, "batch": batch}}


def diffusers_argv(data: Path, model: Path, output: Path, resolution: int, steps: int, batch: int, workers: int):
    """Options of diffusers' `train_text_to_image.py` for the run [`fine_tune_argv`] gives ours."""
    return [
        "--pretrained_model_name_or_path", str(model), "--dataset_name", str(data), "--image_column", "image",
        "--caption_column", "text", "--output_dir", str(output), "--resolution", str(resolution), "--center_crop",
        "--train_batch_size", str(batch), "--max_train_steps", str(steps), "--learning_rate", "1e-4",
        "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--checkpointing_steps", str(10 * steps),
        "--dataloader_num_workers", str(workers), "--seed", "0",
    ]  # fmt: skip


def anchor_rows(anchor_script: Path, resolution: int, steps: int, batch: int, workers: int, workdir: Path) -> dict:
    """The `anchor` rows (see the module docstring). Get diffusers' script from a clone of
    https://github.com/huggingface/diffusers (`examples/text_to_image/train_text_to_image.py`) of a release that
    accepts the installed diffusers; a venv for it: `pip install torch==2.14.1 torchvision==0.29.1`, then this
    package (`pip install -e .`)."""
    model = save_tiny_stable_diffusion(workdir / "anchor-model")
    data = write_image_dataset(workdir / "anchor-data", 8 * batch, resolution)
    scripts = {
        "ours": (ROOT / "examples" / "train_text_to_image.py", fine_tune_argv),
        "diffusers": (anchor_script, diffusers_argv),
    }
    rows = {}
    for name, (script, make_argv) in scripts.items():
        rows[f"anchor_{name}"] = steps_per_second(
            script, lambda out, n: make_argv(data, model, out, resolution, n, batch, workers), steps, workdir / name
        )
    rows["anchor_steps_per_s_ratio"] = rows["anchor_ours"]["steps_per_s"] / rows["anchor_diffusers"]["steps_per_s"]
    rows["anchor_rss_ratio"] = rows["anchor_ours"]["peak_rss_mb"] / rows["anchor_diffusers"]["peak_rss_mb"]
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=300, help="N (the second run has 10 N).")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers.")
    parser.add_argument("--cache-model", choices=("tiny", "sd15"), help="Also time --cache_latents on this model.")
    parser.add_argument("--cache-resolution", type=int, default=64)
    parser.add_argument("--cache-steps", type=int, default=10, help="S of the cache rows (runs of S and 3 S).")
    parser.add_argument("--sd15-steps", type=int, default=0, help="> 0: also run the SD 1.5-size recipe row.")
    parser.add_argument("--sd15-lora-rank", type=int, default=4, help="0: full UNet fine-tune (~15 GB).")
    parser.add_argument("--anchor-script", type=Path, help="diffusers' train_text_to_image.py: run the anchor rows.")
    parser.add_argument("--anchor-steps", type=int, default=10, help="S of the anchor rows (runs of S and 3 S).")
    parser.add_argument("--skip-rss", action="store_true", help="Leave out the RSS rows.")
    parser.add_argument("--json", help="Also write the rows here.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        rows = {}
        if not args.skip_rss:
            rows.update(
                rss_rows(args.num_images, args.resolution, args.steps, args.batch_size, args.workers, Path(workdir))
            )
        if args.cache_model:
            rows.update(
                cache_rows(args.cache_model, args.cache_resolution, args.cache_steps, args.batch_size, Path(workdir))
            )
        if args.anchor_script:
            rows.update(
                anchor_rows(args.anchor_script, args.resolution, args.anchor_steps, args.batch_size, args.workers,
                            Path(workdir))
            )  # fmt: skip
        if args.sd15_steps:
            rows.update(sd15_rows(args.sd15_steps, Path(workdir), args.sd15_lora_rank))
    rows["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(json.dumps(rows, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
