"""FERAnno vs a stock classifier on the same labelled faces with the same budget (issue 16, part 2).

Both learn from the first `--num_train` rows of FaceWorld's train split with the annotated (noisy) `label` column and
see the same number of training images (`--steps` x `--batch_size`, the budget): FERAnno through
`examples/train_feranno.py` (a new head on the frozen UNet of `--model`, the embedded default by default), the
classifier through `examples/train_fer_classifier.py` (the suite's downstream recipe: ResNet, hidden sizes 32 64 128,
depths 1 1 1, its own one-cycle schedule, augmentation and label smoothing). Both are scored on the first
`--num_test` test faces against their true (`clean_label`) and annotated (`label`) labels with the package's
`evaluate` metric; rows also give the wall seconds of training (this machine, as shared when it ran).

    python benchmarks/eval_feranno_vs_classifier.py --faceworld runs/faceworld --output_dir runs/feranno_vs_resnet \
        --num_train 2000 --num_test 1000 --steps 150 --batch_size 32

Budget: the same number of training images seen (steps x batch), not the same compute: FERAnno's steps run the
frozen VAE and UNet forward, so at equal images it costs ~17x the classifier's wall seconds on the CPU.

Measured (2 shared CPU cores, one job at a time, OMP_NUM_THREADS=1; FaceWorld standard seed 0 from
`python -m synfer_diffusers.data.faceworld --num-train 20000 --num-test 2000 --seed 0`; the embedded default's UNet):

    python benchmarks/eval_feranno_vs_classifier.py --faceworld runs/faceworld --output_dir runs/feranno_vs_resnet \
        --num_train 2000 --num_test 1000 --steps 100 --batch_size 32 --feranno_args --learning_rate 3e-4

| N = 2,000, 100 steps x 32 = 3,200 images | clean accuracy | noisy accuracy | macro-F1 (clean) | train s |
|---|---|---|---|---|
| ResNet 32-64-128 (stock recipe) | 41.0% | 35.8% | 0.349 | 15.4 |
| FERAnno (t = 1, prompt "", lr 3e-4 constant: the default's recipe) | 53.0% | 46.6% | 0.521 | 255.7 |

At the same images seen FERAnno is 12 points ahead; at the same wall time the classifier sees ~17x more images.
Not yet confirmed at the suite's scale (N = 20,000, 600 steps), nor are the other levers (timestep, prompt, features,
fusion size) measured; every FERAnno lever is a flag of `train_feranno.py`, passed through `--feranno_args`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from suite.common import run_example

from synfer_diffusers import FERAnnoPipeline
from synfer_diffusers.evaluation import predict
from synfer_diffusers.metrics import load_fer_metric
from synfer_diffusers.training import parse_config
from synfer_diffusers.training.fer_classifier import TrainFERConfig, load_splits, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "src" / "synfer_diffusers" / "default_model"
CLASSIFIER_RECIPE = ["--architecture", "resnet", "--hidden_sizes", "32", "64", "128", "--depths", "1", "1", "1"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faceworld", required=True, help="FaceWorld folder (train/test with label, clean_label)")
    parser.add_argument("--output_dir", required=True, help="Where both models and results.json are written")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="SynFERPipeline whose UNet FERAnno reads")
    parser.add_argument("--num_train", type=int, default=2000, help="First N train rows (both models)")
    parser.add_argument("--num_test", type=int, default=1000, help="First M test rows")
    parser.add_argument("--steps", type=int, default=150, help="Optimisation steps (both models)")
    parser.add_argument("--batch_size", type=int, default=32, help="Training batch size (both models)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--longer_classifier_steps", type=int, nargs="*", default=[],
        help="Further classifier rows trained for these step counts (same data and batch): what FERAnno's compute "
        "would buy the classifier",
    )  # fmt: skip
    parser.add_argument(
        "--longer_feranno_steps", type=int, nargs="*", default=[],
        help="Further FERAnno rows trained for these step counts (same data and batch): FERAnno at the classifier's "
        "longer budgets",
    )  # fmt: skip
    parser.add_argument(
        "--feranno_args", nargs=argparse.REMAINDER, default=[],
        help="Further train_feranno.py flags (the levers: --learning_rate, --timestep, --prompt, --hidden_dim, ...)",
    )  # fmt: skip
    return parser.parse_args(argv)


def score(predictions: torch.Tensor, clean: Sequence[int], noisy: Sequence[int], label_names: list[str]) -> dict:
    """Accuracy against clean and noisy labels and macro-F1 (clean) with the package's FER metric."""
    metric = load_fer_metric()
    on_clean = metric.compute(predictions=predictions.tolist(), references=list(clean), label_names=label_names)
    on_noisy = metric.compute(predictions=predictions.tolist(), references=list(noisy), label_names=label_names)
    return {"accuracy_clean": on_clean["accuracy"], "accuracy_noisy": on_noisy["accuracy"],
            "macro_f1": on_clean["macro_f1"]}  # fmt: skip


