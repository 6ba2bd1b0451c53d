"""AU-conditioning overhead: wall time of `SynFERPipeline` (AUs on) / diffusers' `StableDiffusionPipeline` with
the base UNet, same VAE, text encoder, tokenizer, scheduler, steps, batch and seed, timed in one run.

Runs are interleaved (A, B, A, B, ...) after a warm-up and the ratio of medians is reported, so machine noise
hits both sides alike. Weights are random: this measures speed only.

    python benchmarks/bench_au_overhead.py --configs tiny sd15 --repeats 5

`tiny`: the test components (fp32, 16x16 images, 8x8 latents, 4 steps, batch 4).
`sd15`: Stable Diffusion 1.5 sizes (UNet 860M + AU adapter, VAE, CLIP-L-size text encoder) in bf16 on the CPU,
64x64 latents (512x512 images), 2 steps, batch 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from synfer_diffusers import AUConditionedUNet2DConditionModel, AUSpace, SynFERPipeline
from synfer_diffusers.tiny import make_tiny_base_unet, make_tiny_components, make_tiny_scheduler
from synfer_diffusers.tokenization import tiny_clip_tokenizer


@dataclass
class BenchConfig:
    name: str
    steps: int
    batch: int
    dtype: torch.dtype


CONFIGS = {
    "tiny": BenchConfig("tiny", steps=4, batch=4, dtype=torch.float32),
    "sd15": BenchConfig("sd15", steps=2, batch=1, dtype=torch.bfloat16),
}


def build_pipelines(config: BenchConfig) -> tuple[SynFERPipeline, StableDiffusionPipeline]:
    """Two pipelines sharing every component but the UNet (base vs. base + AU adapter)."""
    if config.name == "tiny":
        components = make_tiny_components(seed=0)
        base_unet = make_tiny_base_unet(seed=0)
    else:
        tokenizer = tiny_clip_tokenizer()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, max_position_embeddings=77)
        )  # fmt: skip
        base_unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
        )  # fmt: skip
        components = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
                      "scheduler": make_tiny_scheduler()}  # fmt: skip
        components["unet"] = AUConditionedUNet2DConditionModel.from_unet(base_unet, AUSpace.disfa12(), 4)
    components = {k: v.to(config.dtype) if isinstance(v, torch.nn.Module) else v for k, v in components.items()}
    synfer = SynFERPipeline(**components)
    sd = StableDiffusionPipeline(
        **{**components, "unet": base_unet.to(config.dtype).eval()},
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    for pipe in (synfer, sd):
        pipe.set_progress_bar_config(disable=True)
    return synfer, sd


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(config: BenchConfig, repeats: int) -> dict[str, float]:
    synfer, sd = build_pipelines(config)
    prompt = "a photo of an elderly man with glasses, with a happy expression"
    common = {"num_inference_steps": config.steps, "num_images_per_prompt": config.batch, "output_type": "np"}

    def run_synfer():
        synfer(prompt=prompt, action_units={"AU6": 2.5, "AU12": 4.0}, enrich_prompt=False,
               generator=torch.Generator().manual_seed(0), **common)  # fmt: skip

    def run_sd():
        sd(prompt=prompt, generator=torch.Generator().manual_seed(0), **common)

    run_synfer(), run_sd()  # warm-up
    synfer_times, sd_times = [], []
    for _ in range(repeats):
        synfer_times.append(time_call(run_synfer))
        sd_times.append(time_call(run_sd))
    synfer_s, sd_s = statistics.median(synfer_times), statistics.median(sd_times)
    return {"config": config.name, "steps": config.steps, "batch": config.batch, "repeats": repeats,
            "synfer_s": synfer_s, "stable_diffusion_s": sd_s, "ratio": synfer_s / sd_s}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "sd15"])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per pipeline (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'config':6} {'steps':>5} {'batch':>5} {'SynFER s':>9} {'SD s':>9} {'ratio':>6}")
    with torch.inference_mode():
        for name in args.configs:
            row = measure(CONFIGS[name], args.repeats)
            rows.append(row)
            print(f"{row['config']:6} {row['steps']:5d} {row['batch']:5d} {row['synfer_s']:9.3f} "
                  f"{row['stable_diffusion_s']:9.3f} {row['ratio']:6.3f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
