"""Speed ratios of SynFERPipeline features, each against its baseline in the same run, with random weights.

Rows (target in brackets):
- `au_overhead`: SynFERPipeline with AUs / diffusers' StableDiffusionPipeline with the base UNet, same
  VAE, text encoder, tokenizer, scheduler, steps, batch and seed [<= 1.05];
- `au_guidance`: AU guidance (`au_guidance_scale=3`, the edit default, under CFG 7.5: a third UNet branch,
  prompt + null AU tokens) / the same call without it (text and AUs guided together in two branches);
- `semantic_guidance`: semantic guidance on (default window 0.6-1.0, a random ResNet guide) / off [<= 1.5];
- `feranno_in_loop`: in-loop FERAnno labels / no labels [<= 1.10];
- `feranno_separate`: no labels + a separate FERAnnoPipeline pass over the images / no labels (what in-loop saves);
- `pipeline_vs_bare_unet`: SynFERPipeline / a bare loop (encode once, CFG UNet calls, scheduler step, decode):
  how close the pipeline is to the UNet-bound limit;
- `bf16_vs_fp32`: the same call with every component in bfloat16 / in float32 (on a CPU without AVX512-BF16 or
  AMX, bf16 matmuls and convolutions are emulated: a ratio well above 1, and measured there only at `tiny` unless
  named with `--rows`: see `default_rows`);
- `sg_memory_frozen` (memory, not time): peak resident memory above the loaded pipeline of a semantic-guidance call
  over 2 guided steps (window 0-1, a gradient every step) with the weights frozen, as the pipeline does / with their
  `requires_grad` left on (the graph then keeps what weight gradients would need); one call each, in that order of
  baseline and candidate, peak reset between them (`/proc/self/clear_refs`, Linux).

Timed calls alternate (baseline, candidate, ...) after a warm-up; each row reports the ratio of medians, so machine
noise hits both sides alike (`au_overhead` over 3x its config's rounds: its target is within one round's spread).
Configs: `tiny` (the test components, fp32, 16x16, batch 4), `sd15` (Stable Diffusion 1.5 sizes: UNet 860M + AU
adapter, VAE, CLIP-L-size text encoder; bf16 where the CPU computes it natively, else fp32 (`cpu_half_dtype`), 64x64
latents = 512 px, batch 1; both random weights) and `faceworld` (the embedded default checkpoint with its trained guide
and FERAnno head, fp32, 64x64, 25 steps, batch 35 as in the FaceWorld evaluation).

    python benchmarks/bench_speed.py --configs tiny sd15 faceworld --json benchmarks/results/speed.json
    python benchmarks/bench_speed.py --configs sd15 --dtype bfloat16 --rows sg_memory_frozen  # bf16 even where emulated
    python benchmarks/bench_speed.py --configs faceworld --rows au_overhead --batch 8 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTImageProcessorPil,
)

from synfer_diffusers import (
    EXPRESSIONS,
    AUConditionedUNet2DConditionModel,
    AUSpace,
    FERAnnoHead,
    FERAnnoPipeline,
    SynFERPipeline,
)
from synfer_diffusers.generate import default_model_dir
from synfer_diffusers.pipelines.synfer import semantic_guidance
from synfer_diffusers.tiny import make_tiny_base_unet, make_tiny_components, make_tiny_scheduler
from synfer_diffusers.tokenization import tiny_clip_tokenizer


@dataclass
class BenchConfig:
    name: str
    steps: int
    guided_steps: int  # steps of the semantic-guidance row (the default window needs a few steps to act)
    batch: int
    dtype: torch.dtype
    repeats: int


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, as oneDNN sees it); elsewhere it is emulated."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_half_dtype() -> torch.dtype:
    """bfloat16 where this CPU computes it natively, else float32: where bf16 is emulated it is slower than fp32 (4.4x
    on the `tiny` row of an AVX2 CPU), and the `sd15` rows in bf16 would take hours there."""
    return torch.bfloat16 if native_bf16() else torch.float32


CONFIGS = {
    "tiny": BenchConfig("tiny", steps=10, guided_steps=10, batch=4, dtype=torch.float32, repeats=7),
    "sd15": BenchConfig("sd15", steps=2, guided_steps=5, batch=1, dtype=cpu_half_dtype(), repeats=2),
    "faceworld": BenchConfig("faceworld", steps=25, guided_steps=25, batch=35, dtype=torch.float32, repeats=3),
}
TIME_ROWS = (
    "au_overhead", "au_guidance", "semantic_guidance", "feranno_in_loop", "feranno_separate", "pipeline_vs_bare_unet",
    "bf16_vs_fp32",
)  # fmt: skip
ROUNDS_FACTOR = {"au_overhead": 3}
"""Rows timed over this many times their config's `repeats` rounds: `au_overhead`'s target (a few percent) lies within
one round's spread on a shared CPU (rounds 0.98-1.08 around a median of 1.03 on the FaceWorld default)."""
MEMORY_ROWS = ("sg_memory_frozen",)
ROWS = TIME_ROWS + MEMORY_ROWS
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_rows(config: BenchConfig) -> tuple[str, ...]:
    """The rows measured of `config` unless named: [`ROWS`], less `bf16_vs_fp32` beyond `tiny` where bf16 is emulated
    (one `sd15` call in emulated bf16 ran over 50 minutes on an AVX2 CPU without finishing, against 65 s in fp32);
    there the `tiny` row shows what emulation costs."""
    if native_bf16() or config.name == "tiny":
        return ROWS
    return tuple(row for row in ROWS if row != "bf16_vs_fp32")


