"""AU controllability on FaceWorld (issue 27): per-AU error of generated vs real faces, and AU sweeps.

- **Per-AU error**: the independent AU regressor's absolute error per AU on real FaceWorld test faces (against their
  true AUs) and on generated "+ AUs" images (against the requested AUs: EMFACS prototypes with seeded jitter, the
  same seeds and expressions as table 1), and their ratio. Per AU also the *intensity slope*: the least-squares slope
  of the estimate on the requested (or true) intensity over the images where that AU is active (>= 1): 1 follows
  intensity exactly, 0 draws one intensity whatever is asked; and the *scatter*, the standard deviation of the
  estimates about that line (images asked for the same intensity showing different ones). `--real-requests`
  measures the same on "+ AUs" images whose AUs are rows of the FaceWorld train split with the target label
  (`synfer generate`'s `dataset` AU policy): intensities over the whole range the generator was trained on,
  co-activations as in its training world.
- **Sweeps**: for each AU of the model's space, its requested intensity raised over `--levels` with every other AU at
  0, no expression word, at fixed seeds (`--sweep-seeds`). Per AU: Spearman's rank correlation between the requested
  and the regressor's estimate of that AU over all (level, seed) images, and the *leak*: the mean absolute change of
  the other AUs' estimates between the lowest and the highest level. A strip per AU (one seed, every level) goes to
  `--plot`.

The regressor was trained on real FaceWorld only and is never used in generation. There is no occurrence-space model
on FaceWorld (DISFA-12 intensities only), so occurrence sweeps are not measured.

    python benchmarks/eval_au_control.py --model src/synfer_diffusers/default_model \
        --au-regressor benchmarks/measurement_models/au_regressor --faceworld runs/faceworld --json runs/au_control.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import AutoModelForImageClassification

from synfer_diffusers import EXPRESSIONS, SynFERPipeline
from synfer_diffusers.evaluation import (
    evaluate_expression_classifier,
    images_to_tensor,
    predict,
)
from synfer_diffusers.generate import AUSource

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from eval_faceworld_generation import generate  # noqa: E402


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN where either side is constant."""

    def ranks(values: np.ndarray) -> np.ndarray:
        order = np.argsort(values, kind="stable")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values), dtype=float)
        for value in np.unique(values):  # ties share their mean rank
            ranked[values == value] = ranked[values == value].mean()
        return ranked

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def intensity_fit(requested: np.ndarray, estimated: np.ndarray, active: float = 1.0) -> tuple[float, float]:
    """`(slope, scatter)` of the least-squares line of `estimated` on `requested` over the entries with
    `requested >= active`: how far the estimate rises per unit requested, and the standard deviation of the estimates
    about that line (what a calibration of intensities could not remove). NaN with fewer than 3 such entries or a
    constant request."""
    mask = np.asarray(requested) >= active
    x, y = np.asarray(requested, float)[mask], np.asarray(estimated, float)[mask]
    if len(x) < 3 or x.std() == 0:
        return float("nan"), float("nan")
    slope = ((x - x.mean()) * (y - y.mean())).mean() / x.var()
    residual = y - y.mean() - slope * (x - x.mean())
    return float(slope), float(residual.std())


@torch.no_grad()
def sweep(pipe: SynFERPipeline, regressor, levels, seeds, steps, guidance_scale, **kwargs) -> dict:
    """Each AU raised over `levels` (others at 0) at `seeds`; the regressor's estimates and per-AU statistics."""
    names = list(pipe.au_space.names)
    pipe.set_progress_bar_config(disable=True)
    results, strips = {}, {}
    for a, name in enumerate(names):
        requested, estimated, images = [], [], []
        for level in levels:
            vectors = torch.zeros(len(seeds), len(names))
            vectors[:, a] = level
            out = pipe(prompt=["a photo of a face"] * len(seeds), action_units=vectors,
                       generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=steps,
                       guidance_scale=guidance_scale, output_type="pt", **kwargs)  # fmt: skip
            batch = out.images.float().clamp(0, 1)
            estimate = predict(regressor, batch).clamp(0, 5).numpy()  # (S, num_aus)
            requested += [level] * len(seeds)
            estimated.append(estimate)
            images.append(batch[0])
        estimated = np.concatenate(estimated)  # (L * S, num_aus), level-major
        others = [i for i in range(len(names)) if i != a]
        low, high = estimated[: len(seeds)], estimated[-len(seeds) :]
        results[name] = {
            "spearman": spearman(np.asarray(requested), estimated[:, a]),
            "estimate_by_level": [float(estimated[i * len(seeds) : (i + 1) * len(seeds), a].mean())
                                  for i in range(len(levels))],  # fmt: skip
            "leak": float(np.abs(high[:, others] - low[:, others]).mean()),
            "largest_leak": names[others[int(np.abs(high[:, others] - low[:, others]).mean(0).argmax())]],
        }
        strips[name] = torch.stack(images)  # (L, 3, H, W)
    values = [r["spearman"] for r in results.values()]
    summary = {"mean_spearman": float(np.nanmean(values)), "min_spearman": float(np.nanmin(values)),
               "min_spearman_au": names[int(np.nanargmin(values))],
               "mean_leak": float(np.mean([r["leak"] for r in results.values()]))}  # fmt: skip
    return {"levels": list(levels), "seeds": list(seeds), "per_au": results, "summary": summary}, strips


