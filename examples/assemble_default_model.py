"""Assembles the embedded default checkpoint: the stage-B SynFERPipeline plus its semantic-guidance classifier, its
FERAnno head and its AU estimator (for `pipe.edit(source_action_units=None)`), saved (safetensors) with a model card
into `src/synfer_diffusers/default_model`.

    python examples/assemble_default_model.py --pipeline runs/stage_b --guide runs/guide --feranno runs/feranno \
        --au_estimator runs/au_estimator --evaluation runs/eval/generation.json \
        --output_dir src/synfer_diffusers/default_model

`--add_au_estimator` adds `--au_estimator` to the checkpoint already in `--output_dir` (its `au_estimator` and
`au_estimator_image_processor` folders and `model_index.json` entries; the other component folders are not touched)
and rewrites its card, whose Training section gains the estimator's AU MAE on FaceWorld test faces:

    python examples/assemble_default_model.py --add_au_estimator --au_estimator runs/au_estimator

`--add_voter NAME=PATH` adds an expression classifier (`train_fer_classifier.py --task expression`) as a voter of
`synfer generate`: saved (safetensors, with its image processor) to the checkpoint's `voters/NAME/`, which
`checkpoint_voters` reads, and named in the card's Training section with its model family and its accuracy on
FaceWorld test faces (no other file changes):

    python examples/assemble_default_model.py --add_voter regnet=runs/voter_regnet

`--replace_feranno PATH` replaces the checkpoint's FERAnno head by the head of a `train_feranno.py` output folder
(trained on this checkpoint's UNet), stored in `--storage_dtype`, and its sentence in the card's Training section by
one with the new head's steps and last measured accuracy (no other file changes):

    python examples/assemble_default_model.py --replace_feranno runs/feranno_long

`--card_only` rewrites only the card (`README.md`) of the checkpoint already in `--output_dir`, from the package's
current template, keeping its Training and Evaluation sections unless `--training` / `--evaluation` are given; the
weights are not touched:

    python examples/assemble_default_model.py --card_only

Weights are stored in float16 by default (the package budget is ~20 MB); `resolve_pipeline(None)` loads them as
float32.

The last step of `examples/train_faceworld_default.sh`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil

import torch
from huggingface_hub import EvalResult
from transformers import AutoImageProcessor, AutoModelForImageClassification

from synfer_diffusers import EXPRESSIONS, FERAnnoPipeline, SynFERPipeline
from synfer_diffusers.hub_utils import card_section, write_model_card
from synfer_diffusers.pipelines.remote_code import package_config
from synfer_diffusers.training import tile_images

MAX_SIZE_MB = 20.0
GRID_DESCRIPTIONS = (
    "a photo of a young woman with red curly hair",
    "a photo of an elderly man with glasses and short grey hair",
    "a photo of a middle-aged man with black hair and a beard",
    "a photo of a young woman with blond hair and glasses",
    "a photo of a senior woman with long grey hair",
    "a photo of an adult man with brown eyes and short brown hair",
)


def folder_size_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files) / 2**20


def evaluation_markdown(path: str | None) -> str | None:
    """The rows of `benchmarks/eval_faceworld_generation.py`'s JSON as a markdown table, or None."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    rows, args = result["rows"], result["args"]
    lines = [
        "Measured on FaceWorld with `benchmarks/eval_faceworld_generation.py` (judge and AU regressor trained on real "
        f"FaceWorld only, never used in generation; {args['steps']} DDIM steps, CFG {args['guidance_scale']:g}, "
        f"`+ AUs + SG` with semantic_guidance_scale={args['semantic_guidance_scale']:g} at the pipeline's default "
        "window and interval):",
        "",
        "| row | images | expression accuracy (judge) | AU MAE (regressor) | Fréchet distance (judge features) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['num_images']} | {row['expression_accuracy']:.3f} | {row['au_mae']:.3f} | "
            f"{row['frechet_distance']:.2f} |"
        )
    for name, rates in result.get("label_agreement_with_judge", {}).items():
        agreement = ", ".join(f"{voter} {rate:.3f}" for voter, rate in rates.items())
        lines += ["", f"Labels of the `{name}` images that agree with the judge: {agreement}."]
    return "\n".join(lines)


def default_model_card(training: str | None, evaluation: str | None) -> dict:
    """The default's card fields, over its pipeline's `model_card_fields()`. It has no base model (trained from
    scratch) and FaceWorld is not on the Hub: the card's text names its training data, its metadata does not; its
    `model-index` holds the generated rows of the Evaluation table ([`evaluation_results`])."""
    return {
        "model_name": "synfer_diffusers embedded default (FaceWorld, 64x64)",
        "datasets": ["FaceWorld (synfer_diffusers.data.faceworld, seed 0, 20k train)"],
        "training": training or "Trained on FaceWorld by `examples/train_faceworld_default.sh` (autoencoder, stage A, "
        "stage B, guide, FERAnno, AU estimator).",
        "evaluation": evaluation,
        "eval_results": evaluation_results(evaluation),
    }


