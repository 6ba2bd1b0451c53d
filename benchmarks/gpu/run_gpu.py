"""The prepared GPU run (issue 30): SynFER on an accelerator, in one command that fits a short lease.

Writes `gpu_results.json` and `gpu_results.md` to `--out` (the device tool's `$OUT`), rewritten after every
section, so a run stopped at its time limit still returns what it measured:

- `environment`: device, torch and the library versions the run used;
- `speed`: per dtype (float16, bfloat16) and batch (1, 8), SD 1.5-size random weights (`bench_speed.py`'s `sd15`
  components: UNet 860M + AU adapter, VAE, CLIP-L-size text encoder, 512 px): stock `StableDiffusionPipeline` and
  `SynFERPipeline` images/s and peak GPU memory, and the ratios `au_overhead`, `semantic_guidance` and
  `feranno_in_loop` (baseline and candidate alternate after a warm-up; medians; `bench_speed.py` defines each);
- `compile`: `au_overhead`'s SynFER call with the UNet's repeated blocks compiled (`compile_repeated_blocks`) / eager;
- `harness`: the accelerator-only tests of diffusers' vendored test-suite (`tests/diffusers_harness`, the tests whose
  decorators require an accelerator) on `SynFERPipeline` and its stock peer (`tests/test_pipeline_conformance.py`).

A section that fails records its error and the run goes on; sections not started within `--budget-s` are recorded as
skipped. `--dry-run` rehearses every section on the CPU at the `tiny` sizes (float32, batch 1 and 2, 2 steps, compile
off; the harness tests skip there with diffusers' reasons) in under a minute.

    PYTHONPATH=SITE:src python benchmarks/gpu/run_gpu.py --out "$OUT"       # see README.md for the wheels
    python benchmarks/gpu/run_gpu.py --dry-run --out /tmp/gpu-dry-run
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_speed  # noqa: E402

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "peft", "huggingface_hub", "datasets", "evaluate")
HARNESS_FILES = ("tests/diffusers_harness/pipeline_tester.py", "tests/diffusers_harness/sd_function_tester.py")
ACCELERATOR_MARKERS = ("require_accelerator", "require_torch_accelerator", "skipIf(torch_device")
"""Decorator text that marks a harness test as accelerator-only (diffusers' own skip markers)."""


@dataclasses.dataclass
class Plan:
    """What one run measures."""

    config: str  # bench_speed config whose components are built
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    steps: int
    guided_steps: int
    repeats: int
    compile: bool
    harness_timeout_s: int


GPU_PLAN = Plan("sd15", ("float16", "bfloat16"), (1, 8), steps=20, guided_steps=20, repeats=3, compile=True,
                harness_timeout_s=120)  # fmt: skip
DRY_RUN_PLAN = Plan("tiny", ("float32",), (1, 2), steps=2, guided_steps=2, repeats=1, compile=False,
                    harness_timeout_s=120)  # fmt: skip
SPEED_ROWS = ("au_overhead", "semantic_guidance", "feranno_in_loop")


def to_device(built: tuple, device: str, dtype: str) -> tuple:
    """`bench_speed.build_components`'s output with every module moved to `device` and `dtype` (in place)."""
    components, base_unet, guide, processor, head = built
    move = {"device": device, "dtype": bench_speed.DTYPES[dtype]}
    components = {k: v.to(**move) if isinstance(v, torch.nn.Module) else v for k, v in components.items()}
    return components, base_unet.to(**move), guide.to(**move), processor, head.to(**move)


def peak_memory_mb(fn: Callable[[], object]) -> float | None:
    """Peak GPU memory allocated by torch during `fn()`, in MB (None on a CPU)."""
    if not torch.cuda.is_available():
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def measure_speed(plan: Plan, dtype: str, batch: int, built: tuple) -> list[dict]:
    """Images/s and peak memory of stock SD and SynFER, then the ratio rows, for one dtype and batch."""
    config = dataclasses.replace(bench_speed.CONFIGS[plan.config], dtype=bench_speed.DTYPES[dtype], batch=batch,
                                 steps=plan.steps, guided_steps=plan.guided_steps, repeats=plan.repeats)  # fmt: skip
    pairs = bench_speed.make_pairs(config, built)
    stock, synfer = pairs["au_overhead"]
    rows = []
    for row in SPEED_ROWS:
        measured = bench_speed.median_ratio(*pairs[row], config.repeats)
        rows.append({"row": row, "dtype": dtype, "batch": batch, "steps": plan.steps, **measured})
        if row == "au_overhead":
            timed = (("stock_sd", stock, measured["baseline"]), ("synfer", synfer, measured["candidate"]))
            for name, fn, seconds in timed:
                rows.append({"row": f"{name}_images_per_s", "dtype": dtype, "batch": batch, "steps": plan.steps,
                             "unit": "images/s", "value": batch / seconds, "peak_mb": peak_memory_mb(fn)})  # fmt: skip
    return rows


def measure_compile(plan: Plan, dtype: str, built: tuple) -> list[dict]:
    """SynFER with a copy of the UNet whose repeated blocks are compiled (`compile_repeated_blocks`) / eager, at the
    largest batch; `compile_s` is the first compiled call (compilation included)."""
    batch = plan.batches[-1]
    config = dataclasses.replace(bench_speed.CONFIGS[plan.config], dtype=bench_speed.DTYPES[dtype], batch=batch,
                                 steps=plan.steps, repeats=plan.repeats)  # fmt: skip
    components, *rest = built
    unet = deepcopy(components["unet"])
    unet.compile_repeated_blocks()
    eager = bench_speed.make_pairs(config, built)["au_overhead"][1]
    compiled = bench_speed.make_pairs(config, ({**components, "unet": unet}, *rest))["au_overhead"][1]
    start = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - start
    measured = bench_speed.median_ratio(eager, compiled, config.repeats)
    return [{"row": "compile_vs_eager", "dtype": dtype, "batch": batch, "steps": plan.steps, "compile_s": compile_s,
             **measured}]  # fmt: skip


def accelerator_only_tests() -> list[str]:
    """Names of the harness tests whose decorators require an accelerator (CUDA, XPU, float16 or xformers)."""
    names = []
    for path in HARNESS_FILES:
        for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                decorators = " ".join(ast.unparse(d) for d in node.decorator_list)
                if any(marker in decorators for marker in ACCELERATOR_MARKERS):
                    names.append(node.name)
    return sorted(set(names))


def run_harness(plan: Plan, out: Path) -> list[dict]:
    """The accelerator-only harness tests on SynFER and its stock peer: counts of each outcome, and the failures."""
    names = accelerator_only_tests()
    report = out / "harness_junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", f"--junitxml={report}",
               "tests/test_pipeline_conformance.py", "-k", " or ".join(names)]  # fmt: skip
    try:
        env = {**os.environ, "SYNFER_STOCK_PEER": "1"}  # the stock peer too, whatever its CPU record says
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=plan.harness_timeout_s)  # fmt: skip
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired:
        output, returncode = f"timed out after {plan.harness_timeout_s} s", None
    summary = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output.strip().splitlines()[-1])
    return [{"row": "harness_accelerator_only", "tests": names, "returncode": returncode,
             "counts": {kind: int(n) for n, kind in summary},
             "failures": [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))],
             "tail": output[-3000:]}]  # fmt: skip


