"""Table 1: generation (paper Table 1), by `eval_faceworld_generation.py`, and AU controllability (per-AU error and
AU sweeps) by `eval_au_control.py`."""

from __future__ import annotations

from pathlib import Path

from synfer_diffusers.generate import default_model_dir

from .common import BENCHMARKS, SuiteConfig, cached


def table_generation(config: SuiteConfig, run_dir: Path, work: Path) -> dict:
    import eval_au_control  # the benchmark scripts beside the suite (on sys.path), loaded when a table needs them
    import eval_faceworld_generation

    path = work / "generation_eval.json"

    def compute() -> dict:
        return eval_faceworld_generation.main([
            "--model", str(default_model_dir()), "--text-only", "base",
            "--semantic-guidance-scale", str(config.semantic_guidance_scale),
            "--judge", str(run_dir / "judge"), "--second-judge", str(run_dir / "second_judge"), "--au-regressor", str(run_dir / "au_regressor"),
            "--faceworld", str(run_dir / "faceworld"), "--per-expression", str(config.per_expression),
            "--steps", str(config.eval_steps),
        ])  # fmt: skip

    generation = cached(path, compute)

    def compute_control() -> dict:
        return eval_au_control.main([
            "--model", str(default_model_dir()), "--au-regressor", str(run_dir / "au_regressor"),
            "--faceworld", str(run_dir / "faceworld"), "--per-expression", str(config.per_expression),
            "--steps", str(config.eval_steps), "--sweep-seeds", *map(str, range(config.sweep_seeds)),
            "--plot", str(BENCHMARKS / "results" / "au_sweeps.png"),
        ])  # fmt: skip

    return {**generation, "au_control": cached(work / "au_control.json", compute_control)}
