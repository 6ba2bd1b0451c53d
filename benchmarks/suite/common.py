"""What every table of the suite shares: its sizes, resumable stages, the downstream classifier and FaceWorld
loading."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import numpy as np
import torch

from synfer_diffusers import EXPRESSIONS
from synfer_diffusers.evaluation import predict
from synfer_diffusers.generate import SyntheticSetConfig
from synfer_diffusers.training.fer_classifier import TrainFERConfig, train

BENCHMARKS = Path(__file__).resolve().parents[1]
EXAMPLES = BENCHMARKS.parent / "examples"


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes of one suite mode."""

    mode: str
    num_train: int  # FaceWorld train / test faces, when the suite renders FaceWorld itself
    num_test: int
    measurement_steps: int  # training steps of the judge and the AU regressor
    per_expression: int  # table 1: images per expression and row
    eval_steps: int  # table 1: denoising steps
    num_real: int  # table 2: N
    synthetic_factor: int  # table 2: the large synthetic set is synthetic_factor * N
    generation_steps: int  # table 2: denoising steps of the synthetic sets
    classifier_steps: int  # table 2: optimisation steps of every downstream classifier (same for every row)
    seeds: tuple[int, ...]  # table 2: classifier seeds
    speed_configs: tuple[str, ...]  # table 3: bench_speed.py configs
    writer_memory_samples: int  # table 3: images of the writer's memory run
    semantic_guidance_scale: float = 12.0  # lambda_g (default interval 2), chosen in the issue-4 sweep
    sweep_seeds: int = 4  # table 1: seeds of each AU sweep (every AU of the space at every level 0..5)
    # table 1: `au_scale` lever rows (issue 27; README): the estimator's choice; its neighbours 1.5 and 2 were measured
    # at 91e8b45, and dropping them keeps table 1 (with the feedback rows, 2-3 sampling loops each) within one session
    au_scale_levers: tuple[float, ...] = (1.75,)
    # table 1: AU-feedback lever rows (passes, gain) (issue 27; README): one pass at gain 0.5, the best trade of the
    # lever-size runs, and two passes at the default gain 1
    au_feedback_levers: tuple[tuple[int, float], ...] = ((1, 0.5), (2, 1.0))
    ssl_steps: int = 1200  # table 7: SimCLR pretraining steps of each row (600 at a820b36; README, table 7)
    ssl_batch_size: int = 128  # table 7: images per SimCLR step (x 2 views)
    probe_num_train: int = 2000  # table 7: labelled real faces of every linear probe
    edit_faces: int = 10  # table 4: FaceWorld source faces, each edited into the 7 expressions
    edit_num_real: int = 42  # table 4 downstream: M real faces, + their 6M edits or + 6M generated images
    identity_steps: int = 800  # table 4: training steps of the identity classifier
    edit_persons: int = 36  # table 4 persons: K synthetic persons x 7 expressions (7K = 6 * edit_num_real images)
    hard_num_train: int = 5000  # table 5: hard-regime FaceWorld train faces (the AU source of its synthetic sets)
    hard_num_real: int = 500  # table 5: N of the hard regime's downstream rows
    feranno_num_train: int = 2000  # table 6: labelled train faces of FERAnno and the stock classifier
    feranno_steps: int = 150  # table 6: training steps of both at the same images seen
    feranno_batch_size: int = 32


FULL = SuiteConfig(
    mode="full", num_train=20000, num_test=2000, measurement_steps=1500, per_expression=30, eval_steps=25,
    num_real=500, synthetic_factor=5, generation_steps=25, classifier_steps=800, seeds=(0, 1, 2),
    speed_configs=("tiny", "sd15", "faceworld"), writer_memory_samples=500,
)  # fmt: skip
QUICK = SuiteConfig(
    mode="quick", num_train=2000, num_test=500, measurement_steps=200, per_expression=3, eval_steps=10,
    num_real=140, synthetic_factor=2, generation_steps=10, classifier_steps=60, seeds=(0,),
    speed_configs=("tiny",), writer_memory_samples=100, edit_faces=2, edit_num_real=14, edit_persons=12,
    identity_steps=60, hard_num_train=700, hard_num_real=70, feranno_num_train=140, feranno_steps=4,
    feranno_batch_size=8, sweep_seeds=1, ssl_steps=10, ssl_batch_size=16, probe_num_train=140,
)  # fmt: skip
CLASSIFIER = {"architecture": "resnet", "hidden_sizes": [32, 64, 128], "depths": [1, 1, 1], "train_batch_size": 64}
LABEL_SOURCES = ("target", "feranno", "vote", "dawid_skene", "tempered_dawid_skene")
DEFAULT_LABELS = "tempered_dawid_skene"
"""The label source `synfer generate` writes by default: Dawid-Skene with its classifiers tempered."""
DEFAULT_TEMPERING = SyntheticSetConfig().classifier_tempering
JUDGES = ("judge", "second_judge")
"""The measurement models that read a synthetic image's expression (committed in `measurement_models/`)."""
NOT_RECORDED = "not recorded"


