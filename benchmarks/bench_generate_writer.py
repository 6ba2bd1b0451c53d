"""Overhead of `synfer generate` over bare pipeline calls, and its memory over a long run.

1. **Throughput ratio**: images per second of `generate_synthetic_dataset` (plan, pipeline, labels, PNG
   encoding, parquet shards with fsync, manifests, card, preview) / images per second of bare `SynFERPipeline`
   calls on the same plan, batches and seeds (`pipeline_inputs`), with the background stage on (`queue_depth` 2)
   and off (0). Runs alternate (bare, overlapped, synchronous, ...) after a warm-up; each row is the median of the
   paired ratios, so machine noise hits all sides alike; `ratio` is the side `synfer generate` runs by default
   (`default_queue_depth`: synchronous on the CPU, the stage on an accelerator, simulated or not). Target: >= 0.95.
   Like with like: the bare side is what a user's own loop over the same plan does, no less: per batch it plans the
   samples (`plan_sample`), builds the call's arguments (`pipeline_inputs`) and makes one pipeline call of the same
   batch and shards as `synfer generate`, with PIL images out (`output_type="pil"`, the conversion the writer does
   too). It writes nothing. The generate side is a whole run: the checks, the model's fingerprint and `plan.json`
   before the first call and, after the last, the wait for the stage's last batches and shard, the preview and the
   card; these fixed costs (a few tenths of a second) weigh on a run of a few hundred images and vanish over a large
   set. Model loading is outside both timings (the loaded pipeline is passed in).
   **Simulated accelerator** (`--accelerator-speedup S`): the same measurement with a stand-in pipeline
   ([`SimulatedAccelerator`]) whose call sleeps, releasing the GIL as a call waiting on a GPU does, for the real
   pipeline's measured time on this CPU divided by S, then returns the real pipeline's images for that batch
   (computed once beforehand). This is a SIMULATION, not a GPU measurement: S is an assumed accelerator speedup over
   this CPU for the whole call, and everything after the call (PIL conversion, votes, PNG, writes) runs on this
   CPU at its real cost, as it would beside a GPU. On a GPU the UNet takes a small share of the CPU's time, so this
   is where the overlap matters.
2. **Memory**: resident set size over a long run (default 2,000 images), from the first shard written to the
   end, sampled every 50 ms. Shards stream to disk, so growth should stay far below 200 MB.

    python benchmarks/bench_generate_writer.py                       # tiny random model, 64x64, 4 steps
    python benchmarks/bench_generate_writer.py --memory-samples 2000 --size 16
    python benchmarks/bench_generate_writer.py --memory-samples 0 --accelerator-speedup 10 --repeats 5
    python benchmarks/bench_generate_writer.py --memory-samples 0 --repeats 0 --unet-options  # compile, channels_last

The model is `resolve_pipeline(None)`: the embedded FaceWorld default (with its in-loop FERAnno labels voted
with the target), or the tiny random stand-in where none is installed. This measures the writer's and labeller's
overhead, not image quality.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from synfer_diffusers import SynFERPipeline
from synfer_diffusers.generate import (
    DEFAULT_QUEUE_DEPTH,
    SyntheticSetConfig,
    configure_pipeline,
    default_queue_depth,
    generate_synthetic_dataset,
    pipeline_inputs,
    plan_sample,
    resolve_pipeline,
)


def bare_pipeline_seconds(pipe, config: SyntheticSetConfig, batch_size: int) -> float:
    """The same work as `synfer generate` minus labels and writing: shard by shard, batch by batch."""
    start = time.perf_counter()
    for shard_start in range(0, config.num_samples, config.shard_size):
        ids = range(shard_start, min(shard_start + config.shard_size, config.num_samples))
        for i in range(0, len(ids), batch_size):
            pipe(**pipeline_inputs(config, [plan_sample(config, j, pipe.au_space) for j in ids[i : i + batch_size]]))
    return time.perf_counter() - start


def generate_seconds(pipe, config: SyntheticSetConfig, batch_size: int, folder: Path, queue_depth: int) -> float:
    start = time.perf_counter()
    generate_synthetic_dataset(config, folder, pipeline=pipe, batch_size=batch_size, overwrite=folder.exists(),
                               show_progress=False, process_index=0, num_processes=1, queue_depth=queue_depth)  # fmt: skip
    return time.perf_counter() - start


QUEUE_DEPTHS = {"overlap": DEFAULT_QUEUE_DEPTH, "synchronous": 0}
"""The generate sides of the ratio: the background stage on (the default depth) and off."""


def measure_ratio(pipe, config: SyntheticSetConfig, batch_size: int, repeats: int) -> dict:
    """Bare calls and `synfer generate` with the background stage on and off, alternating; per side the median of
    the paired ratios (generate images/s over the bare images/s of the same round)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "set"
        sides = {"bare": lambda: bare_pipeline_seconds(pipe, config, batch_size)}
        for name, depth in QUEUE_DEPTHS.items():
            sides[name] = functools.partial(generate_seconds, pipe, config, batch_size, folder, depth)
        for side in sides.values():  # warm-up
            side()
        seconds = {name: [] for name in sides}
        for _ in range(repeats):
            for name, side in sides.items():
                seconds[name].append(side())
    result = {"num_samples": config.num_samples, "repeats": repeats,
              "bare_images_per_s": config.num_samples / statistics.median(seconds["bare"])}  # fmt: skip
    for name in QUEUE_DEPTHS:
        ratios = [bare / generated for bare, generated in zip(seconds["bare"], seconds[name])]
        result[f"{name}_images_per_s"] = config.num_samples / statistics.median(seconds[name])
        result[f"{name}_ratio"] = statistics.median(ratios)
        result[f"{name}_ratios"] = ratios
    result["default"] = default_side(pipe)
    result["ratio"] = result[f"{result['default']}_ratio"]  # `synfer generate` as it runs by default (table 3's)
    return result