def run_feranno(args: argparse.Namespace, test: dict, steps: int) -> dict:
    output_dir = os.path.join(args.output_dir, "feranno" if steps == args.steps else f"feranno_{steps}")
    argv = [
        "--pretrained_model", args.model, "--dataset_name", args.faceworld, "--output_dir", output_dir,
        "--label_column", "label", "--max_train_samples", str(args.num_train), "--train_batch_size",
        str(args.batch_size), "--max_train_steps", str(steps), "--checkpointing_steps", str(steps),
        "--eval_split", "", "--seed", str(args.seed), *args.feranno_args,
    ]  # fmt: skip
    start = time.perf_counter()
    run_example("train_feranno", argv)
    seconds = time.perf_counter() - start
    pipe = FERAnnoPipeline.from_pretrained(output_dir)
    pipe.set_progress_bar_config(disable=True)
    images = torch.from_numpy(test["image"]).permute(0, 3, 1, 2).contiguous()  # (M, 3, 64, 64) uint8
    generator = torch.Generator().manual_seed(args.seed)  # the noise of `train_feranno.py --seed` at its batch 64
    predictions = pipe(images.float() / 255, batch_size=64, generator=generator).label_ids
    row = score(predictions, test["clean_label"], test["label"], pipe.head.labels)
    return {"name": f"FERAnno, {steps} steps", **row, "images_seen": steps * args.batch_size,
            "seconds": round(seconds, 1), "recipe": shlex.join(argv[:4] + argv[6:])}  # fmt: skip


def run_classifier(args: argparse.Namespace, splits: dict, steps: int) -> dict:
    argv = [
        "--dataset_name", args.faceworld, "--output_dir", os.path.join(args.output_dir, f"classifier_{steps}"),
        *CLASSIFIER_RECIPE, "--max_train_steps", str(steps), "--train_batch_size", str(args.batch_size),
        "--max_train_samples", str(args.num_train), "--max_test_samples", str(args.num_test), "--num_threads", "1",
        "--seed", str(args.seed),
    ]  # fmt: skip
    config = parse_config(TrainFERConfig, argv)
    start = time.perf_counter()
    model, _ = train(config, splits)
    seconds = time.perf_counter() - start
    predictions = predict(model, splits["test"]["image"]).argmax(-1)
    label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    row = score(predictions, splits["test"]["clean_label"], splits["test"]["label"], label_names)
    return {"name": f"ResNet 32-64-128 (stock), {steps} steps", **row, "images_seen": steps * args.batch_size,
            "seconds": round(seconds, 1), "recipe": " ".join(CLASSIFIER_RECIPE)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict:
    """Trains both models with the same data and budget and scores them; returns `{"rows": [...], "settings"}` and
    writes it to `output_dir/results.json`."""
    args = parse_args(argv)
    data_config = parse_config(
        TrainFERConfig,
        ["--dataset_name", args.faceworld, "--output_dir", args.output_dir, "--max_train_samples",
              str(args.num_train), "--max_test_samples", str(args.num_test)]
    )  # fmt: skip
    splits = load_splits(data_config)  # the same rows for both models
    rows = [run_classifier(args, splits, args.steps), run_feranno(args, splits["test"], args.steps)]
    rows += [run_classifier(args, splits, steps) for steps in args.longer_classifier_steps]
    rows += [run_feranno(args, splits["test"], steps) for steps in args.longer_feranno_steps]
    settings = {key: value for key, value in vars(args).items() if key != "feranno_args"}
    result = {"rows": rows, "settings": {**settings, "feranno_args": args.feranno_args}}
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    Path(args.output_dir, "results.json").write_text(json.dumps(result, indent=1))
    for row in rows:
        print(f"{row['name']}: clean {row['accuracy_clean']:.4f}, noisy {row['accuracy_noisy']:.4f}, "
              f"macro-F1 {row['macro_f1']:.4f}, {row['images_seen']} images, {row['seconds']} s")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