EVALUATION_METRICS = (  # the Evaluation table's metric columns: (model-index type, name), in column order
    ("accuracy", "expression accuracy (FaceWorld judge)"),
    ("mae", "AU MAE (FaceWorld AU regressor)"),
    ("frechet_distance", "Fréchet distance to real FaceWorld faces (judge features)"),
)


def evaluation_results(evaluation: str | None) -> list[EvalResult] | None:
    """The `model-index` entries of the Evaluation table ([`evaluation_markdown`]): each metric of each generated
    row (the real-faces reference row is left out), on the FaceWorld test faces; None without a table."""
    row = r"^\| (.+?) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$"  # name, images, the metric columns
    rows = re.findall(row, evaluation or "", flags=re.MULTILINE)
    results = [
        EvalResult(
            task_type="text-to-image", dataset_type="faceworld", dataset_name="FaceWorld (synfer_diffusers, seed 0)",
            dataset_split="test", metric_type=metric, metric_name=f"{name}: {label}", metric_value=float(value),
        )  # fmt: skip
        for name, _, *values in rows
        if not name.startswith("real ")
        for (metric, label), value in zip(EVALUATION_METRICS, values)
    ]
    return results or None


def au_estimator_sentence(path: str) -> str:
    """The card's sentence on the AU estimator of `path` (an `examples/train_fer_classifier.py --task action_units`
    folder), with its AU MAE on FaceWorld test faces from its `metrics.json`."""
    with open(os.path.join(path, "metrics.json")) as f:
        metrics = json.load(f)
    test = metrics["test"]["original"]
    return (
        f"AU estimator for `pipe.edit(source_action_units=None)` ({metrics['architecture']} AU regressor, "
        f"{metrics['num_parameters']:,} parameters, {metrics['steps']} steps; AU MAE {test['mae']:.3f} on "
        f"{test['num_samples']} FaceWorld test faces)."
    )


def with_au_estimator(training: str, path: str) -> str:
    """`training` (a card's Training text) with the AU estimator sentence of `path`, replacing an earlier one."""
    kept = re.sub(r" ?AU estimator for `pipe\.edit.*?test faces\)\.", "", training)
    return f"{kept} {au_estimator_sentence(path)}"