def build_components(
    config: BenchConfig,
) -> tuple[dict, UNet2DConditionModel, torch.nn.Module, object, FERAnnoHead]:
    """SynFER components, the base UNet, a guide classifier, its image processor and a FERAnno head: random, or the
    embedded default checkpoint's for `faceworld` (its base UNet is its AU UNet's own weights in a stock class)."""
    if config.name == "faceworld":
        default = SynFERPipeline.from_pretrained(default_model_dir(), dtype=config.dtype)
        components = default.base_components
        base_unet = default.unet.to_base_unet()
        guide, processor = default.guidance_classifier, default.guidance_image_processor
        return components, base_unet, guide, processor, default.feranno_head
    if config.name == "tiny":
        components, base_unet, guide_size = make_tiny_components(seed=0), make_tiny_base_unet(seed=0), 16
        guide_config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    else:
        text_encoder = CLIPTextModel(
            CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, max_position_embeddings=77)
        )  # fmt: skip
        base_unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
        )  # fmt: skip
        unet = AUConditionedUNet2DConditionModel.from_unet(base_unet, AUSpace.disfa12(), 4)
        components = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tiny_clip_tokenizer(),
                      "scheduler": make_tiny_scheduler(), "unet": unet}  # fmt: skip
        guide_size = 224
        guide_config = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512])
    guide_config.id2label = EXPRESSIONS.id2label
    guide_config.label2id = EXPRESSIONS.label2id
    guide = ResNetForImageClassification(guide_config).eval()
    processor = ViTImageProcessorPil(size={"height": guide_size, "width": guide_size})
    cast = {k: v.to(config.dtype) if isinstance(v, torch.nn.Module) else v for k, v in components.items()}
    head = FERAnnoHead.from_unet(cast["unet"]).to(config.dtype)
    return cast, base_unet.to(config.dtype).eval(), guide.to(config.dtype), processor, head


def synchronize() -> None:
    """Waits for queued CUDA work (a call that returns device tensors returns before its kernels finish)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ratio(baseline: Callable[[], object], candidate: Callable[[], object], repeats: int) -> dict[str, float]:
    baseline(), candidate()  # warm-up
    base_times, cand_times = [], []
    for _ in range(repeats):
        for fn, times in ((baseline, base_times), (candidate, cand_times)):
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            times.append(time.perf_counter() - start)
    base, cand = statistics.median(base_times), statistics.median(cand_times)
    paired = [c / b for b, c in zip(base_times, cand_times)]  # each round's ratio: the spread
    return {"unit": "s", "baseline": base, "candidate": cand, "ratio": cand / base, "paired_ratios": paired}


def resident_mb(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process in MB, from `/proc/self/status`."""
    with open("/proc/self/status") as f:
        kilobytes = next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))
    return kilobytes / 1024