def default_side(pipe) -> str:
    """The side `synfer generate` runs by default on `pipe`: the background stage on an accelerator (the simulated
    one included), synchronous on the CPU ([`default_queue_depth`])."""
    on = isinstance(pipe, SimulatedAccelerator) or default_queue_depth(pipe.device) > 0
    return "overlap" if on else "synchronous"


class SimulatedAccelerator(SynFERPipeline):
    """A SIMULATION of `pipe` on an accelerator `speedup` times faster than this CPU for the whole call: each call
    sleeps (releasing the GIL) for the real call's time on this CPU divided by `speedup`, then returns the real
    outputs of that batch, made once by the real pipeline on first sight (keyed by the batch's seeds), converted to
    the requested `output_type` as the real pipeline converts them."""

    @classmethod
    def of(cls, pipe: SynFERPipeline, speedup: float) -> SimulatedAccelerator:
        simulated = cls(**pipe.components)  # a DiffusionPipeline's __init__ takes its components only
        simulated.speedup, simulated.cpu_seconds_per_image, simulated.outputs = speedup, [], {}
        simulated.set_progress_bar_config(disable=True)
        return simulated

    @functools.wraps(SynFERPipeline.__call__)  # keeps the call's signature, which `check_call` binds
    def __call__(self, **kwargs: Any) -> Any:
        key = tuple(generator.initial_seed() for generator in kwargs["generator"])
        if key not in self.outputs:
            start = time.perf_counter()
            self.outputs[key] = SynFERPipeline.__call__(self, **{**kwargs, "output_type": "pt"})
            self.cpu_seconds_per_image.append((time.perf_counter() - start) / len(key))
        output = self.outputs[key]
        time.sleep(self.seconds_per_image * len(key))
        images = output.images.clone()
        if kwargs.get("output_type", "pil") != "pt":
            images = self.image_processor.pt_to_numpy(images)
            images = images if kwargs.get("output_type", "pil") == "np" else self.image_processor.numpy_to_pil(images)
        return dataclasses.replace(output, images=images)

    @property
    def seconds_per_image(self) -> float:
        return statistics.median(self.cpu_seconds_per_image) / self.speedup


def measure_unet_options(pipe, config: SyntheticSetConfig, batch_size: int, repeats: int) -> dict:
    """Bare calls with `channels_last` / `compile` (as `synfer generate --channels-last / --compile` configure the
    pipeline) over eager calls of `pipe`, alternating, on copies of it; `first_call_s`: the first configured run
    (compilation included)."""
    results = {}
    for name in ("channels_last", "compile"):
        variant = copy.deepcopy(pipe)
        configure_pipeline(variant, dataclasses.replace(config, **{name: True}), torch.device("cpu"))
        start = time.perf_counter()
        bare_pipeline_seconds(variant, config, batch_size)
        first = time.perf_counter() - start
        bare_pipeline_seconds(pipe, config, batch_size)  # warm-up
        ratios = [bare_pipeline_seconds(variant, config, batch_size) / bare_pipeline_seconds(pipe, config, batch_size)
                  for _ in range(repeats)]  # fmt: skip
        results[name] = {"time_ratio": statistics.median(ratios), "ratios": ratios, "first_call_s": first}
    return results