def environment(device: str) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "CPU"
    return {"device": device, "device_name": name, "python": platform.python_version(), "versions": versions}


def markdown(results: dict) -> str:
    """The speed, compile and harness sections as Markdown tables."""
    env = results["environment"]
    lines = [f"# SynFER on {env['device_name']} ({'dry run, ' if results['dry_run'] else ''}torch "
             f"{env['versions']['torch']}, diffusers {env['versions']['diffusers']})", "",
             "| row | dtype | batch | steps | value | baseline s | candidate s | ratio | peak MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip

    def cell(value, spec=".3f"):
        return "-" if value is None else format(value, spec)

    for row in results["speed"] + results["compile"]:
        lines.append(f"| {row['row']} | {row['dtype']} | {row['batch']} | {row['steps']} | {cell(row.get('value'))} "
                     f"| {cell(row.get('baseline'))} | {cell(row.get('candidate'))} | {cell(row.get('ratio'))} "
                     f"| {cell(row.get('peak_mb'), '.0f')} |")  # fmt: skip
    for row in results["harness"]:
        counts = ", ".join(f"{n} {kind}" for kind, n in row["counts"].items()) or f"returncode {row['returncode']}"
        lines += ["", f"Accelerator-only harness tests ({len(row['tests'])} names x 2 classes): {counts}."]
        lines += [f"- {failure}" for failure in row["failures"]]
    lines += ["", *[f"- {name}: {state}" for name, state in results["sections"].items()], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_results.json / gpu_results.md (the tool's $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the rehearsal")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="no section starts after this many seconds (default 330: with the longest section, "
                             "compile, the run ends within 8 minutes)")
    parser.add_argument("--no-harness", action="store_true", help="skip the harness tests")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    plan = DRY_RUN_PLAN if args.dry_run else GPU_PLAN
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if not args.dry_run and device != "cuda":
        raise SystemExit("No CUDA device: run with --dry-run on a CPU.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"dry_run": args.dry_run, "plan": dataclasses.asdict(plan), "environment": environment(device),
               "speed": [], "compile": [], "harness": [], "sections": {}}  # fmt: skip

    def write() -> None:
        (out / "gpu_results.json").write_text(json.dumps(results, indent=2))
        (out / "gpu_results.md").write_text(markdown(results))

    def section(name: str, key: str, fn: Callable[[], list[dict]]) -> None:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            results["sections"][name] = f"skipped: {elapsed:.0f} s > budget {args.budget_s:.0f} s"
        else:
            print(f"== {name} ({elapsed:.0f} s)", flush=True)
            try:
                results[key] += fn()
                results["sections"][name] = f"done in {time.perf_counter() - start - elapsed:.0f} s"
            except Exception as error:  # recorded, and the run goes on
                traceback.print_exc()
                results["sections"][name] = f"failed: {type(error).__name__}: {error}"[:500]
        write()

    if not args.no_harness:  # first: a subprocess that needs the GPU before this process holds its memory
        section("harness", "harness", lambda: run_harness(plan, out))
    built = bench_speed.build_components(bench_speed.CONFIGS[plan.config])  # random weights, built once
    for dtype in plan.dtypes:
        built = to_device(built, device, dtype)
        for batch in plan.batches:
            section(f"speed {dtype} batch {batch}", "speed", lambda: measure_speed(plan, dtype, batch, built))
    if plan.compile:  # last: the most expensive per number, and once (compilation takes most of it)
        built = to_device(built, device, plan.dtypes[0])
        section(f"compile {plan.dtypes[0]}", "compile", lambda: measure_compile(plan, plan.dtypes[0], built))
    results["total_s"] = time.perf_counter() - start
    write()
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