def peak_above_now_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory of `fn()` above the resident memory before it: the peak is reset first (`5` into
    `/proc/self/clear_refs`, Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = resident_mb("VmRSS")
    fn()
    return resident_mb("VmHWM") - before


def peak_ratio(baseline: Callable[[], object], candidate: Callable[[], object]) -> dict[str, float]:
    """Peak memory of one `baseline()` call and one `candidate()` call, after one unmeasured `candidate()`; the ratio
    is None when the baseline's peak does not rise above the resident memory (tiny models: under a page's worth)."""
    candidate()  # warm-up: one-time allocations (kernel caches, lazily built buffers) are not charged to a side
    base, cand = peak_above_now_mb(baseline), peak_above_now_mb(candidate)
    return {"unit": "MB", "baseline": base, "candidate": cand, "ratio": cand / base if base > 0 else None}


@contextlib.contextmanager
def weights_left_trainable():
    """Semantic guidance without its weight freezing (the behaviour before it): `frozen_parameters` does nothing."""
    original = semantic_guidance.frozen_parameters
    semantic_guidance.frozen_parameters = lambda *modules: contextlib.nullcontext()
    try:
        yield
    finally:
        semantic_guidance.frozen_parameters = original


def in_dtype(pipe: SynFERPipeline, dtype: torch.dtype) -> SynFERPipeline:
    """A copy of `pipe` with every component in `dtype` (`pipe` itself when it already is)."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if all(p.dtype == dtype for m in modules for p in m.parameters()):
        return pipe
    copy = SynFERPipeline(**{name: deepcopy(component) for name, component in pipe.components.items()})
    copy.set_progress_bar_config(disable=True)
    return copy.to(dtype=dtype)


@torch.no_grad()
def bare_unet_loop(pipe: SynFERPipeline, prompt: str, aus: dict, steps: int, batch: int, guidance: float) -> None:
    """The UNet-bound limit: encode once, CFG UNet calls and scheduler steps, one decode; no checks, no planning."""
    device = pipe.unet.device
    text, null_text = pipe.encode_prompt([prompt] * batch, device, 1, True, negative_prompt=[""] * batch)  # (B, L, D)
    au_tokens = pipe.unet.encode_action_units(pipe.au_space.to_tensor([aus] * batch))
    null_au = pipe.unet.encode_action_units(None, batch_size=batch)
    size = pipe.unet.config.sample_size
    latents = torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(0)).to(device, text.dtype)
    pipe.scheduler.set_timesteps(steps)
    with pipe.unet.cached_au_attention():
        for t in pipe.scheduler.timesteps:
            noise = pipe.unet(torch.cat([latents, latents]), t, torch.cat([null_text, text]),
                              au_embeds=torch.cat([null_au, au_tokens])).sample  # fmt: skip
            uncond, cond = noise.chunk(2)
            latents = pipe.scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    pipe.vae.decode(latents / pipe.vae.config.scaling_factor)


def make_pairs(
    config: BenchConfig, built: tuple[dict, UNet2DConditionModel, torch.nn.Module, object, FERAnnoHead]
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """Each row's (baseline, candidate) calls on the components `built` by [`build_components`] (on any device)."""
    components, base_unet, guide, processor, head = built
    plain = SynFERPipeline(**components)
    guided = SynFERPipeline(**components, guidance_classifier=guide, guidance_image_processor=processor)
    labelled = SynFERPipeline(**components, feranno_head=head)
    sd = StableDiffusionPipeline(**{**components, "unet": base_unet}, safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False)  # fmt: skip
    feranno = FERAnnoPipeline(**plain.base_components, head=head)
    for pipe in (plain, guided, labelled, sd, feranno):
        pipe.set_progress_bar_config(disable=True)
    prompt = "a photo of an elderly man with glasses, with a happy expression"
    aus = {"AU6": 2.5, "AU12": 4.0}
    common = {"num_inference_steps": config.steps, "num_images_per_prompt": config.batch, "guidance_scale": 7.5}

    def synfer(pipe, steps=config.steps, output_type="np", **kwargs):
        return lambda: pipe(prompt=prompt, expression="happy", action_units=aus, enrich_prompt=False,
                            generator=torch.Generator().manual_seed(0), output_type=output_type,
                            **{**common, "num_inference_steps": steps}, **kwargs)  # fmt: skip

    def synfer_in(dtype: torch.dtype) -> Callable[[], object]:
        copies = {}  # built on first use, so rows that do not need a copy do not pay for it

        def call():
            copies.setdefault(dtype, in_dtype(plain, dtype))
            return synfer(copies[dtype])()

        return call

    def separate_labels():
        images = synfer(plain, output_type="pt")().images
        feranno(images.float().clamp(0, 1), batch_size=config.batch)

    pairs = {  # row -> (baseline, candidate)
        "au_overhead": (
            lambda: sd(prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="np", **common),
            synfer(plain)),
        "au_guidance": (synfer(plain), synfer(plain, au_guidance_scale=3.0)),
        "semantic_guidance": (synfer(guided, steps=config.guided_steps),
                              synfer(guided, steps=config.guided_steps, semantic_guidance_scale=0.1)),
        "feranno_in_loop": (synfer(plain, output_type="pt"), synfer(labelled, output_type="pt")),
        "feranno_separate": (synfer(plain, output_type="pt"), separate_labels),
        "pipeline_vs_bare_unet": (
            lambda: bare_unet_loop(plain, prompt, aus, config.steps, config.batch, 7.5), synfer(plain)),
        "bf16_vs_fp32": (synfer_in(torch.float32), synfer_in(torch.bfloat16)),
    }  # fmt: skip
    guided_call = synfer(guided, steps=2, semantic_guidance_scale=0.1, semantic_guidance_window=(0.0, 1.0),
                         semantic_guidance_interval=1)  # fmt: skip

    def unfrozen_call():
        with weights_left_trainable():
            guided_call()

    return {**pairs, "sg_memory_frozen": (unfrozen_call, guided_call)}


def measure(
    config: BenchConfig,
    rows: tuple[str, ...] | None = None,
    built: tuple[dict, UNet2DConditionModel, torch.nn.Module, object, FERAnnoHead] | None = None,
) -> list[dict]:
    """The `rows` of `config` (its [`default_rows`] when None), on components `built` by [`build_components`] (built
    here when None)."""
    pairs = make_pairs(config, built or build_components(config))
    results = []
    for row in rows or default_rows(config):
        if row == "sg_memory_frozen":
            measured = peak_ratio(*pairs[row])
        else:
            measured = median_ratio(*pairs[row], config.repeats * ROUNDS_FACTOR.get(row, 1))
        results.append({"config": config.name, "row": row, "dtype": str(config.dtype).removeprefix("torch."),
                        **measured})  # fmt: skip
    return results


def format_row(row: dict) -> str:
    """One measured row as a line under `main`'s header."""
    return (f"{row['config']:9} {row['row']:22} {row['dtype']:9} {row['unit']:4} {row['baseline']:10.3f} "
            f"{row['candidate']:10.3f} {'-' if row['ratio'] is None else format(row['ratio'], '6.3f')} "
            f"{' '.join(f'{r:.3f}' for r in row.get('paired_ratios', []))}")  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "sd15"])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=None,
                        help="rows to measure (default: each config's `default_rows`)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="dtype of every config instead of its own (e.g. float32 where bf16 is emulated)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of every config instead of its own (times ROUNDS_FACTOR for the rows it names)")
    parser.add_argument("--batch", type=int, default=None, help="images per call of every config instead of its own")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'config':9} {'row':22} {'dtype':9} {'unit':4} {'baseline':>10} {'candidate':>10} {'ratio':>6}")
    for name in args.configs:
        overrides = {"dtype": DTYPES[args.dtype] if args.dtype else None, "repeats": args.repeats, "batch": args.batch}
        config = dataclasses.replace(CONFIGS[name], **{k: v for k, v in overrides.items() if v is not None})
        for row in measure(config, tuple(args.rows) if args.rows else None):
            rows.append(row)
            print(format_row(row), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": "CPU", "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
