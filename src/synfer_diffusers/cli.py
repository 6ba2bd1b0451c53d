"""`synfer` console script: a thin argparse layer over the package's functions.

Every flag of every command is a dataclass field, turned into an argument by one builder
([`~synfer_diffusers.dataclass_cli.add_dataclass_arguments`]): the config of what the command makes
([`SyntheticSetConfig`], [`FETextConfig`], [`FaceWorldConfig`]) and the command's own options (the dataclasses
below). Each command is one `add_<command>_parser(subparsers)` function in [`COMMANDS`] that registers its
arguments and sets `func` (args -> exit code) and `flags` (field -> flag); add a command by appending its function.
Bad input exits with status 2 and one line naming the flag; nothing is half written. Building the parser loads no
torch: the commands import the package's heavy parts when they run.

    synfer generate --output-dir outputs/demo --num-samples 64
    accelerate launch --num_processes 2 -m synfer_diffusers.cli generate --output-dir outputs/demo   # K processes
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import __version__
from .data.faceworld.config import FaceWorldConfig, Regime
from .data.fetext_config import FETextConfig
from .data.files import ShardVerificationError
from .dataclass_cli import (
    FlagHelpFormatter,
    OneLineArgumentParser,
    add_dataclass_arguments,
    dataclass_values,
    name_flags,
)
from .generate.config import VOTING_FIELDS, SyntheticSetConfig

logger = logging.getLogger("synfer_diffusers")

# Errors that mean bad input or a bad folder: reported as one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileExistsError,
    OSError,
    ShardVerificationError,
)


# The commands' own options (those that are no part of what the command makes), shared where they mean the same.
@dataclass(kw_only=True)
class OutputOptions:
    output_dir: str = field(metadata={"help": "Dataset folder to write (data/*.parquet, README.md)."})


@dataclass(kw_only=True)
class FolderOptions:
    resume: bool = field(default=False, metadata={"help": "Complete an interrupted run of the same plan."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a folder that holds another plan."})
    license: str | None = field(
        default=None,
        metadata={"help": "Licence in the dataset card's metadata (e.g. cc-by-nc-4.0); None: inherited (generate: "
                          "the model's, from its card; build-fetext: the source's, where it has one)."},
    )  # fmt: skip
    no_progress: bool = field(default=False, metadata={"help": "Hide the progress bars."})


@dataclass(kw_only=True)
class VoterOptions:
    voters: list[str] = field(
        default_factory=list,
        metadata={"help": "An extra voter, repeatable: 'classifier:PATH' (or a bare PATH: a transformers image "
                          "classifier folder or repo id), 'feranno:PATH' (a FERAnnoPipeline, a separate pass on the "
                          "images) or 'callable:module.sub:function' (images -> (B, 7) probabilities). generate: "
                          "FERAnno (when the model has a head) and the target always vote; relabel: a voter named "
                          "like a stored one replaces its votes.",
                  "flag": "--voter", "metavar": "[KIND:]SPEC"},
    )  # fmt: skip


@dataclass(kw_only=True)
class HubOptions:
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "Upload the finished dataset to this Hub dataset repo ('user/name'); rerun to resume an "
                          "interrupted upload.", "metavar": "REPO_ID"},
    )  # fmt: skip
    private: bool | None = field(default=None, metadata={"help": "Create the Hub repo as private."})
    token: str | None = field(default=None, metadata={"help": "Hub token; None: HF_TOKEN or the saved login."})
    wait: bool = field(
        default=False, metadata={"help": "If another run is writing the folder, wait for it instead of exiting."}
    )


@dataclass(kw_only=True)
class GenerateOptions(HubOptions, VoterOptions, FolderOptions, OutputOptions):
    model: str | None = field(
        default=None,
        metadata={"help": "SynFERPipeline folder or Hub repo id; None: the embedded default checkpoint."},
    )
    batch_size: int = field(default=8, metadata={"help": "Images per pipeline call (not part of the plan)."})
    queue_depth: int | None = field(
        default=None,
        metadata={"help": "Batches the CPU work after each pipeline call (PIL conversion, votes, PNG encoding, shard "
                          "writes) may fall behind, done by a background thread while the next batch denoises; 0: "
                          "synchronous. None: 2 on an accelerator, 0 on the CPU (where the thread would compete with "
                          "torch's for the cores). Not part of the plan: the set is the same.", "metavar": "K"},
    )  # fmt: skip


@dataclass(kw_only=True)
class RelabelOptions(HubOptions, VoterOptions):
    output_dir: str = field(metadata={"help": "The synthetic set's folder.", "positional": True, "metavar": "FOLDER"})


@dataclass(kw_only=True)
class BuildFETextOptions(FolderOptions, OutputOptions):
    dataset: str = field(metadata={"help": "Image folder, dataset folder or Hub dataset id."})
    split: str = field(default="train", metadata={"help": "Split of --dataset to read."})
    max_samples: int | None = field(default=None, metadata={"help": "Read only the first N rows of the split."})
    source_name: str | None = field(
        default=None, metadata={"help": "Name in the `source` column; None: --dataset."}
    )
    batch_size: int = field(default=32, metadata={"help": "Images per annotator call (not part of the plan)."})


@dataclass(kw_only=True)
class FaceWorldOptions(OutputOptions):
    num_train: int = field(default=20_000, metadata={"help": "Number of train faces."})
    num_test: int = field(default=2_000, metadata={"help": "Number of test faces."})
    seed: int = field(default=0, metadata={"help": "Dataset seed."})
    regime: Regime = field(
        default="standard",
        metadata={"help": "Label, AU and nuisance settings: 'standard' (FaceWorldConfig()) or 'hard' "
                          "(FaceWorldConfig.hard()); the flags below override single settings."},
    )  # fmt: skip


def _card_data(args: argparse.Namespace) -> dict[str, str] | None:
    """The dataset card's metadata given on the command line (`--license`)."""
    return {"license": args.license} if args.license else None


