"""Generation quality on FaceWorld (paper Table 1 / ablation): expression accuracy by the independent judge,
AU error by the independent AU regressor (requested vs estimated), and Fréchet distance in the judge's feature
space against real FaceWorld test faces.

Rows (each optional): `text only` (a stage-A pipeline, plain UNet: the expression reaches it through the enriched
prompt; `--text-only base` takes the `--model` pipeline's own base UNet, which is the stage-A model when stage B
froze it), `+ AUs` (the AU pipeline), `+ AUs + SG` (the same with semantic guidance by its guide), and `real`
(real test faces: the reference numbers of the judge and the regressor). `--pipeline-kwargs` (e.g.
'{"au_scale": 1.5}') go to every AU row's pipeline call and into its name.

    python benchmarks/eval_faceworld_generation.py --text-only runs/stage_a --model src/synfer_diffusers/default_model \
        --guide runs/guide --semantic-guidance-scale 1.0 --judge runs/judge --au-regressor runs/au_regressor --faceworld runs/faceworld \
        --per-expression 30 --json runs/eval/generation.json

Requested AUs of every generated image are the ones the AU pipeline reports (EMFACS prototypes with seeded
jitter); the text-only row uses the same seeds and expressions, so it is scored against the same AUs. The judge and the regressor were trained on real
FaceWorld only and are never used in generation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from synfer_diffusers import EXPRESSIONS, FERAnnoPipeline, SynFERPipeline
from synfer_diffusers.evaluation import (
    evaluate_au_regressor,
    evaluate_expression_classifier,
    images_to_tensor,
    predict,
    to_pixel_values,
)
from synfer_diffusers.generate import DTYPES, AUSource, default_labeler, torch_dtype
from synfer_diffusers.metrics.frechet import frechet_distance


@dataclass
class Row:
    name: str
    num_images: int
    expression_accuracy: float
    au_mae: float
    frechet_distance: float
    seconds: float
    second_judge_accuracy: float | None = None  # expression accuracy by `--second-judge`, when given


@torch.no_grad()
def judge_features(judge, images: torch.Tensor) -> torch.Tensor:  # (N, D) pooled last hidden state
    """The judge's penultimate features (globally pooled last stage), for the Fréchet distance."""
    feats = []
    for batch in images.split(256):
        hidden = judge(pixel_values=to_pixel_values(batch), output_hidden_states=True).hidden_states[-1]
        feats.append(hidden.mean(dim=(2, 3)))
    return torch.cat(feats)


def generate(
    pipe: SynFERPipeline,
    per_expression: int,
    steps: int,
    guidance_scale: float,
    batch_size: int,
    au_source: AUSource | None = None,
    **kwargs,
) -> tuple[torch.Tensor, list[str], torch.Tensor | None, torch.Tensor | None]:
    """`per_expression` images for each expression (seeds 0..n-1 per expression); returns images `(N, 3, H, W)`
    in [0, 1], target names, requested AUs `(N, 12)` and in-loop FERAnno probabilities `(N, 7)` (or None).

    Each image's AUs are the pipeline's (the EMFACS prototype with jitter from the image's seed) or, with
    `au_source`, a row of it with the target label drawn by the image's seed (`synfer generate`'s `dataset` policy).
    """
    pipe.set_progress_bar_config(disable=True)
    images, targets, aus, feranno = [], [], [], []
    for e, expression in enumerate(EXPRESSIONS):
        for start in range(0, per_expression, batch_size):
            seeds = [1000 * e + s for s in range(start, min(start + batch_size, per_expression))]
            if au_source is not None:
                rows = [au_source.draw(expression, np.random.default_rng(s)) for s in seeds]
                kwargs = {**kwargs, "action_units": torch.from_numpy(np.stack(rows))}  # (n, num_aus)
            out = pipe(
                expression=[expression] * len(seeds), prompt=["a photo of a face"] * len(seeds),
                generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=steps,
                guidance_scale=guidance_scale, output_type="pt", **kwargs,
            )  # fmt: skip
            images.append(out.images.float().clamp(0, 1))
            feranno.append(out.feranno_probabilities)
            targets += out.expressions
            aus.append(
                torch.tensor([[d[name] for name in d] for d in out.action_units]) if out.action_units[0] else None
            )
    requested = torch.cat(aus) if all(a is not None for a in aus) else None
    probabilities = torch.cat(feranno) if all(p is not None for p in feranno) else None
    return torch.cat(images), targets, requested, probabilities


def agreement_with_judge(pipe, judge, images, targets, feranno, guided: bool) -> dict[str, float]:
    """How often the generation target, FERAnno, the pipeline's guide (if any) and the voted label (the paper's rule
    over the pipeline's own voters: FERAnno, the guide where unguided, the target; without a checkpoint's shipped
    voters) equal the judge's label on the generated images `(N, 3, H, W)`."""
    judged = [EXPRESSIONS[i] for i in predict(judge, images).argmax(dim=1).tolist()]
    voter = default_labeler(pipe, guided=guided).voter
    pil_images = pipe.image_processor.numpy_to_pil(pipe.image_processor.pt_to_numpy(images))
    return voter(pil_images, probabilities={"feranno": feranno}, targets=targets).agreement_with(judged)


