"""Expression editing on FaceWorld against the ground truth: the same identity and nuisances rendered with the
target expression's AUs (`render_faces` of the source's attributes with the target AUs).

Sources are FaceWorld faces (their own sampled expression and AUs); each is edited into every expression's EMFACS
prototype (intensity 3, no jitter). Rows: the baseline, plain generation with SynFER's layout initialisation from
the source (`layout_image`, full inversion under the null condition), and `SynFERPipeline.edit` at each requested
`edit_strength` and `guidance_scale`. Columns: mean absolute pixel error (0-1 scale) to the ground-truth render
(identity and expression together), to the source (how much is kept; the unedited source's distance to the ground
truth, the first row, is what the expression change alone costs), and, with `--judge` / `--au-regressor`
(classifiers trained on real FaceWorld only, as in `eval_faceworld_generation.py`), expression accuracy of the edits
and AU error against the target AUs. Prompts are the default description for source and target.

    python benchmarks/eval_faceworld_editing.py --num-faces 8 --steps 25 --strengths 0.6 0.8 1.0 \
        --guidance-scales 1 3 --json runs/eval/editing.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from synfer_diffusers import EXPRESSIONS, SynFERPipeline, expression_prototype
from synfer_diffusers.data.faceworld import render_faces, sample_faceworld_attributes
from synfer_diffusers.generate import DEFAULT_MODEL_DIR


@dataclass
class Row:
    name: str
    num_images: int
    error_to_ground_truth: float
    error_to_source: float
    expression_accuracy: float | None
    au_mae: float | None
    seconds: float


def edit_tasks(num_faces: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Sources `(F, H, W, 3)`, their AUs `(F, 12)`, ground truths `(F * 7, H, W, 3)` (face-major), target AUs
    `(F * 7, 12)` and target names."""
    attributes = sample_faceworld_attributes(num_faces, seed)
    sources = render_faces(attributes)
    targets = np.stack([list(expression_prototype(name).values()) for name in EXPRESSIONS]).astype(np.float32)
    repeated = {key: np.repeat(value, len(EXPRESSIONS), axis=0) for key, value in attributes.items()}
    repeated["action_units"] = np.tile(targets, (num_faces, 1))
    names = list(EXPRESSIONS) * num_faces
    return sources, attributes["action_units"], render_faces(repeated), repeated["action_units"], names


def run_method(pipe: SynFERPipeline, sources: np.ndarray, source_aus: np.ndarray, names: list[str], target_aus,
               steps: int, strength: float | None, guidance_scale: float) -> torch.Tensor:  # fmt: skip
    """Images `(F * 7, 3, H, W)` in [0, 1]: edits (`strength`), or layout-initialised generation (`None`)."""
    outputs = []
    per_face = len(EXPRESSIONS)
    for f, source in enumerate(sources):
        image = torch.from_numpy(source).permute(2, 0, 1).float()[None] / 255  # (1, 3, H, W)
        common = {"num_inference_steps": steps, "guidance_scale": guidance_scale, "output_type": "pt",
                  "generator": [torch.Generator().manual_seed(f * per_face + e) for e in range(per_face)]}  # fmt: skip
        rows = torch.from_numpy(target_aus[f * per_face : (f + 1) * per_face])
        expressions = names[f * per_face : (f + 1) * per_face]
        if strength is None:
            out = pipe(expression=expressions, action_units=rows, layout_image=[image[0]] * per_face, **common)
        else:
            out = pipe.edit([image[0]] * per_face, target_expression=expressions, target_action_units=rows,
                            source_action_units=torch.from_numpy(source_aus[f]), edit_strength=strength, **common)  # fmt: skip
        outputs.append(out.images.float().clamp(0, 1))
    return torch.cat(outputs)


def score(name, images, sources, truths, names, target_aus, judge, regressor, seconds) -> Row:
    truth = torch.from_numpy(truths).permute(0, 3, 1, 2).float() / 255
    source = torch.from_numpy(sources).permute(0, 3, 1, 2).float().repeat_interleave(len(EXPRESSIONS), 0) / 255
    accuracy = au_mae = None
    if judge is not None or regressor is not None:
        from eval_faceworld_generation import load_example

        fer = load_example("train_fer_classifier")
        if judge is not None:
            labels = [EXPRESSIONS.index(n) for n in names]
            accuracy = fer.evaluate_expression_classifier(judge, images, labels)["accuracy"]
        if regressor is not None:
            au_mae = fer.evaluate_au_regressor(regressor, images, target_aus)["mae"]
    return Row(name, len(images), (images - truth).abs().mean().item(), (images - source).abs().mean().item(),
               accuracy, au_mae, seconds)  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="SynFERPipeline folder (default: embedded)")
    parser.add_argument("--num-faces", type=int, default=8)
    parser.add_argument("--seed", type=int, default=12345, help="FaceWorld seed of the source faces")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.6, 0.8, 1.0])
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--judge", default=None, help="expression classifier folder (real FaceWorld only)")
    parser.add_argument("--au-regressor", default=None, help="AU regressor folder (real FaceWorld only)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from transformers import AutoModelForImageClassification

    judge = AutoModelForImageClassification.from_pretrained(args.judge).eval() if args.judge else None
    regressor = None
    if args.au_regressor:
        regressor = AutoModelForImageClassification.from_pretrained(args.au_regressor).eval()
    pipe = SynFERPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    sources, source_aus, truths, target_aus, names = edit_tasks(args.num_faces, args.seed)
    methods = [(f"layout init (baseline), cfg {g:g}", None, g) for g in args.guidance_scales]
    methods += [(f"edit, strength {s:g}, cfg {g:g}", s, g) for s in args.strengths for g in args.guidance_scales]
    unedited = torch.from_numpy(sources).permute(0, 3, 1, 2).float().repeat_interleave(len(EXPRESSIONS), 0) / 255
    rows = [score("source, unedited (reference)", unedited, sources, truths, names, target_aus, judge, regressor, 0.0)]
    for name, strength, guidance in methods:
        started = time.perf_counter()
        images = run_method(pipe, sources, source_aus, names, target_aus, args.steps, strength, guidance)
        rows.append(score(name, images, sources, truths, names, target_aus, judge, regressor,
                          time.perf_counter() - started))  # fmt: skip
        print(json.dumps(asdict(rows[-1])), flush=True)
    print("| method | images | L1 to ground truth | L1 to source | expression acc. | AU MAE | s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        acc = f"{row.expression_accuracy:.3f}" if row.expression_accuracy is not None else "-"
        mae = f"{row.au_mae:.3f}" if row.au_mae is not None else "-"
        print(f"| {row.name} | {row.num_images} | {row.error_to_ground_truth:.4f} | {row.error_to_source:.4f} | "
              f"{acc} | {mae} | {row.seconds:.1f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump([asdict(row) for row in rows], file, indent=2)
    return [asdict(row) for row in rows]


if __name__ == "__main__":
    main()