def agreement_with_judges(
    synthetic: dict[str, np.ndarray], run_dir: Path, sources: Sequence[str] = LABEL_SOURCES
) -> dict[str, dict[str, float]]:
    """How often each label source equals each judge's label on the synthetic images, by judge."""
    from transformers import AutoModelForImageClassification

    agreement = {}
    for name in JUDGES:
        judge = AutoModelForImageClassification.from_pretrained(run_dir / name).eval()
        judged = predict(judge, synthetic["image"]).argmax(dim=1).numpy()
        agreement[name] = {source: float((synthetic[source] == judged).mean()) for source in sources}
    return agreement


def row_key(name: str) -> str:
    """A row name as a file-name stem (`real N + synthetic N (vote)` -> `real_N_plus_synthetic_N_vote`)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name.replace("+", "plus")).strip("_")


def run_example(name: str, argv: list[str]) -> None:
    """Runs `examples/{name}.py` with `argv` in a child process, as a user types it (the examples are scripts, not
    modules); its output goes to this process's streams and a failure raises `CalledProcessError`."""
    subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *argv], check=True)


def cached(path: Path, compute) -> dict:
    """The JSON at `path`, computing and writing it (atomically) first if it is missing."""
    if path.exists():
        print(f"== cached: {path}")
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = compute()
    result = {**result, "stage_seconds": round(time.perf_counter() - start, 1), "commit": git_commit()}
    write_json(path, result)
    return result


def write_json(path: Path, data: dict) -> None:
    """`data` as JSON at `path`, atomically: a killed write leaves the previous file (or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def as_read_back(value):
    """`value` as it reads back from JSON (tuples as lists, dataclasses as dicts), for comparing with a file."""
    return json.loads(json.dumps(asdict(value) if is_dataclass(value) else value))


NOT_CODE = (
    ":(top,exclude)benchmarks/RESULTS.md",
    ":(top,exclude)benchmarks/results",
    ":(top,exclude)docs",
    ":(top,exclude,glob)**/*.md",
    ":(top,exclude)tests",
    ":(top,exclude).ci",
)
"""What the code commit ignores: the suite's outputs, prose, pictures, and the tests and CI entry point (which no
benchmark runs)."""


def git_commit(checkout: Path = BENCHMARKS) -> str:
    """The code commit: the short hash of the last commit that changed anything outside `NOT_CODE`, `-dirty` when
    tracked files outside it differ from that commit, or "unknown" outside git (`checkout`: a folder of the
    repository). Commits of results or prose leave it unchanged, so a suite run spread over several invocations stays
    at one commit."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=checkout).stdout

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/", *NOT_CODE).strip()
        return git("log", "-1", "--format=%h", "--", ":/", *NOT_CODE).strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def combined_stage(runs: list[dict]) -> dict:
    """Cached runs of a table (its classifiers, its speed rows) as one stage: their summed time and the commits they
    were measured at."""
    return {
        "stage_seconds": round(sum(r["stage_seconds"] for r in runs), 1),
        "commit": ", ".join(sorted({r.get("commit", NOT_RECORDED) for r in runs})),
    }


def stage_summary(stages: dict[str, dict]) -> dict[str, dict]:
    return {
        name: {k: stage.get(k, NOT_RECORDED) for k in ("stage_seconds", "commit")} for name, stage in stages.items()
    }


