"""Table 7: representation learning (the paper's MoCo v3 / linear-probe experiment, at FaceWorld scale).

A small ResNet encoder is pretrained with SimCLR (`examples/train_ssl.py`, images only) on real N, synthetic N,
synthetic kN and real N + synthetic N images, then frozen and probed linearly on the same labelled real faces in
every row (the first `probe_num_train` FaceWorld train faces with their annotated labels), tested on the real test
faces' true labels. The synthetic images are table 2's semantic-guidance set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import SuiteConfig, beats_beyond_spread, cached, load_real, run_example, stage_summary
from .downstream import build_synthetic_set, load_synthetic_set


@dataclass(frozen=True)
class RepresentationRow:
    name: str
    real: bool  # the real N images
    synthetic: int  # synthetic images, in multiples of N


def representation_rows(config: SuiteConfig) -> list[RepresentationRow]:
    k = config.synthetic_factor
    return [
        RepresentationRow("real N", True, 0),
        RepresentationRow("synthetic N", False, 1),
        RepresentationRow(f"synthetic {k}N", False, k),
        RepresentationRow("real N + synthetic N", True, 1),
    ]


def pretraining_images(row: RepresentationRow, config: SuiteConfig, real: np.ndarray, synthetic: np.ndarray) -> np.ndarray:
    parts = ([real] if row.real else []) + ([synthetic[: row.synthetic * config.num_real]] if row.synthetic else [])
    return np.concatenate(parts)


def write_images(images: np.ndarray, folder: Path) -> None:
    """A one-column (`image`) train split that `train_ssl.py` reads."""
    import datasets

    if (folder / "done").exists():
        return
    data = datasets.Dataset.from_dict({"image": list(images)}, features=datasets.Features({"image": datasets.Image()}))
    data.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    (folder / "done").write_text("")


def table_representation(config: SuiteConfig, run_dir: Path, work: Path) -> dict:
    path, generation = build_synthetic_set(config, work, guided=True)
    synthetic = load_synthetic_set(path)["image"]
    real = load_real(run_dir, "train", ("image",), config.num_real)["image"]
    runs = []
    for row in representation_rows(config):
        folder = work / "representation" / row.name.replace(" ", "_").replace("+", "and")
        write_images(pretraining_images(row, config, real, synthetic), folder / "images")
        for seed in config.seeds:

            def compute(folder=folder, seed=seed) -> dict:
                output = folder / f"seed{seed}_steps{config.ssl_steps}"
                run_example("train_ssl", ["--dataset_name", str(folder / "images"), "--output_dir", str(output), "--seed", str(seed),
                          "--max_train_steps", str(config.ssl_steps), "--train_batch_size", str(config.ssl_batch_size),
                          "--learning_rate", "1e-3", "--checkpointing_steps", str(max(1, config.ssl_steps // 4)),
                          "--resume_from_checkpoint", "latest", "--probe_dataset", str(run_dir / "faceworld"),
                          "--probe_num_train", str(config.probe_num_train)])  # fmt: skip
                return json.loads((output / "probe.json").read_text())

            probe = folder / f"probe_seed{seed}_steps{config.ssl_steps}.json"  # a run of other steps is another run
            runs.append({"row": row.name, "seed": seed, **cached(probe, compute)})
    rows = []
    for row in representation_rows(config):
        accuracy = np.array([r["accuracy"] for r in runs if r["row"] == row.name])
        spread = float(accuracy.std(ddof=1)) if len(accuracy) > 1 else 0.0
        images = len(pretraining_images(row, config, real, synthetic))
        rows.append({"name": row.name, "images": images, "seeds": len(accuracy),
                     "accuracy_mean": float(accuracy.mean()), "accuracy_std": spread})  # fmt: skip
    stages = {"synthetic set": generation,
              "SimCLR pretraining + probes": {"stage_seconds": sum(r["stage_seconds"] for r in runs),
                                              "commit": ", ".join(sorted({r["commit"] for r in runs}))}}  # fmt: skip
    return {"rows": rows, "runs": runs, "stages": stage_summary(stages)}


def representation_targets(table: dict, config: SuiteConfig) -> list[tuple[str, str, bool]]:
    """Issue 32's target: pretraining on real N + synthetic N beats real N by more than the seed spread."""
    rows = {row["name"]: row for row in table["rows"]}
    target = "linear probe: real N + synthetic N pretraining beats real N by more than the seed spread"
    return [beats_beyond_spread(target, rows["real N + synthetic N"], rows["real N"])]


def render_representation(table: dict, config: SuiteConfig) -> list[str]:
    """Table 7's section of RESULTS.md."""
    return [
        "## 7. Representation learning (paper: MoCo v3 + linear probe)",
        "",
        f"SimCLR (`examples/train_ssl.py`: ResNet 32-64-128, {config.ssl_steps} steps of {config.ssl_batch_size} "
        "images x 2 views, images only) pretrained on each row's images, then frozen; a linear probe (logistic "
        f"regression on its pooled features) learns from the same {config.probe_num_train} real FaceWorld train "
        "faces with their annotated labels in every row and is tested on the real test faces' true labels. Synthetic "
        f"images: table 2's semantic-guidance set. Seeds {list(config.seeds)} (pretraining and probe).",
        "",
        "| pretraining data | images | linear-probe accuracy |",
        "|---|---|---|",
        *[f"| {r['name']} | {r['images']} | {r['accuracy_mean']:.1%} ± {r['accuracy_std']:.1%} |"
          for r in table["rows"]],
        "",
    ]  # fmt: skip
