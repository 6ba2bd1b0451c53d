"""`synfer` console script: a thin argparse layer over the package's functions.

Each command is one `add_<command>_parser(subparsers)` function in [`COMMANDS`] that registers its arguments and
sets `func` (args -> exit code); add a command by appending its function. Bad input exits with status 2 and one
line naming the field; nothing is half written.

    synfer generate --output-dir outputs/demo --num-samples 64
    accelerate launch --num_processes 2 -m synfer_diffusers.cli generate --output-dir outputs/demo   # K processes
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

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


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors in one line (`synfer generate: error: ...`, exit 2), like the package's own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _flag_value(convert: Callable[[str], Any], flag: str) -> Callable[[str], Any]:
    """An argparse `type` that reports a conversion error as one line naming `flag`."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as error:
            message = str(error) if str(error).startswith("`") else f"{text!r} is not a valid {parse.__name__}."
            raise argparse.ArgumentTypeError(message) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    """`synfer generate`: plan, generate, label and write a synthetic dataset folder (see `generate/`). One flag
    per [`SyntheticSetConfig`] field ([`config_flags`]), plus the run's own options."""
    from .generate import DEFAULT_QUEUE_DEPTH, config_flags

    parser = subparsers.add_parser(
        "generate",
        help="generate a labelled synthetic facial-expression dataset (parquet shards + card)",
        description="Plan N samples, generate them with a SynFERPipeline, label them and write a Hugging Face "
        "dataset folder (data/*.parquet, README.md, preview.png). Multi-process: accelerate launch "
        "--num_processes K -m synfer_diffusers.cli generate ..., or torchrun --nproc_per_node K -m "
        "synfer_diffusers.cli generate ...",
    )
    parser.add_argument("--output-dir", required=True, help="Dataset folder to write.")
    parser.add_argument("--model", default=None,
                        help="SynFERPipeline folder or Hub repo id (default: the embedded default checkpoint).")  # fmt: skip
    config = parser.add_argument_group("the set (recorded in plan.json)")
    for flag in config_flags():
        if flag.type is bool:
            config.add_argument(flag.flag, dest=flag.name, action="store_true", default=flag.default, help=flag.help)
        else:
            config.add_argument(flag.flag, dest=flag.name, type=_flag_value(flag.type, flag.flag),
                                default=flag.default, help=flag.help, metavar=flag.metavar)  # fmt: skip
    parser.add_argument("--voter", action="append", default=[], metavar="[KIND:]SPEC", help=VOTER_HELP)
    parser.add_argument("--batch-size", type=int, default=8, help="Images per pipeline call (not part of the plan).")
    parser.add_argument("--queue-depth", type=int, default=DEFAULT_QUEUE_DEPTH, metavar="K",
                        help="Batches the CPU work after each pipeline call (PIL conversion, votes, PNG encoding, shard "
                             "writes) may fall behind, done by a background thread while the next batch denoises; "
                             "0: synchronous. Not part of the plan: the set is the same.")  # fmt: skip
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="Complete an interrupted run of the same plan.")
    mode.add_argument("--overwrite", action="store_true", help="Replace a folder that holds another plan.")
    parser.add_argument("--wait", action="store_true",
                        help="If another run is writing --output-dir, wait for it instead of exiting.")  # fmt: skip
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                        help="Upload the finished dataset to this Hub dataset repo ('user/name'); rerun to resume an "
                             "interrupted upload.")  # fmt: skip
    parser.add_argument("--private", action="store_true", default=None, help="Create the Hub repo as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    parser.add_argument("--license", default=None, help="Licence in the dataset card (default: the generating model's licence, from its card).")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from .generate import SyntheticSetConfig, config_flags, generate_synthetic_dataset

    values = {flag.name: getattr(args, flag.name) for flag in config_flags()}  # text defaults: parsed by argparse
    result = generate_synthetic_dataset(
        SyntheticSetConfig(**values), args.output_dir, model=args.model, voters=args.voter,
        batch_size=args.batch_size, resume=args.resume, overwrite=args.overwrite, push_to_hub=args.push_to_hub,
        token=args.token, private=args.private, card_data={"license": args.license} if args.license else None,
        show_progress=not args.no_progress, wait=args.wait, queue_depth=args.queue_depth,
    )  # fmt: skip
    if result.complete:
        logger.info(f"Wrote {result.num_samples} samples in {result.num_shards} shards to {result.output_dir}")
    if result.commit_url:
        logger.info(f"Pushed to {result.commit_url}")
    return 0


VOTER_HELP = (
    "An extra voter, repeatable: 'classifier:PATH' (or a bare PATH: a transformers image classifier folder or repo "
    "id), 'feranno:PATH' (a FERAnnoPipeline, a separate pass on the images) or 'callable:module.sub:function' "
    "(images -> (B, 7) probabilities). FERAnno (when the model has a head) and the target always vote."
)


def add_relabel_parser(subparsers: argparse._SubParsersAction) -> None:
    """`synfer relabel FOLDER`: recompute the labels of a finished synthetic set from its stored votes."""
    from .generate import config_flags
    from .generate.relabel import RELABEL_OPTIONS

    parser = subparsers.add_parser(
        "relabel",
        help="recompute the labels of a finished synthetic set from its stored votes (optionally with new voters)",
        description="Recompute label, label_probs, agreement and keep of a synthetic set folder (made by synfer "
        "generate, or downloaded from the Hub) from its stored votes column, with another aggregation or voting "
        "rule and optionally more voters (run once on the stored images, their votes stored like the others). No "
        "image is regenerated. Rerun after a kill to finish.",
    )
    parser.add_argument("folder", metavar="FOLDER", help="The synthetic set's folder.")
    parser.add_argument("--voter", action="append", default=[], metavar="[KIND:]SPEC",
                        help=VOTER_HELP.replace(" FERAnno (when the model has a head) and the target always vote.",
                                                " A voter named like a stored one replaces its votes."))  # fmt: skip
    options = parser.add_argument_group("voting (default: the set's own)")
    for flag in config_flags():
        if flag.name in RELABEL_OPTIONS:
            options.add_argument(flag.flag, dest=flag.name, type=_flag_value(flag.type, flag.flag), default=None,
                                 help=flag.help, metavar=flag.metavar)  # fmt: skip
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                        help="Upload the relabelled dataset to this Hub dataset repo; rerun to resume.")  # fmt: skip
    parser.add_argument("--private", action="store_true", default=None, help="Create the Hub repo as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    parser.add_argument("--wait", action="store_true",
                        help="If another run is writing FOLDER, wait for it instead of exiting.")  # fmt: skip
    parser.set_defaults(func=run_relabel)


def run_relabel(args: argparse.Namespace) -> int:
    from .generate.relabel import RELABEL_OPTIONS, relabel_synthetic_dataset

    voting = {name: getattr(args, name) for name in RELABEL_OPTIONS if getattr(args, name) is not None}
    result = relabel_synthetic_dataset(args.folder, voters=args.voter, voting=voting, push_to_hub=args.push_to_hub,
                                       token=args.token, private=args.private, wait=args.wait)  # fmt: skip
    summary = result.summary
    logger.info(f"Relabelled {summary.num_rows} rows of {result.output_dir}: {summary.describe()}")
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
    add_relabel_parser,
    add_faceworld_parser,
    add_build_fetext_parser,
]
"""Parser registrations, one per subcommand."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="synfer", description="SynFER: labelled synthetic facial-expression data.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=OneLineArgumentParser)  # fmt: skip
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
