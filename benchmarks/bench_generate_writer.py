"""Overhead of `synfer generate` over bare pipeline calls, and its memory over a long run.

1. **Throughput ratio**: images per second of `generate_synthetic_dataset` (plan, pipeline, labels, PNG
   encoding, parquet shards with fsync, manifests, card, preview) / images per second of bare `SynFERPipeline`
   calls on the same plan, batches and seeds (`pipeline_inputs`). Runs alternate (bare, generate, ...) after a
   warm-up and the ratio of medians is reported, so machine noise hits both sides alike. Target: >= 0.9.
2. **Memory**: resident set size over a long run (default 2,000 images), from the first shard written to the
   end, sampled every 50 ms. Shards stream to disk, so growth should stay far below 200 MB.

    python benchmarks/bench_generate_writer.py                       # tiny random model, 64x64, 4 steps
    python benchmarks/bench_generate_writer.py --memory-samples 2000 --size 16

The model is `resolve_pipeline(None)`: the embedded FaceWorld default (with its in-loop FERAnno labels voted
with the target), or the tiny random stand-in where none is installed. This measures the writer's and labeller's
overhead, not image quality.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from synfer_diffusers.generate import (
    SyntheticSetConfig,
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


def generate_seconds(pipe, config: SyntheticSetConfig, batch_size: int, folder: Path) -> float:
    start = time.perf_counter()
    generate_synthetic_dataset(config, folder, pipeline=pipe, batch_size=batch_size, overwrite=folder.exists(),
                               show_progress=False, process_index=0, num_processes=1)  # fmt: skip
    return time.perf_counter() - start


def measure_ratio(pipe, config: SyntheticSetConfig, batch_size: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "set"
        bare_pipeline_seconds(pipe, config, batch_size), generate_seconds(pipe, config, batch_size, folder)  # warm-up
        bare, generated = [], []
        for _ in range(repeats):
            bare.append(bare_pipeline_seconds(pipe, config, batch_size))
            generated.append(generate_seconds(pipe, config, batch_size, folder))
    bare_ips, generate_ips = (
        config.num_samples / statistics.median(bare),
        config.num_samples / statistics.median(generated),
    )
    return {"num_samples": config.num_samples, "repeats": repeats, "bare_images_per_s": bare_ips,
            "generate_images_per_s": generate_ips, "ratio": generate_ips / bare_ips}  # fmt: skip


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
    results["throughput"] = ratio = measure_ratio(pipe, config, args.batch_size, args.repeats)
    print(f"throughput ({args.size}x{args.size}, {args.steps} steps, batch {args.batch_size}, {args.num_samples} images): "
          f"bare {ratio['bare_images_per_s']:.2f} img/s, generate {ratio['generate_images_per_s']:.2f} img/s, "
          f"ratio {ratio['ratio']:.3f}")  # fmt: skip
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