def beats_beyond_spread(target: str, ours: dict, theirs: dict) -> tuple[str, str, bool]:
    """`(target, measured, met)`: summarised row `ours` beats row `theirs` by more than the larger seed standard
    deviation (a one-seed row has no spread to beat, so the target is not met)."""
    spread = max(ours["accuracy_std"], theirs["accuracy_std"])
    several = min(ours["seeds"], theirs["seeds"]) > 1
    measured = f"{ours['accuracy_mean']:.1%} vs {theirs['accuracy_mean']:.1%} " + (
        f"(spread {spread:.1%})" if several else "(one seed: no spread)"
    )
    return target, measured, several and ours["accuracy_mean"] - theirs["accuracy_mean"] > spread


def summarise_runs(runs: list[dict], name: str) -> dict:
    """Mean and sample standard deviation over the seeds of row `name`, mean per-class recall, summed confusion
    matrix."""
    mine = [r for r in runs if r["row"] == name]
    accuracy = np.array([r["accuracy"] for r in mine])
    macro_f1 = np.array([r["macro_f1"] for r in mine])
    spread = (lambda x: float(x.std(ddof=1))) if len(mine) > 1 else (lambda x: 0.0)
    return {
        "num_train": mine[0]["num_train"], "seeds": len(mine),
        "accuracy_mean": float(accuracy.mean()), "accuracy_std": spread(accuracy),
        "macro_f1_mean": float(macro_f1.mean()), "macro_f1_std": spread(macro_f1),
        "per_class_recall": {e: float(np.mean([r["per_class_recall"][e] for r in mine])) for e in EXPRESSIONS},
        "confusion_matrix": np.sum([r["confusion_matrix"] for r in mine], axis=0).tolist(),
    }  # fmt: skip


def downstream_table(rows: list[dict]) -> list[str]:
    """RESULTS.md's table of summarised downstream rows: images, accuracy and macro-F1 (mean ± std over seeds)."""
    return [
        "| training data | images | accuracy | macro-F1 |",
        "|---|---|---|---|",
        *[f"| {r['name']} | {r['num_train']} | {r['accuracy_mean']:.1%} ± {r['accuracy_std']:.1%} | "
          f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} |" for r in rows],
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------


def train_and_test(name: str, data: dict[str, np.ndarray], seed: int, config, run_dir, test, metric) -> dict:
    """One downstream classifier (`CLASSIFIER`, `config.classifier_steps` steps) trained on `data` and scored on the
    real test faces' (`test`) clean labels."""
    train_config = TrainFERConfig(
        dataset_name=str(run_dir / "faceworld"), output_dir=str(run_dir / "unused"), task="expression",
        max_train_steps=config.classifier_steps, seed=seed, **CLASSIFIER,
    )  # fmt: skip
    model, summary = train(train_config, {"train": data})
    with torch.no_grad():
        predictions = predict(model, test["image"]).argmax(dim=1).numpy()
    scores = metric.compute(predictions=predictions, references=test["clean_label"], label_names=list(EXPRESSIONS))
    return {"row": name, "seed": seed, "num_train": len(data["label"]), **summary, **scores}


def run_classifiers(
    training_sets: dict[str, Callable[[], dict[str, np.ndarray]]],
    test: dict,
    folder: Path,
    config,
    run_dir,
    suffix: str = "",
) -> list[dict]:
    """`train_and_test` of each named training set (built when its runs are not cached yet) for every seed of
    `config.seeds`, each run cached as `folder / f"{row_key(name)}{suffix}_seed{seed}.json"`."""
    from synfer_diffusers.metrics import load_fer_metric

    metric, runs = load_fer_metric(), []
    for name, build in training_sets.items():
        paths = {seed: folder / f"{row_key(name)}{suffix}_seed{seed}.json" for seed in config.seeds}
        data = None if all(path.exists() for path in paths.values()) else build()
        for seed, path in paths.items():
            runs.append(cached(path, lambda: train_and_test(name, data, seed, config, run_dir, test, metric)))
    return runs


def load_real(
    run_dir: Path, split: str, columns: tuple[str, ...], count: int | None = None, world: str = "faceworld"
) -> dict[str, np.ndarray]:
    """Columns of a split of the run's FaceWorld (`world`: "faceworld", or "faceworld_hard" for the hard regime;
    its first `count` rows) as arrays."""
    import datasets

    data = datasets.load_dataset(str(run_dir / world), split=split)
    data = data.select(range(count)) if count is not None else data
    return {k: np.asarray(v) for k, v in data.select_columns(list(columns)).with_format("numpy")[:].items()}