def measure_memory(pipe, config: SyntheticSetConfig, batch_size: int) -> dict:
    """RSS at the first written shard (baseline: model, caches, allocator warm) and its maximum afterwards."""
    process = psutil.Process()
    samples: list[tuple[bool, int]] = []
    done = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "set"
        first_manifest = folder / ".synfer" / "shards" / "00000.json"

        def sample() -> None:
            while not done.is_set():
                samples.append((first_manifest.exists(), process.memory_info().rss))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        generate_synthetic_dataset(config, folder, pipeline=pipe, batch_size=batch_size, show_progress=False,
                                   process_index=0, num_processes=1)  # fmt: skip
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    after_first = [rss for written, rss in samples if written]
    baseline, peak = after_first[0], max(after_first)
    return {"num_samples": config.num_samples, "shard_size": config.shard_size, "seconds": seconds,
            "rss_at_first_shard_mb": baseline / 2**20, "rss_peak_after_mb": peak / 2**20,
            "rss_growth_mb": (peak - baseline) / 2**20}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=64, help="images per timed run (ratio)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (after one warm-up)")
    parser.add_argument("--memory-samples", type=int, default=2000, help="images of the memory run (0: skip)")
    parser.add_argument("--memory-size", type=int, default=16, help="image side of the memory run")
    parser.add_argument("--accelerator-speedup", type=float, default=None, metavar="S",
                        help="also measure the ratio on a SIMULATED accelerator S times faster than this CPU")
    parser.add_argument("--real-row", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the ratio with the real pipeline (--no-real-row: the simulated row alone)")
    parser.add_argument("--unet-options", action="store_true",
                        help="also time bare calls with --channels-last and --compile over eager ones")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe, name = resolve_pipeline(None)
    pipe.set_progress_bar_config(disable=True)
    results = {"model": name}

    config = SyntheticSetConfig(num_samples=args.num_samples, num_inference_steps=args.steps, height=args.size,
                                width=args.size, shard_size=args.shard_size)  # fmt: skip
    rows = {"throughput": pipe} if args.real_row else {}
    if args.accelerator_speedup:
        rows[f"simulated_accelerator_x{args.accelerator_speedup:g}"] = SimulatedAccelerator.of(pipe, args.accelerator_speedup)
    for row, made_by in rows.items() if args.repeats else ():
        results[row] = ratio = measure_ratio(made_by, config, args.batch_size, args.repeats)
        if isinstance(made_by, SimulatedAccelerator):
            ratio["simulated_seconds_per_image"] = made_by.seconds_per_image
        print(f"{row} ({args.size}x{args.size}, {args.steps} steps, batch {args.batch_size}, {args.num_samples} images, "
              f"{args.repeats} rounds): bare {ratio['bare_images_per_s']:.2f} img/s; generate / bare, median of paired "
              f"ratios: overlap {ratio['overlap_ratio']:.3f}, synchronous {ratio['synchronous_ratio']:.3f}")  # fmt: skip
    if args.unet_options:
        results["unet_options"] = options = measure_unet_options(pipe, config, args.batch_size, max(args.repeats, 3))
        for name, row in options.items():
            print(f"{name} / eager, bare calls: {row['time_ratio']:.3f} (first call {row['first_call_s']:.1f} s)")
    if args.memory_samples:
        shard_size = min(256, max(1, args.memory_samples // 4))  # several shards: RSS is sampled after the first
        config = SyntheticSetConfig(num_samples=args.memory_samples, num_inference_steps=1, guidance_scale=1.0,
                                    height=args.memory_size, width=args.memory_size, shard_size=shard_size)  # fmt: skip
        results["memory"] = memory = measure_memory(pipe, config, batch_size=32)
        print(f"memory ({args.memory_samples} images, {args.memory_size}x{args.memory_size}, shards of {shard_size}): "
              f"RSS {memory['rss_at_first_shard_mb']:.0f} MB at the first shard, peak {memory['rss_peak_after_mb']:.0f} MB, "
              f"growth {memory['rss_growth_mb']:.1f} MB in {memory['seconds']:.0f} s")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
