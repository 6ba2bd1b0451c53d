"""`synfer` console script: a thin argparse layer over the package's functions.

Each command is one `add_<command>_parser(subparsers)` function in [`COMMANDS`] that registers its arguments and
sets `func` (args -> exit code); add a command by appending its function. Bad input exits with status 2 and one
line naming the field; nothing is half written.

    synfer generate --output-dir outputs/demo --num-samples 64
    accelerate launch --num_processes 2 -m synfer_diffusers.cli generate --output-dir outputs/demo   # K processes
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import Field, fields
from typing import Any

from .data.writer import ShardVerificationError

logger = logging.getLogger("synfer_diffusers")

# Errors that mean bad input or a bad folder: reported as one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileExistsError,
    OSError,
    ShardVerificationError,
)


def parse_named_numbers(text: str, flag: str, forms: str = "'name=value,...' or a JSON object") -> dict[str, float]:
    """`"happy=0.5,sad=0.5"` or a JSON object -> `{name: number}`; a `ValueError` naming `flag` and the accepted
    `forms` otherwise."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"`{flag}`: not valid JSON ({error}).") from error
    values = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"`{flag}` must be {forms}, got {text!r}.")
    return values


def parse_expression_distribution(text: str) -> dict[str, float] | None:
    """`"balanced"` -> None; `"happy=0.5,sad=0.5"` or a JSON object -> `{name: probability}`."""
    if text == "balanced":
        return None
    return parse_named_numbers(text, "--expressions", "'balanced', 'name=prob,...' or a JSON object")


def parse_window(text: str) -> tuple[float, float]:
    """`"0.6,1.0"` -> `(0.6, 1.0)`; the range itself is checked by the config."""
    try:
        start, end = (float(bound) for bound in text.split(","))
    except ValueError:
        raise ValueError(f"`--semantic-guidance-window` must be 'start,end', e.g. '0.6,1.0', got {text!r}.") from None
    return start, end


def _config_field(name: str) -> Field:
    from .generate import SyntheticSetConfig

    return next(f for f in fields(SyntheticSetConfig) if f.name == name)


def _config_help(name: str) -> str:
    return _config_field(name).metadata["help"]


def _config_default(name: str) -> Any:
    return _config_field(name).default