def _add_command(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str, func: Callable[..., int],
    sections: Sequence[tuple[str | None, type, dict]],
) -> argparse.ArgumentParser:  # fmt: skip
    """A subcommand whose arguments are the fields of each section's dataclass (`(title, class, builder keywords)`;
    a title makes an argument group)."""
    parser = subparsers.add_parser(name, help=help, description=description, formatter_class=FlagHelpFormatter)
    flags = {}
    for title, config_class, keywords in sections:
        target = parser.add_argument_group(title) if title else parser
        flags.update(add_dataclass_arguments(target, config_class, **keywords))
    parser.set_defaults(func=func, flags=flags)
    return parser


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    """`synfer generate`: plan, generate, label and write a synthetic dataset folder (see `generate/`)."""
    _add_command(
        subparsers, "generate", help="generate a labelled synthetic facial-expression dataset (parquet shards + card)",
        description="Plan N samples, generate them with a SynFERPipeline, label them and write a Hugging Face "
        "dataset folder (data/*.parquet, README.md, preview.png). Multi-process: accelerate launch "
        "--num_processes K -m synfer_diffusers.cli generate ..., or torchrun --nproc_per_node K -m "
        "synfer_diffusers.cli generate ...",
        func=run_generate,
        sections=[(None, GenerateOptions, {}), ("the set (recorded in plan.json)", SyntheticSetConfig, {})],
    )  # fmt: skip


def run_generate(args: argparse.Namespace) -> int:
    config = SyntheticSetConfig(**dataclass_values(SyntheticSetConfig, args))  # bad values fail before torch loads
    from .generate import generate_synthetic_dataset

    result = generate_synthetic_dataset(
        config, args.output_dir, model=args.model, voters=args.voters, batch_size=args.batch_size,
        resume=args.resume, overwrite=args.overwrite, push_to_hub=args.push_to_hub, token=args.token,
        private=args.private, card_data=_card_data(args), show_progress=not args.no_progress, wait=args.wait,
        queue_depth=args.queue_depth,
    )  # fmt: skip
    if result.complete:
        logger.info(f"Wrote {result.num_samples} samples in {result.num_shards} shards to {result.output_dir}")
    if result.commit_url:
        logger.info(f"Pushed to {result.commit_url}")
    return 0


