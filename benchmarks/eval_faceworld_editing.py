"""Expression editing on FaceWorld against the ground truth: the same identity and nuisances rendered with the
target expression's AUs (`render_faces` of the source's attributes with the target AUs).

Sources are FaceWorld faces (their own sampled expression and AUs); each is edited into every expression's EMFACS
prototype (intensity 3, no jitter). Rows:

- references: the unedited source, the ground-truth render itself (what the measurement models score on a perfect
  edit) and another face (the next source: what a different person scores);
- plain generation with the same targets and seeds, no source (the expression accuracy an edit should match);
- the baseline, plain generation with SynFER's layout initialisation from the source (`layout_image`, full inversion
  under the null condition);
- `SynFERPipeline.edit` at each `--strengths` x `--guidance-scales` x `--inversions` (the source inverted under its
  own condition, `source`, or the null one, `null`).

Columns: mean absolute pixel error (0-1 scale) to the ground-truth render and to the source; with `--judge` /
`--au-regressor` (classifiers trained on real FaceWorld only, as in `eval_faceworld_generation.py`) the judge's
expression accuracy against the target, the mean L2 distance of judge features to the ground truth's and the AU
error against the target AUs; with `--identity-classifier` (`faceworld_identity.py`, trained on real FaceWorld
identities when the folder is empty and `--faceworld` is given) the share of the source's identity attributes read
off the result, the share of results with all of them right, and the cosine similarity of identity features to the
source. Prompts are the default description for source and target. `--semantic-guidance-scales` adds rows guided toward the
target expression by the model's guide (plain, layout and edits), `--au-scales` edits at other AU-branch weights, and
`--rows` runs only some kinds of rows (with `--cache-dir`, runs of different settings add up to one table).

    python benchmarks/eval_faceworld_editing.py --num-faces 10 --steps 25 --strengths 0.8 1.0 --guidance-scales 1 3 \
        --judge runs/judge --au-regressor runs/au_regressor --identity-classifier runs/identity_classifier \
        --faceworld runs/faceworld --json runs/eval/editing.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from eval_faceworld_generation import judge_features
from faceworld_identity import encode_attributes, identity_scores, load_identity_classifier

from synfer_diffusers import EXPRESSIONS, SynFERPipeline, expression_prototype
from synfer_diffusers.data.faceworld import render_faces, sample_faceworld_attributes
from synfer_diffusers.evaluation import evaluate_au_regressor, evaluate_expression_classifier
from synfer_diffusers.generate import DEFAULT_MODEL_DIR
from synfer_diffusers.pipelines.synfer.options import joint_au_guidance_scale

NUM_EXPRESSIONS = len(EXPRESSIONS)


@dataclass
class Row:
    name: str
    num_images: int
    error_to_ground_truth: float
    error_to_source: float
    judge_distance_to_ground_truth: float | None
    expression_accuracy: float | None
    au_mae: float | None
    identity_attribute_accuracy: float | None
    identity_all_attributes: float | None
    identity_cosine: float | None
    seconds: float


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "plain", "layout" or "edit"
    guidance_scale: float
    strength: float | None = None  # edits
    inversion: str = "source"  # edits: the condition the source is inverted under
    semantic_guidance_scale: float = 0.0  # toward the target expression (the pipeline's guide)
    au_scale: float = 1.0  # edits: weight of the AU cross-attention branch
    au_guidance_scale: float | None = None  # edits: the AU condition's own guidance scale (None: with the text)
    mutual_self_attention: tuple[float, float, int] | None = None  # edits: (window start, end, first layer)


@dataclass
class EditTasks:
    """`F` source faces, each edited into the 7 expressions (face-major: image `i` is face `i // 7`)."""

    attributes: dict[str, np.ndarray]  # the sources' FaceWorld attributes, `F` rows
    sources: torch.Tensor  # (F, 3, H, W) in [0, 1]
    source_aus: torch.Tensor  # (F, 12)
    truths: torch.Tensor  # (F * 7, 3, H, W) in [0, 1]: the source rendered with the target AUs
    target_aus: torch.Tensor  # (F * 7, 12)
    names: list[str]  # (F * 7,) target expressions

    @property
    def repeated_sources(self) -> torch.Tensor:  # (F * 7, 3, H, W)
        return self.sources.repeat_interleave(NUM_EXPRESSIONS, 0)


def _to_tensor(images: np.ndarray) -> torch.Tensor:  # uint8 (N, H, W, 3) -> (N, 3, H, W) in [0, 1]
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def edit_tasks(num_faces: int, seed: int) -> EditTasks:
    attributes = sample_faceworld_attributes(num_faces, seed)
    targets = np.stack([list(expression_prototype(name).values()) for name in EXPRESSIONS]).astype(np.float32)
    repeated = {key: np.repeat(value, NUM_EXPRESSIONS, axis=0) for key, value in attributes.items()}
    repeated["action_units"] = np.tile(targets, (num_faces, 1))
    return EditTasks(
        attributes, _to_tensor(render_faces(attributes)), torch.from_numpy(attributes["action_units"]),
        _to_tensor(render_faces(repeated)), torch.from_numpy(repeated["action_units"]), list(EXPRESSIONS) * num_faces,
    )  # fmt: skip


def methods(
    strengths: list[float],
    guidance_scales: list[float],
    inversions: list[str],
    semantic_guidance_scales: list[float] = (0.0,),
    au_scales: list[float] = (1.0,),
    au_guidance_scales: list[float | None] = (None,),
    mutual_self_attention: list[tuple[float, float, int] | None] = (None,),
) -> list[Method]:
    """Plain generation and the layout baseline at each CFG x semantic-guidance scale, and edits at each strength x
    CFG x inversion x semantic-guidance scale x AU scale x AU guidance x mutual self-attention; settings at their
    defaults (no guidance, AU scale 1, source inversion, no AU guidance or mutual self-attention) leave the row's name
    as it was before they existed, so cached rows stay valid."""
    rows = []
    for sg in semantic_guidance_scales:
        sg_name = f", sg {sg:g}" if sg else ""
        rows += [Method(f"plain generation, cfg {g:g}{sg_name}", "plain", g, semantic_guidance_scale=sg)
                 for g in guidance_scales]  # fmt: skip
        rows += [Method(f"layout init (baseline), cfg {g:g}{sg_name}", "layout", g, semantic_guidance_scale=sg)
                 for g in guidance_scales]  # fmt: skip
    for inversion in inversions:
        suffix = "" if inversion == "source" else f", {inversion} inversion"
        for sg in semantic_guidance_scales:
            for au, au_g, msa in itertools.product(au_scales, au_guidance_scales, mutual_self_attention):
                extra = (f", sg {sg:g}" if sg else "") + (f", au_scale {au:g}" if au != 1 else "")
                extra += (f", au guidance {au_g:g}" if au_g is not None else "") + (
                    f", mutual self-attention {msa[0]:g}-{msa[1]:g} from layer {msa[2]}" if msa else "")  # fmt: skip
                rows += [Method(f"edit, strength {s:g}, cfg {g:g}{suffix}{extra}", "edit", g, s, inversion, sg, au,
                                au_g, msa) for s in strengths for g in guidance_scales]  # fmt: skip
    return rows


def optional_float(text: str) -> float | None:
    """`--au-guidance-scales` values: a number, or `none` (the AU condition guided with the text)."""
    return None if text == "none" else float(text)


def mutual_self_attention_setting(text: str) -> tuple[float, float, int] | None:
    """`--mutual-self-attention` values: `START:END:LAYER` (the window of shared steps and the first shared layer of
    `SynFERPipeline.edit`'s mutual self-attention), or `off`."""
    if text == "off":
        return None
    start, end, layer = text.split(":")
    return float(start), float(end), int(layer)


def run_method(pipe: SynFERPipeline, tasks: EditTasks, method: Method, steps: int, batch_size: int) -> torch.Tensor:
    """Images `(F * 7, 3, H, W)` in [0, 1]; image `i` uses the seed `i` whatever the batch size."""
    outputs = []
    for start in range(0, len(tasks.names), batch_size):
        index = range(start, min(start + batch_size, len(tasks.names)))
        faces = [i // NUM_EXPRESSIONS for i in index]
        common = {
            "num_inference_steps": steps, "guidance_scale": method.guidance_scale, "output_type": "pt",
            "semantic_guidance_scale": method.semantic_guidance_scale,
            "generator": [torch.Generator().manual_seed(i) for i in index],
        }  # fmt: skip
        expressions = [tasks.names[i] for i in index]
        target_aus = tasks.target_aus[list(index)]
        if method.kind == "edit":
            out = pipe.edit(
                [tasks.sources[f] for f in faces], target_expression=expressions, target_action_units=target_aus,
                source_action_units=tasks.source_aus[faces], edit_strength=method.strength,
                inversion_condition=method.inversion, au_scale=method.au_scale,
                au_guidance_scale=edit_au_guidance(method), **mutual_self_attention_kwargs(method), **common,
            )  # fmt: skip
        else:
            layout = {"layout_image": [tasks.sources[f] for f in faces]} if method.kind == "layout" else {}
            out = pipe(expression=expressions, action_units=target_aus, **layout, **common)
        outputs.append(out.images.float().clamp(0, 1))
    return torch.cat(outputs)


def edit_au_guidance(method: Method) -> float | None:
    """The `SynFERPipeline.edit` `au_guidance_scale` of the method: its own, or the AUs guided with the text when it
    has none (explicitly: the edit's default is AU guidance under CFG)."""
    if method.au_guidance_scale is None:
        return joint_au_guidance_scale(method.guidance_scale)
    return method.au_guidance_scale


def mutual_self_attention_kwargs(method: Method) -> dict:
    """The `SynFERPipeline.edit` arguments of the method's mutual self-attention (explicitly off when it has none: the
    edit's default shares)."""
    if method.mutual_self_attention is None:
        return {"mutual_self_attention_window": None}
    start, end, layer = method.mutual_self_attention
    return {"mutual_self_attention_window": (start, end), "mutual_self_attention_start_layer": layer}


@dataclass
class Judges:
    """The measurement models (each optional) and what they need."""

    judge: object | None
    regressor: object | None
    identity: object | None

    @torch.no_grad()
    def score(self, name: str, images: torch.Tensor, tasks: EditTasks, seconds: float) -> Row:
        """`images[i]` against target `i` and its source face `i // 7`."""
        truth, sources = tasks.truths, tasks.repeated_sources
        judged = {"judge_distance_to_ground_truth": None, "expression_accuracy": None, "au_mae": None}
        if self.judge is not None:
            labels = [EXPRESSIONS.index(n) for n in tasks.names]
            judged["expression_accuracy"] = evaluate_expression_classifier(self.judge, images, labels)[
                "accuracy"
            ]
            features, truth_features = (judge_features(self.judge, x) for x in (images, truth))
            judged["judge_distance_to_ground_truth"] = float((features - truth_features).norm(dim=1).mean())
        if self.regressor is not None:
            judged["au_mae"] = evaluate_au_regressor(self.regressor, images, tasks.target_aus)["mae"]
        identity = dict.fromkeys(("identity_attribute_accuracy", "identity_all_attributes", "identity_cosine"))
        if self.identity is not None:
            classes = self.identity.config.identity_attributes
            codes = encode_attributes(tasks.attributes, classes).repeat_interleave(NUM_EXPRESSIONS, 0)
            identity = identity_scores(self.identity, images, sources, codes)
        return Row(
            name, len(images), (images - truth).abs().mean().item(), (images - sources).abs().mean().item(),
            **judged, **identity, seconds=seconds,
        )  # fmt: skip


def load_judges(args: argparse.Namespace) -> Judges:
    from transformers import AutoModelForImageClassification

    def load(path: str | None):
        return AutoModelForImageClassification.from_pretrained(path).eval() if path else None

    identity = None
    if args.identity_classifier:
        identity = load_identity_classifier(Path(args.identity_classifier), args.faceworld, args.identity_steps)
    return Judges(load(args.judge), load(args.au_regressor), identity)


def print_table(rows: list[Row]) -> None:
    def cell(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print("| method | images | L1 to GT | L1 to source | judge dist. to GT | expr. acc. | AU MAE | identity attr. | "
          "identity all | identity cos | s |")  # fmt: skip
    print("|---" * 11 + "|")
    for r in rows:
        print(f"| {r.name} | {r.num_images} | {r.error_to_ground_truth:.4f} | {r.error_to_source:.4f} | "
              f"{cell(r.judge_distance_to_ground_truth, '.3f')} | {cell(r.expression_accuracy, '.3f')} | "
              f"{cell(r.au_mae, '.3f')} | {cell(r.identity_attribute_accuracy, '.3f')} | "
              f"{cell(r.identity_all_attributes, '.3f')} | {cell(r.identity_cosine, '.3f')} | {r.seconds:.1f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="SynFERPipeline folder (default: embedded)")
    parser.add_argument("--num-faces", type=int, default=10)
    parser.add_argument("--seed", type=int, default=12345, help="FaceWorld seed of the source faces")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.8, 1.0])
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--inversions", nargs="+", default=["source", "null"], choices=["source", "null"])
    parser.add_argument("--semantic-guidance-scales", type=float, nargs="+", default=[0.0],
                        help="semantic guidance toward the target (the model's guide) of every row but the references")  # fmt: skip
    parser.add_argument("--au-scales", type=float, nargs="+", default=[1.0], help="AU-branch weights of the edits")
    parser.add_argument("--au-guidance-scales", type=optional_float, nargs="+", default=[None],
                        help="AU guidance scales of the edits ('none': the AU condition guided with the text)")  # fmt: skip
    parser.add_argument("--mutual-self-attention", type=mutual_self_attention_setting, nargs="+", default=[None],
                        help="mutual self-attention of the edits: START:END:LAYER (shared steps, first shared layer) "
                        "or 'off'")  # fmt: skip
    parser.add_argument("--rows", nargs="+", default=["plain", "layout", "edit"], choices=["plain", "layout", "edit"],
                        help="which kinds of rows to run (the references always)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=49)
    parser.add_argument("--judge", default=None, help="expression classifier folder (real FaceWorld only)")
    parser.add_argument("--au-regressor", default=None, help="AU regressor folder (real FaceWorld only)")
    parser.add_argument("--identity-classifier", default=None, help="identity classifier folder (faceworld_identity.py)")
    parser.add_argument("--faceworld", default=None, help="FaceWorld folder to train the identity classifier on")
    parser.add_argument("--identity-steps", type=int, default=800, help="training steps of a new identity classifier")
    parser.add_argument("--cache-dir", default=None, help="keep each method's row here and skip methods found there "
                        "(a killed run resumes method by method)")  # fmt: skip
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    judges = load_judges(args)
    pipe = SynFERPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    tasks = edit_tasks(args.num_faces, args.seed)
    sources = tasks.repeated_sources
    rows = [
        judges.score("source, unedited (reference)", sources, tasks, 0.0),
        judges.score("ground-truth render (reference)", tasks.truths, tasks, 0.0),
        judges.score("another face (reference)", sources.roll(-NUM_EXPRESSIONS, 0), tasks, 0.0),
    ]
    grid = methods(args.strengths, args.guidance_scales, args.inversions, args.semantic_guidance_scales, args.au_scales,
                   args.au_guidance_scales, args.mutual_self_attention)  # fmt: skip
    for method in (m for m in grid if m.kind in args.rows):
        cache = Path(args.cache_dir) / f"{re.sub(r'[^A-Za-z0-9.]+', '_', method.name)}.json" if args.cache_dir else None
        if cache is not None and cache.exists():
            rows.append(Row(**json.loads(cache.read_text())))
            continue
        started = time.perf_counter()
        images = run_method(pipe, tasks, method, args.steps, args.batch_size)
        rows.append(judges.score(method.name, images, tasks, time.perf_counter() - started))
        print(json.dumps(asdict(rows[-1])), flush=True)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.with_suffix(".tmp").write_text(json.dumps(asdict(rows[-1])))
            os.replace(cache.with_suffix(".tmp"), cache)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return [asdict(row) for row in rows]


if __name__ == "__main__":
    main()