def _add_config_argument(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """`--name-with-dashes` for the config field `name`, with its default and help."""
    flag = f"--{name.replace('_', '-')}"
    parser.add_argument(flag, default=_config_default(name), help=_config_help(name), **kwargs)


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    """`synfer generate`: plan, generate, label and write a synthetic dataset folder (see `generate.py`)."""
    parser = subparsers.add_parser(
        "generate",
        help="generate a labelled synthetic facial-expression dataset (parquet shards + card)",
        description="Plan N samples, generate them with a SynFERPipeline, label them and write a Hugging Face "
        "dataset folder (data/*.parquet, README.md, preview.png). Multi-process: accelerate launch "
        "--num_processes K -m synfer_diffusers.cli generate ...",
    )
    parser.add_argument("--output-dir", required=True, help="Dataset folder to write.")
    parser.add_argument("--model", default=None,
                        help="SynFERPipeline folder or Hub repo id (default: the embedded default checkpoint).")  # fmt: skip
    parser.add_argument("--num-samples", type=int, default=64, help=_config_help("num_samples"))
    parser.add_argument("--seed", type=int, default=0, help=_config_help("seed"))
    parser.add_argument("--expressions", default="balanced",
                        help="'balanced' (default), 'happy=0.5,sad=0.5' or a JSON object of probabilities.")  # fmt: skip
    parser.add_argument("--au-policy", default="prototype", help=_config_help("au_policy"))
    parser.add_argument("--au-dataset", default=None, help=_config_help("au_dataset"))
    _add_config_argument(parser, "prototype_intensity", type=float)
    parser.add_argument("--au-jitter", type=float, default=0.5, help=_config_help("au_jitter"))
    parser.add_argument("--descriptions-file", default=None,
                        help="Text file with one coarse description per line (default: built-in descriptions).")  # fmt: skip
    parser.add_argument("--num-inference-steps", type=int, default=25, help=_config_help("num_inference_steps"))
    parser.add_argument("--guidance-scale", type=float, default=5.0, help=_config_help("guidance_scale"))
    parser.add_argument("--au-scale", type=float, default=1.0, help=_config_help("au_scale"))
    parser.add_argument("--height", type=int, default=None, help=_config_help("height"))
    parser.add_argument("--width", type=int, default=None, help=_config_help("width"))
    parser.add_argument("--shard-size", type=int, default=256, help=_config_help("shard_size"))
    parser.add_argument("--layout-dataset", default=None, help=_config_help("layout_dataset"))
    parser.add_argument("--layout-strength", type=float, default=1.0, help=_config_help("layout_strength"))
    for name in ("scheduler", "dtype", "device", "negative_prompt"):
        _add_config_argument(parser, name)
    _add_config_argument(parser, "eta", type=float)
    _add_config_argument(parser, "semantic_guidance_scale", type=float)
    window = "{},{}".format(*_config_default("semantic_guidance_window"))
    parser.add_argument("--semantic-guidance-window", default=window, metavar="START,END",
                        help=_config_help("semantic_guidance_window"))  # fmt: skip
    _add_config_argument(parser, "semantic_guidance_interval", type=int)
    _add_config_argument(parser, "semantic_guidance_normalization")
    parser.add_argument("--voter", action="append", default=[], metavar="CLASSIFIER",
                        help="An extra voting classifier (transformers image classifier folder or repo id); "
                             "repeatable. FERAnno (when the model has a head) and the target always vote.")  # fmt: skip
    _add_config_argument(parser, "agreement_threshold", type=float)
    parser.add_argument("--voter-weights", default=None, metavar="NAME=WEIGHT,...",
                        help=_config_help("voter_weights") + " E.g. 'feranno=2,target=1' or a JSON object.")  # fmt: skip
    _add_config_argument(parser, "label_type")
    _add_config_argument(parser, "discard_rule")
    parser.add_argument("--batch-size", type=int, default=8, help="Images per pipeline call (not part of the plan).")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="Complete an interrupted run of the same plan.")
    mode.add_argument("--overwrite", action="store_true", help="Replace a folder that holds another plan.")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                        help="Upload the finished dataset to this Hub dataset repo ('user/name') in one commit.")  # fmt: skip
    parser.add_argument("--private", action="store_true", default=None, help="Create the Hub repo as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    parser.add_argument("--license", default=None, help="Licence in the dataset card (default: the generating model's licence, from its card).")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from .generate import SyntheticSetConfig, generate_synthetic_dataset

    descriptions = None
    if args.descriptions_file:
        with open(args.descriptions_file, encoding="utf-8") as f:
            descriptions = [line.strip() for line in f if line.strip()]
    weights = parse_named_numbers(args.voter_weights, "--voter-weights") if args.voter_weights else None
    config = SyntheticSetConfig(
        num_samples=args.num_samples, seed=args.seed,
        expression_distribution=parse_expression_distribution(args.expressions),
        au_policy=args.au_policy, au_dataset=args.au_dataset, prototype_intensity=args.prototype_intensity,
        au_jitter=args.au_jitter, descriptions=descriptions, num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale, au_scale=args.au_scale, height=args.height, width=args.width,
        shard_size=args.shard_size, layout_dataset=args.layout_dataset, layout_strength=args.layout_strength,
        scheduler=args.scheduler, dtype=args.dtype, device=args.device, negative_prompt=args.negative_prompt,
        eta=args.eta, semantic_guidance_scale=args.semantic_guidance_scale,
        semantic_guidance_window=parse_window(args.semantic_guidance_window),
        semantic_guidance_interval=args.semantic_guidance_interval,
        semantic_guidance_normalization=args.semantic_guidance_normalization,
        agreement_threshold=args.agreement_threshold, voter_weights=weights, label_type=args.label_type,
        discard_rule=args.discard_rule,
    )  # fmt: skip
    result = generate_synthetic_dataset(
        config, args.output_dir, model=args.model, voters=args.voter,
        batch_size=args.batch_size, resume=args.resume, overwrite=args.overwrite, push_to_hub=args.push_to_hub,
        token=args.token, private=args.private,
        card_data={"license": args.license} if args.license else None, show_progress=not args.no_progress,
    )  # fmt: skip
    if result.complete:
        logger.info(f"Wrote {result.num_samples} samples in {result.num_shards} shards to {result.output_dir}")
    if result.commit_url:
        logger.info(f"Pushed to {result.commit_url}")
    return 0


def add_faceworld_parser(subparsers: argparse._SubParsersAction) -> None:
    from .data.faceworld import add_faceworld_arguments

    add_faceworld_arguments(subparsers.add_parser("faceworld", help="write FaceWorld train/test splits (parquet)"))


def add_build_fetext_parser(subparsers: argparse._SubParsersAction) -> None:
    from .data.fetext import add_build_fetext_arguments

    add_build_fetext_arguments(
        subparsers.add_parser("build-fetext", help="turn face images into an FEText-style training set")
    )


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_generate_parser,
    add_faceworld_parser,
    add_build_fetext_parser,
]
"""Parser registrations, one per subcommand."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synfer", description="SynFER: labelled synthetic facial-expression data.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in COMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `synfer` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        parser.exit(2, f"synfer {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