def add_relabel_parser(subparsers: argparse._SubParsersAction) -> None:
    """`synfer relabel FOLDER`: recompute the labels of a finished synthetic set from its stored votes."""
    _add_command(
        subparsers, "relabel",
        help="recompute the labels of a finished synthetic set from its stored votes (optionally with new voters)",
        description="Recompute label, label_probs, agreement and keep of a synthetic set folder (made by synfer "
        "generate, or downloaded from the Hub) from its stored votes column, with another aggregation or voting "
        "rule and optionally more voters (run once on the stored images, their votes stored like the others). No "
        "image is regenerated. Rerun after a kill to finish.",
        func=run_relabel,
        sections=[
            (None, RelabelOptions, {}),
            ("voting", SyntheticSetConfig, {"only": VOTING_FIELDS, "unset_default": "the set's own"}),
        ],
    )  # fmt: skip


def run_relabel(args: argparse.Namespace) -> int:
    from .generate.relabel import relabel_synthetic_dataset

    voting = {name: getattr(args, name) for name in VOTING_FIELDS if getattr(args, name) is not None}
    result = relabel_synthetic_dataset(args.output_dir, voters=args.voters, voting=voting, push_to_hub=args.push_to_hub,
                                       token=args.token, private=args.private, wait=args.wait)  # fmt: skip
    summary = result.summary
    logger.info(f"Relabelled {summary.num_rows} rows of {result.output_dir}: {summary.describe()}")
    if result.commit_url:
        logger.info(f"Pushed to {result.commit_url}")
    return 0


def add_faceworld_parser(subparsers: argparse._SubParsersAction) -> None:
    """`synfer faceworld`: FaceWorld train/test splits (see `data/faceworld/`)."""
    _add_command(
        subparsers, "faceworld", help="write FaceWorld train/test splits (parquet)",
        description="Write FaceWorld train/test splits as parquet + dataset card.", func=run_faceworld,
        sections=[
            (None, FaceWorldOptions, {}),
            ("FaceWorld settings (FaceWorldConfig)", FaceWorldConfig, {"unset_default": "the regime's"}),
        ],
    )  # fmt: skip


def run_faceworld(args: argparse.Namespace) -> int:
    config = FaceWorldConfig.from_regime(args.regime, **dataclass_values(FaceWorldConfig, args, skip_unset=True))
    from .data.faceworld import write_faceworld_splits

    splits = write_faceworld_splits(args.output_dir, args.num_train, args.num_test, args.seed, config)
    logger.info(f"Wrote {', '.join(f'{len(d)} {s}' for s, d in splits.items())} faces to {args.output_dir}")
    return 0


def add_build_fetext_parser(subparsers: argparse._SubParsersAction) -> None:
    """`synfer build-fetext`: face images -> an FEText-style training set (see `data/fetext.py`)."""
    _add_command(
        subparsers, "build-fetext", help="turn face images into an FEText-style training set",
        description="Turn face images (an image folder, an imagefolder/parquet folder or a Hub dataset) into an "
        "FEText-style training set: captions, action units in an AU space, labels when known, provenance, dataset "
        "card.",
        func=run_build_fetext,
        sections=[(None, BuildFETextOptions, {}), ("the set (recorded in its plan)", FETextConfig, {})],
    )  # fmt: skip


def run_build_fetext(args: argparse.Namespace) -> int:
    config = FETextConfig(**dataclass_values(FETextConfig, args))
    from .data.fetext import build_fetext_dataset

    result = build_fetext_dataset(
        args.dataset, args.output_dir, config, split=args.split,
        max_samples=args.max_samples, source_name=args.source_name, batch_size=args.batch_size, resume=args.resume,
        overwrite=args.overwrite, card_data=_card_data(args),
        show_progress=not args.no_progress,
    )  # fmt: skip
    logger.info(
        f"Wrote {result.num_samples} of {result.num_source_rows} images ({result.num_shards_written} of "
        f"{result.num_shards} shards this run) to {result.output_dir}; skipped {result.skipped}."
    )
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_generate_parser,
    add_relabel_parser,
    add_faceworld_parser,
    add_build_fetext_parser,
]
"""Parser registrations, one per subcommand."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="synfer", description="SynFER: labelled synthetic facial-expression data.",
        epilog="Every flag is also accepted with underscores (--output_dir), as diffusers' scripts spell them.",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=OneLineArgumentParser)  # fmt: skip
    for add_parser in COMMANDS:
        add_parser(subparsers)
    return parser


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of `synfer <command>` (its help, its flag table)."""
    (subparsers,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return subparsers.choices[command]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `synfer` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        parser.exit(2, f"synfer {args.command}: error: {name_flags(str(error), args.flags)}\n")


if __name__ == "__main__":
    sys.exit(main())
