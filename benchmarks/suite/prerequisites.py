"""The suite's prerequisites: FaceWorld and the measurement models (the judge and AU regressor by the commands of
`examples/train_faceworld_default.sh`), the second judge and the hard regime's FaceWorld.

The full mode's three measurement models are committed under `benchmarks/measurement_models/` (safetensors, with
the recipe they were trained by), so every run of the suite, on any machine and in any session, measures with the
same yardstick and skips their 40 minutes of training on 2 CPU cores. A model is trained here instead when no
committed model has the recipe the suite asks for (e.g. `--quick`, or a changed recipe)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from synfer_diffusers.cli import main as synfer_cli

from .common import BENCHMARKS, SuiteConfig, as_read_back, run_example, write_json

SECOND_JUDGE_WORLD_SEED = 1
"""The second judge learns from FaceWorld of this seed (other identities and faces than the seed-0 world of the
generator, the guide, the first judge and the test faces)."""
MEASUREMENT_MODELS = BENCHMARKS / "measurement_models"
RECIPE_FILE = "suite_recipe.json"


@dataclass(frozen=True)
class World:
    """A FaceWorld rendering: `synfer faceworld` with these options."""

    seed: int
    num_train: int
    num_test: int
    regime: str = "standard"


@dataclass(frozen=True)
class Recipe:
    """How a measurement model is made: the FaceWorld it learns from and `examples/train_fer_classifier.py`'s
    options besides `--dataset_name` and `--output_dir`."""

    world: World
    options: tuple[str, ...]


def ensure_faceworld(path: Path, world: World) -> None:
    if not (path / "README.md").exists():
        synfer_cli(["faceworld", "--output-dir", str(path), "--num-train", str(world.num_train), "--num-test",
                    str(world.num_test), "--seed", str(world.seed), "--regime", world.regime])  # fmt: skip


def read_recipe(model: Path) -> dict | None:
    path = model / RECIPE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def ensure_classifier(path: Path, recipe: Recipe, world_path: Path) -> None:
    """The measurement model at `path`: kept when it holds a finished run, else copied from the committed model of
    the same name when that was trained by `recipe`, else trained by `recipe` (rendering its FaceWorld at
    `world_path` first)."""
    if (path / "metrics.json").exists():
        return
    committed = MEASUREMENT_MODELS / path.name
    if read_recipe(committed) == as_read_back(recipe):
        staging = path.with_name(path.name + ".copying")  # a killed copy never looks finished
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(committed, staging)
        os.replace(staging, path)
        print(f"== committed measurement model: {committed} -> {path}")
        return
    ensure_faceworld(world_path, recipe.world)
    run_example("train_fer_classifier", [*recipe.options, "--dataset_name", str(world_path), "--output_dir", str(path)])
    write_json(path / RECIPE_FILE, asdict(recipe))


def measurement_recipes(config: SuiteConfig) -> dict[str, Recipe]:
    """The judge (ResNet, seed 0) and the AU regressor (ResNet, seed 1) on FaceWorld seed 0; the second judge
    (MobileNetV2, another model family) on the true labels of FaceWorld seed 1, half the size."""
    main = World(0, config.num_train, config.num_test)
    second = World(SECOND_JUDGE_WORLD_SEED, config.num_train // 2, config.num_test)
    steps = ("--max_train_steps", str(config.measurement_steps))
    return {
        "judge": Recipe(main, ("--task", "expression", "--architecture", "resnet", "--seed", "0", *steps)),
        "au_regressor": Recipe(main, ("--task", "action_units", "--architecture", "resnet", "--seed", "1", *steps)),
        "second_judge": Recipe(second, ("--task", "expression", "--architecture", "mobilenet_v2", "--label_column",
                                        "clean_label", "--seed", "3", *steps)),
    }  # fmt: skip


def ensure_measurement_models(config: SuiteConfig, run_dir: Path) -> None:
    """FaceWorld (seed 0), the three measurement models of `measurement_recipes` and the hard regime's FaceWorld
    (seed 0). None of the models takes part in generation or voting."""
    ensure_faceworld(run_dir / "faceworld", World(0, config.num_train, config.num_test))
    for name, recipe in measurement_recipes(config).items():
        world_path = run_dir / ("faceworld" if recipe.world.seed == 0 else f"faceworld_seed{recipe.world.seed}")
        ensure_classifier(run_dir / name, recipe, world_path)
    ensure_faceworld(run_dir / "faceworld_hard", World(0, config.hard_num_train, config.num_test, regime="hard"))