def voter_sentence(name: str, path: str) -> str:
    """The card's sentence on the voter `name` from `path` (a `train_fer_classifier.py --task expression` folder),
    with its family and its accuracy on clean FaceWorld test labels from its `metrics.json`."""
    with open(os.path.join(path, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(path, "training_config.json")) as f:
        recipe = json.load(f)
    accuracy = metrics["test"]["original"]["clean_labels"]
    return (
        f"Voter `{name}` of `synfer generate` (`voters/{name}`: transformers {metrics['architecture']}, "
        f"{metrics['num_parameters']:,} parameters, {metrics['steps']} steps, seed {recipe['seed']}, trained on "
        f"`{os.path.basename(recipe['dataset_name'].rstrip('/'))}`; {accuracy['accuracy']:.1%} on "
        f"{accuracy['num_samples']} clean FaceWorld test labels)."
    )


def with_voter(training: str, name: str, path: str) -> str:
    """`training` (a card's Training text) with the sentence on voter `name`, replacing an earlier one."""
    kept = re.sub(rf" ?Voter `{re.escape(name)}` of `synfer generate`.*?test labels\)\.", "", training)
    return f"{kept} {voter_sentence(name, path)}"


def add_voter(folder: str, spec: str) -> None:
    """Adds the voter of `spec` (`NAME=PATH`, `--add_voter`) to the checkpoint in `folder`: the classifier and its
    image processor saved into `voters/NAME/` through a staging folder, and its sentence in the card."""
    name, _, path = spec.partition("=")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path:
        raise ValueError(f"`add_voter` must be NAME=PATH with a plain folder name, got {spec!r}.")
    model = AutoModelForImageClassification.from_pretrained(path)
    if list(model.config.id2label.values()) != list(EXPRESSIONS):
        raise ValueError(f"`add_voter` {path!r}: its labels {list(model.config.id2label.values())} are not "
                         f"{list(EXPRESSIONS)}.")  # fmt: skip
    target = os.path.join(folder, "voters", name)
    staging = f"{target}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    AutoImageProcessor.from_pretrained(path).save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        current = f.read()
    rewrite_card(folder, with_voter(card_section(current, "Training") or "", name, path), None)


FERANNO_SENTENCE = re.compile(r"FERAnno head \([^)]*\)")


def feranno_sentence(path: str) -> str:
    """The card's words on the FERAnno head of `path` (a `train_feranno.py` output folder): its steps and its last
    accuracy on the evaluation split's labels, from `training_config.json` and `evaluation.json`."""
    with open(os.path.join(path, "training_config.json")) as f:
        recipe = json.load(f)
    with open(os.path.join(path, "evaluation.json")) as f:
        history = json.load(f)
    step = max(history, key=int)
    return (
        f"FERAnno head ({int(step):,} steps of batch {recipe['train_batch_size']}, label smoothing "
        f"{recipe.get('label_smoothing', 0.0):g}{', random flips' if recipe.get('random_flip') else ''}; "
        f"{history[step]['accuracy']:.1%} on {recipe['max_eval_samples'] or 'all'} FaceWorld test labels "
        f"(`{recipe['label_column']}`))"
    )


def replace_feranno(folder: str, path: str, storage_dtype: torch.dtype) -> None:
    """Replaces the FERAnno head of the checkpoint in `folder` by the head of `path` (`--replace_feranno`): its config
    and weights, each moved from a staging folder, and its sentence in the card."""
    head = FERAnnoPipeline.from_pretrained(path).head.to(storage_dtype)
    target = os.path.join(folder, "feranno_head")
    staging = f"{target}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    head.save_pretrained(staging)
    for name in os.listdir(staging):  # its config and weights; the folder's bundled code stays
        os.replace(os.path.join(staging, name), os.path.join(target, name))
    os.rmdir(staging)
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        training = card_section(f.read(), "Training") or ""
    if not FERANNO_SENTENCE.search(training):
        raise ValueError("`replace_feranno`: the card's Training section does not describe a FERAnno head.")
    rewrite_card(folder, FERANNO_SENTENCE.sub(feranno_sentence(path), training, count=1), None)


AU_ESTIMATOR_COMPONENTS = ("au_estimator", "au_estimator_image_processor")


def load_au_estimator(path: str) -> dict:
    """The `au_estimator` and `au_estimator_image_processor` components of an AU regressor folder; its `au_names`
    must be the UNet's AUs, checked when the pipeline is built."""
    return {
        "au_estimator": AutoModelForImageClassification.from_pretrained(path),
        "au_estimator_image_processor": AutoImageProcessor.from_pretrained(path),
    }


def add_au_estimator(folder: str, path: str, training: str | None, storage_dtype: torch.dtype) -> None:
    """Adds the AU estimator of `path` to the checkpoint in `folder` (`--add_au_estimator`): the pipeline with it is
    saved to a staging folder, from which only the estimator's folders, their `model_index.json` entries and the card
    move into `folder` (the checkpoint's other entries keep their layout)."""
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        current = f.read()
    pipe = SynFERPipeline.from_pretrained(folder, **load_au_estimator(path))
    pipe.pipeline_au_estimator("`assemble_default_model`")  # the estimator's AU names must map onto the UNet's AU space
    pipe.to(storage_dtype)
    fields = default_model_card(
        with_au_estimator(training or card_section(current, "Training"), path), card_section(current, "Evaluation")
    )
    staging = f"{folder}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, model_card=fields)
    with open(os.path.join(staging, "model_index.json")) as f:
        staged = json.load(f)
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    for name in AU_ESTIMATOR_COMPONENTS:
        index[name] = staged[name]
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        os.replace(os.path.join(staging, name), os.path.join(folder, name))
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(os.path.join(staging, "README.md"), os.path.join(folder, "README.md"))
    shutil.rmtree(staging)


def rewrite_card(folder: str, training: str | None, evaluation: str | None) -> None:
    """Renders the card of the checkpoint in `folder` again (`--card_only`); sections not given are kept."""
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        current = f.read()
    pipe = SynFERPipeline.from_pretrained(folder)
    fields = default_model_card(
        training or card_section(current, "Training"), evaluation or card_section(current, "Evaluation")
    )
    write_model_card(folder, pipe.model_card_template, {**pipe.model_card_fields(), **fields})


def package_layout(folder: str) -> None:
    """Names the package's modules in `folder`'s `model_index.json` (`synfer_diffusers.models.unet_au`, ...) and
    removes the code files `save_pretrained` writes for stock diffusers: the embedded default ships inside the
    package, whose code it runs, so bundled copies would only go stale."""
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path, encoding="utf-8") as f:
        index = package_config(json.load(f))
    with open(index_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for directory, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".py"):
                os.remove(os.path.join(directory, name))


