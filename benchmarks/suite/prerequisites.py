"""The suite's prerequisites: FaceWorld and the measurement models (the commands of
`examples/train_faceworld_default.sh`)."""

from __future__ import annotations

from pathlib import Path

from synfer_diffusers.cli import main as synfer_cli

from .common import SuiteConfig


def ensure_measurement_models(config: SuiteConfig, run_dir: Path, fer) -> None:
    faceworld = run_dir / "faceworld"
    if not (faceworld / "README.md").exists():
        synfer_cli(["faceworld", "--output-dir", str(faceworld), "--num-train", str(config.num_train),
                    "--num-test", str(config.num_test), "--seed", "0"])  # fmt: skip
    for name, task, seed in (("judge", "expression", 0), ("au_regressor", "action_units", 1)):
        if not (run_dir / name / "metrics.json").exists():
            fer.main(["--dataset_name", str(faceworld), "--output_dir", str(run_dir / name), "--task", task,
                      "--architecture", "resnet", "--max_train_steps", str(config.measurement_steps), "--seed", str(seed)])  # fmt: skip
