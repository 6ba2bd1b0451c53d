"""The suite's prerequisites: FaceWorld and the measurement models (the judge and AU regressor by the commands of
`examples/train_faceworld_default.sh`), the second judge and the hard regime's FaceWorld."""

from __future__ import annotations

from pathlib import Path

from synfer_diffusers.cli import main as synfer_cli

from .common import SuiteConfig

SECOND_JUDGE_WORLD_SEED = 1
"""The second judge learns from FaceWorld of this seed (other identities and faces than the seed-0 world of the
generator, the guide, the first judge and the test faces)."""


def ensure_faceworld(path: Path, num_train: int, num_test: int, seed: int, regime: str = "standard") -> None:
    if not (path / "README.md").exists():
        synfer_cli(["faceworld", "--output-dir", str(path), "--num-train", str(num_train), "--num-test",
                    str(num_test), "--seed", str(seed), "--regime", regime])  # fmt: skip


def ensure_classifier(fer, path: Path, *options: str) -> None:
    """`examples/train_fer_classifier.py OPTIONS --output_dir PATH`, unless PATH holds a finished run."""
    if not (path / "metrics.json").exists():
        fer.main([*options, "--output_dir", str(path)])


def ensure_measurement_models(config: SuiteConfig, run_dir: Path, fer) -> None:
    """FaceWorld (seed 0) with the judge (ResNet, seed 0) and the AU regressor (ResNet, seed 1); the second judge
    (MobileNetV2, another model family, trained on the true labels of FaceWorld seed 1); the hard regime's FaceWorld
    (seed 0). None of them takes part in generation or voting."""
    faceworld = run_dir / "faceworld"
    ensure_faceworld(faceworld, config.num_train, config.num_test, seed=0)
    steps = ("--max_train_steps", str(config.measurement_steps))
    for name, task, seed in (("judge", "expression", 0), ("au_regressor", "action_units", 1)):
        ensure_classifier(fer, run_dir / name, "--dataset_name", str(faceworld), "--task", task, "--architecture",
                          "resnet", "--seed", str(seed), *steps)  # fmt: skip
    second_world = run_dir / f"faceworld_seed{SECOND_JUDGE_WORLD_SEED}"
    ensure_faceworld(second_world, config.num_train // 2, config.num_test, seed=SECOND_JUDGE_WORLD_SEED)
    ensure_classifier(fer, run_dir / "second_judge", "--dataset_name", str(second_world), "--task", "expression",
                      "--architecture", "mobilenet_v2", "--label_column", "clean_label", "--seed", "3", *steps)  # fmt: skip
    ensure_faceworld(run_dir / "faceworld_hard", config.hard_num_train, config.num_test, seed=0, regime="hard")