def save_grid(pipe: SynFERPipeline, path: str, steps: int = 25, guidance_scale: float = 3.0) -> None:
    """7 expressions (rows) x the identities of `GRID_DESCRIPTIONS` (columns, seed = column index)."""
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for expression in EXPRESSIONS:
        out = pipe(
            prompt=list(GRID_DESCRIPTIONS), expression=[expression] * len(GRID_DESCRIPTIONS),
            generator=[torch.Generator().manual_seed(j) for j in range(len(GRID_DESCRIPTIONS))],
            num_inference_steps=steps, guidance_scale=guidance_scale,
        )  # fmt: skip
        rows.append(out.images)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tile_images(rows, row_labels=list(EXPRESSIONS)).save(path)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", help="stage-B SynFERPipeline folder (required unless --card_only)")
    parser.add_argument("--guide", help="expression classifier folder for semantic guidance (as --pipeline)")
    parser.add_argument("--feranno", help="FERAnnoPipeline folder, whose head is taken (as --pipeline)")
    parser.add_argument("--au_estimator", help="AU regressor folder (train_fer_classifier.py --task action_units; as "
                        "--pipeline, or with --add_au_estimator)")  # fmt: skip
    parser.add_argument("--add_au_estimator", action="store_true",
                        help="add --au_estimator to --output_dir's checkpoint, leaving its other components")  # fmt: skip
    parser.add_argument("--add_voter", metavar="NAME=PATH",
                        help="add an expression classifier folder as the voter NAME of --output_dir's checkpoint")  # fmt: skip
    parser.add_argument("--replace_feranno", metavar="PATH",
                        help="replace --output_dir's FERAnno head by the head of a train_feranno.py output folder")  # fmt: skip
    parser.add_argument("--card_only", action="store_true", help="rewrite only the card of --output_dir's checkpoint")
    parser.add_argument("--evaluation", default=None, help="JSON of benchmarks/eval_faceworld_generation.py")
    parser.add_argument("--training", default=None, help="text for the card's Training section")
    parser.add_argument("--output_dir", default="src/synfer_diffusers/default_model")
    parser.add_argument("--grid", default="docs/default_model_grid.png", help="sample grid for the README")
    parser.add_argument("--storage_dtype", choices=["float16", "float32"], default="float16",
                        help="dtype of the stored weights (float16 halves the package size; loading upcasts)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.card_only:
        rewrite_card(args.output_dir, args.training, evaluation_markdown(args.evaluation))
        print(f"Wrote {args.output_dir}/README.md")
        return args.output_dir
    if args.replace_feranno:
        replace_feranno(args.output_dir, args.replace_feranno, getattr(torch, args.storage_dtype))
        print(f"Replaced the FERAnno head of {args.output_dir} by {args.replace_feranno}")
        return args.output_dir
    if args.add_voter:
        add_voter(args.output_dir, args.add_voter)
        print(f"Added voter {args.add_voter} to {args.output_dir} ({folder_size_mb(args.output_dir):.1f} MB)")
        return args.output_dir
    if args.add_au_estimator:
        if args.au_estimator is None:
            parser.error("--add_au_estimator needs --au_estimator")
        add_au_estimator(args.output_dir, args.au_estimator, args.training, getattr(torch, args.storage_dtype))
        print(f"Added {args.au_estimator} to {args.output_dir} ({folder_size_mb(args.output_dir):.1f} MB)")
        return args.output_dir
    missing = [f"--{name}" for name in ("pipeline", "guide", "feranno", "au_estimator") if getattr(args, name) is None]
    if missing:
        parser.error(f"{', '.join(missing)} required (unless --card_only, --add_au_estimator, --add_voter or --replace_feranno)")

    pipe = SynFERPipeline.from_pretrained(args.pipeline)
    head = FERAnnoPipeline.from_pretrained(args.feranno).head
    guide = AutoModelForImageClassification.from_pretrained(args.guide)
    processor = AutoImageProcessor.from_pretrained(args.guide)
    default = SynFERPipeline(
        **pipe.base_components, guidance_classifier=guide, guidance_image_processor=processor, feranno_head=head,
        **load_au_estimator(args.au_estimator),
    )  # fmt: skip
    default.pipeline_au_estimator("`assemble_default_model`")  # the estimator's AU names must map onto the UNet's AU space
    default.to(getattr(torch, args.storage_dtype))
    staging = f"{args.output_dir}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    training = with_au_estimator(default_model_card(args.training, None)["training"], args.au_estimator)
    default.save_pretrained(staging, model_card=default_model_card(training, evaluation_markdown(args.evaluation)))
    package_layout(staging)
    size = folder_size_mb(staging)
    if size > MAX_SIZE_MB:
        raise ValueError(f"The default checkpoint is {size:.1f} MB, over the {MAX_SIZE_MB} MB budget.")
    shutil.rmtree(args.output_dir, ignore_errors=True)
    os.replace(staging, args.output_dir)
    print(f"Wrote {args.output_dir} ({size:.1f} MB)")
    if args.grid:
        save_grid(SynFERPipeline.from_pretrained(args.output_dir), args.grid)
        print(f"Wrote {args.grid}")
    return args.output_dir


if __name__ == "__main__":
    main()
