"""Table 1: generation (paper Table 1), by `eval_faceworld_generation.py`, and AU controllability (per-AU error and
AU sweeps) by `eval_au_control.py`, for the embedded default and for its lever rows (`au_scale` values, AU feedback
passes)."""

from __future__ import annotations

import json
from pathlib import Path

from synfer_diffusers.generate import default_model_dir

from .common import BENCHMARKS, SuiteConfig, cached


def _generation_args(config: SuiteConfig, run_dir: Path, *extra: str) -> list[str]:
    """`eval_faceworld_generation.py`'s arguments for the embedded default, then `extra`."""
    return [
        "--model", str(default_model_dir()), "--judge", str(run_dir / "judge"),
        "--second-judge", str(run_dir / "second_judge"), "--au-regressor", str(run_dir / "au_regressor"),
        "--faceworld", str(run_dir / "faceworld"), "--per-expression", str(config.per_expression),
        "--steps", str(config.eval_steps), *extra,
    ]  # fmt: skip


def _control_args(config: SuiteConfig, run_dir: Path, *extra: str) -> list[str]:
    """`eval_au_control.py`'s arguments for the embedded default, then `extra`."""
    return [
        "--model", str(default_model_dir()), "--au-regressor", str(run_dir / "au_regressor"),
        "--faceworld", str(run_dir / "faceworld"), "--per-expression", str(config.per_expression),
        "--steps", str(config.eval_steps), "--sweep-seeds", *map(str, range(config.sweep_seeds)), *extra,
    ]  # fmt: skip


def table_generation(config: SuiteConfig, run_dir: Path, work: Path) -> dict:
    import eval_au_control  # the benchmark scripts beside the suite (on sys.path), loaded when a table needs them
    import eval_faceworld_generation

    generation = cached(work / "generation_eval.json", lambda: eval_faceworld_generation.main(_generation_args(
        config, run_dir, "--text-only", "base", "--semantic-guidance-scale", str(config.semantic_guidance_scale),
    )))  # fmt: skip
    control = cached(work / "au_control.json", lambda: eval_au_control.main(_control_args(
        config, run_dir, "--real-requests", "--plot", str(BENCHMARKS / "results" / "au_sweeps.png"),
    )))  # fmt: skip

    settings = [{"au_scale": scale} for scale in config.au_scale_levers]
    settings += [{"au_feedback_passes": passes, "au_feedback_gain": gain} for passes, gain in config.au_feedback_levers]

    def compute_levers() -> dict:
        rows = []
        for setting in settings:
            kwargs = ("--pipeline-kwargs", json.dumps(setting))
            generation = eval_faceworld_generation.main(_generation_args(config, run_dir, *kwargs))
            (row,) = [r for r in generation["rows"] if r["name"].startswith("+ AUs")]
            rows.append({**setting, "generation": row,
                         "au_control": eval_au_control.main(_control_args(config, run_dir, "--real-requests", *kwargs))})  # fmt: skip
        return {"rows": rows}

    name = "_".join(f"{key}_{value}" for setting in settings for key, value in setting.items())
    levers = cached(work / f"au_levers_{name}.json", compute_levers)
    return {**generation, "au_control": control, "au_levers": levers}