def score(name, images, targets, aus, judges, regressor, real_features, seconds) -> Row:
    """A row's numbers; `judges` = (judge, second judge or None)."""
    labels = [EXPRESSIONS.index(t) for t in targets]
    judge, second = judges
    accuracy = evaluate_expression_classifier(judge, images, labels)["accuracy"]
    second_accuracy = (
        None if second is None else evaluate_expression_classifier(second, images, labels)["accuracy"]
    )
    au_mae = evaluate_au_regressor(regressor, images, aus.numpy())["mae"]
    distance = frechet_distance(judge_features(judge, images), real_features)
    return Row(name, len(images), accuracy, au_mae, distance, seconds, second_accuracy)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="AU pipeline folder (+ AUs and + AUs + SG rows)")
    parser.add_argument(
        "--text-only", default=None, help="stage-A pipeline folder, or `base`: the model's base UNet (text-only row)"
    )
    parser.add_argument("--guide", default=None, help="guide classifier folder for the SG row (else the pipeline's)")
    parser.add_argument(
        "--feranno", default=None, help="FERAnnoPipeline folder: in-loop labels scored against the judge"
    )
    parser.add_argument("--judge", default="runs/judge")
    parser.add_argument(
        "--second-judge", default=None, help="a judge of another model family: a second expression accuracy per row"
    )
    parser.add_argument("--au-regressor", default="runs/au_regressor")
    parser.add_argument("--faceworld", default="runs/faceworld")
    parser.add_argument("--per-expression", type=int, default=30)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--semantic-guidance-scale", type=float, default=0.0, help="0: no SG row")
    parser.add_argument("--batch-size", type=int, default=35)
    parser.add_argument("--pipeline-kwargs", type=json.loads, default={},
                        help="more arguments of the AU rows' pipeline calls as JSON, e.g. '{\"au_scale\": 1.5}'")  # fmt: skip
    parser.add_argument(
        "--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32"],
        help="the AU rows once per dtype (rows of other dtypes than float32 are named with it), same seeds",
    )  # fmt: skip
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import datasets

    judge = AutoModelForImageClassification.from_pretrained(args.judge).eval()
    second = AutoModelForImageClassification.from_pretrained(args.second_judge).eval() if args.second_judge else None
    judges = (judge, second)
    regressor = AutoModelForImageClassification.from_pretrained(args.au_regressor).eval()
    test = datasets.load_dataset(args.faceworld, split="test").with_format("numpy")
    real_images = images_to_tensor(test["image"])
    real_features = judge_features(judge, real_images)
    real_train = images_to_tensor(
        datasets.load_dataset(args.faceworld, split="train")
        .select(range(len(real_images)))
        .with_format("numpy")["image"]
    )

    real = score("real test faces (judge reference; FD vs real train)", real_images,
                 [EXPRESSIONS[i] for i in np.asarray(test["clean_label"])], torch.from_numpy(np.asarray(test["action_units"])), judges,
                 regressor, judge_features(judge, real_train), 0.0)  # fmt: skip
    rows = [real]
    pipe = SynFERPipeline.from_pretrained(args.model)
    if args.guide:
        pipe.register_modules(
            guidance_classifier=AutoModelForImageClassification.from_pretrained(args.guide).eval(),
            guidance_image_processor=AutoImageProcessor.from_pretrained(args.guide),
        )
    if args.feranno:
        pipe.register_modules(feranno_head=FERAnnoPipeline.from_pretrained(args.feranno).head.eval())
    variants = [("+ AUs", {})]
    if args.semantic_guidance_scale > 0:
        variants.append(("+ AUs + SG", {"semantic_guidance_scale": args.semantic_guidance_scale}))
    if args.pipeline_kwargs:
        suffix = " (" + ", ".join(f"{k}={v}" for k, v in args.pipeline_kwargs.items()) + ")"
        variants = [(name + suffix, {**kwargs, **args.pipeline_kwargs}) for name, kwargs in variants]
    requested_aus, label_agreement = None, {}
    for dtype_name, (name, kwargs) in itertools.product(args.dtypes, variants):
        name = name if dtype_name == "float32" else f"{name} [{dtype_name}]"
        start = time.perf_counter()
        images, targets, requested_aus, feranno = generate(
            pipe.to(dtype=torch_dtype(dtype_name)), args.per_expression, args.steps, args.guidance_scale,
            args.batch_size, **kwargs,
        )  # fmt: skip
        if feranno is not None:
            guided = kwargs.get("semantic_guidance_scale", 0) > 0
            label_agreement[name] = agreement_with_judge(pipe, judge, images, targets, feranno, guided)
        seconds = time.perf_counter() - start
        rows.append(score(name, images, targets, requested_aus, judges, regressor, real_features, seconds))
    if args.text_only:
        # Same seeds and expressions as the AU rows, so the AUs those rows requested are what this image should show.
        start = time.perf_counter()
        pipe.to(dtype=torch.float32)
        text_pipe = (
            SynFERPipeline(**{**pipe.base_components, "unet": pipe.unet.to_base_unet()})
            if args.text_only == "base"
            else SynFERPipeline.from_pretrained(args.text_only)
        )
        images, targets, _, _ = generate(
            text_pipe, args.per_expression, args.steps, args.guidance_scale, args.batch_size
        )
        seconds = time.perf_counter() - start
        rows.insert(
            1, score("text only", images, targets, requested_aus, judges, regressor, real_features, seconds)
        )

    print(f"{'row':55} {'n':>5} {'expr acc':>9} {'AU MAE':>7} {'FD':>8} {'s':>7}")
    for row in rows:
        print(f"{row.name:55} {row.num_images:5d} {row.expression_accuracy:9.3f} {row.au_mae:7.3f} "
              f"{row.frechet_distance:8.2f} {row.seconds:7.1f}")  # fmt: skip
    for name, rates in label_agreement.items():
        print(f"labels agreeing with the judge ({name}): " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    result = {"args": vars(args), "rows": [asdict(r) for r in rows], "label_agreement_with_judge": label_agreement}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