def _per_au(regressor, images, aus: np.ndarray) -> dict[str, dict]:
    """The regressor's absolute error and intensity fit (slope, scatter) per AU on `images` against `aus`
    `(N, num_aus)`."""
    estimated = predict(regressor, images).clamp(0, 5).numpy()  # (N, num_aus)
    error = np.abs(estimated - aus).mean(axis=0)
    names = list(regressor.config.au_names)
    fits = [intensity_fit(aus[:, k], estimated[:, k]) for k in range(len(names))]
    return {name: {"mae": float(error[k]), "slope": fits[k][0], "scatter": fits[k][1]}
            for k, name in enumerate(names)}  # fmt: skip


def per_au_error(
    pipe, regressor, real: dict, per_expression: int, steps: int, guidance_scale: float, judges=(),
    au_source: AUSource | None = None, **kwargs,
) -> dict:
    """Per-AU absolute error and intensity fit of the regressor on real test faces (`real`: `_per_au` of them)
    and on "+ AUs" images (pipeline arguments `kwargs`; AUs drawn from `au_source` if given), their ratio, and each
    of `judges`' expression accuracy on those images."""
    images, targets, requested, _ = generate(pipe, per_expression, steps, guidance_scale, batch_size=35,
                                             au_source=au_source, **kwargs)  # fmt: skip
    generated = _per_au(regressor, images, requested.numpy())
    labels = [EXPRESSIONS.index(t) for t in targets]
    real_mae = float(np.mean([r["mae"] for r in real.values()]))
    generated_mae = float(np.mean([g["mae"] for g in generated.values()]))
    return {
        "expression_accuracy": [evaluate_expression_classifier(j, images, labels)["accuracy"] for j in judges],
        "real_mae": real_mae, "generated_mae": generated_mae, "ratio": generated_mae / real_mae,
        "per_au": {name: {"real": real[name]["mae"], "generated": g["mae"],
                          "ratio": g["mae"] / max(real[name]["mae"], 1e-6),
                          "real_slope": real[name]["slope"], "generated_slope": g["slope"],
                          "real_scatter": real[name]["scatter"], "generated_scatter": g["scatter"]}
                   for name, g in generated.items()},
    }  # fmt: skip


def plot_strips(strips: dict[str, torch.Tensor], levels, path: str) -> None:
    """One row per AU: its sweep at the first seed, lowest to highest level."""
    import PIL.Image
    import PIL.ImageDraw

    names = list(strips)
    height, width = strips[names[0]].shape[-2:]
    label = 48
    grid = PIL.Image.new("RGB", (label + width * len(levels), height * len(names)), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for row, name in enumerate(names):
        draw.text((2, row * height + height // 2 - 5), name, fill="black")
        for column, image in enumerate(strips[name]):
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            grid.paste(PIL.Image.fromarray(array), (label + column * width, row * height))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="AU pipeline folder")
    parser.add_argument("--au-regressor", required=True)
    parser.add_argument("--faceworld", required=True, help="FaceWorld folder (its test split: the real reference)")
    parser.add_argument("--per-expression", type=int, default=30, help="per-AU error: images per expression")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    parser.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--pipeline-kwargs", type=json.loads, default={},
                        help="more pipeline arguments as JSON, e.g. '{\"au_scale\": 1.5}'")  # fmt: skip
    parser.add_argument("--judge", nargs="*", default=[], help="expression judges scoring the + AUs images")
    parser.add_argument("--real-requests", action="store_true",
                        help="also measure + AUs images whose AUs are FaceWorld train rows of the target label")
    parser.add_argument("--plot", default=None, help="PNG of the sweep strips")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    regressor = AutoModelForImageClassification.from_pretrained(args.au_regressor).eval()
    pipe = SynFERPipeline.from_pretrained(args.model)
    judges = [AutoModelForImageClassification.from_pretrained(path).eval() for path in args.judge]
    test = datasets.load_dataset(args.faceworld, split="test").with_format("numpy")
    real = _per_au(regressor, images_to_tensor(test["image"]), np.asarray(test["action_units"]))
    measure = functools.partial(per_au_error, pipe, regressor, real, args.per_expression, args.steps,
                                args.guidance_scale, judges, **args.pipeline_kwargs)  # fmt: skip
    result = {"args": vars(args), "per_au_error": measure()}
    if args.real_requests:
        result["per_au_error_real_requests"] = measure(au_source=AUSource.from_dataset(args.faceworld, pipe.au_space))
    result["sweeps"], strips = sweep(pipe, regressor, args.levels, args.sweep_seeds, args.steps,
                                     args.guidance_scale, **args.pipeline_kwargs)  # fmt: skip
    if args.plot:
        plot_strips(strips, args.levels, args.plot)
    print(f"{'AU':6} {'real MAE':>9} {'gen MAE':>8} {'ratio':>6} {'slope':>11} {'spearman':>9} {'leak':>6}")
    for name, error in result["per_au_error"]["per_au"].items():
        s = result["sweeps"]["per_au"][name]
        print(f"{name:6} {error['real']:9.3f} {error['generated']:8.3f} {error['ratio']:6.2f} "
              f"{error['real_slope']:5.2f}/{error['generated_slope']:5.2f} {s['spearman']:9.3f} "
              f"{s['leak']:6.3f}")  # fmt: skip
    print(json.dumps(result["sweeps"]["summary"]), f"ratio {result['per_au_error']['ratio']:.2f}",
          "expression accuracy", result["per_au_error"]["expression_accuracy"])  # fmt: skip
    if args.real_requests:
        print(f"real-row requests: ratio {result['per_au_error_real_requests']['ratio']:.2f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
