"""The benchmark suite in one command: the paper's tables on FaceWorld and the speed ratios.

    python benchmarks/run_benchmarks.py            # full: 3-6 h on 2 CPU cores before table 7 and the AU-control
                                                   # and Dawid-Skene rows were added (not yet timed); FaceWorld in
                                                   # runs/ is reused
    python benchmarks/run_benchmarks.py --tables 1 5 6   # some tables; RESULTS.md gathers those recorded at this
                                                   # code commit and names the rest
    python benchmarks/run_benchmarks.py --quick    # about 25 min: small sizes, one seed (checks the suite end to end)
    python benchmarks/run_benchmarks.py --editing-only   # table 4 alone (after its prerequisites)

Tables (printed, and written to `RESULTS.md` with PNG plots and JSON beside it):

1. **Generation** (paper Table 1): expression accuracy by the judge, AU error by the AU regressor and Fréchet
   distance in the judge's feature space, for text only, + AUs and + AUs + semantic guidance
   (`eval_faceworld_generation.py` on the embedded default checkpoint; the text-only row is its own frozen base
   UNet, i.e. the stage-A model); and AU controllability (`eval_au_control.py`: per-AU error generated vs real,
   AU sweeps with Spearman and leak).
2. **Downstream** (the paper's headline): a ResNet classifier trained on real FaceWorld (N images, annotated
   labels), on synthetic sets from `generate_synthetic_dataset` (N and 5N images) and on real N + synthetic N,
   with synthetic labels from the generation target, from FERAnno or from the vote (FERAnno + the checkpoint's
   guide classifier + target, what `synfer generate` writes), and Dawid-Skene labels from the no-SG set's votes; tested on real FaceWorld test faces against their true (clean) labels with the
   package's `evaluate` metric (accuracy, macro-F1, per-class recall, confusion matrix); several seeds.
3. **Speed**: `bench_speed.py` (every ratio, tiny and SD 1.5-size random weights and the FaceWorld default) and
   `bench_generate_writer.py` (`synfer generate` vs bare pipeline calls).
4. **Expression editing** (issue 17): `eval_faceworld_editing.py` on FaceWorld faces against their ground-truth
   renders (expression accuracy, AU error, pixel and judge-feature distance, identity by a FaceWorld identity
   classifier trained here, `faceworld_identity.py`) for plain generation, the layout-initialisation baseline and
   edits; a downstream row, real M + edits of those M faces (`synfer generate --edit-dataset`) vs real M + as
   many generated images; and synthetic persons (`synfer generate --persons K`, K identities x 7 expressions):
   identity consistency within each person (pairwise, by the identity classifier) against plain generated images
   grouped as persons and FaceWorld's own persons, expression accuracy by both judges, and a downstream classifier
   trained on the persons set vs as many plain generated images (every seed). `--editing-only` runs this table alone
   into `results/editing.json`.
5. **Label rectification in the hard regime** (issue 16): a synthetic set whose AUs come from hard-regime FaceWorld
   faces by annotated label (so targets go wrong as with a real AU-annotated dataset), its target / FERAnno / vote
   labels (and Dawid-Skene's, from the same stored votes) scored against both judges, and downstream classifiers on
   hard real N, synthetic N and kN and both, tested on the hard regime's real test faces.
6. **FERAnno vs a stock classifier** (issue 16): `eval_feranno_vs_classifier.py`, FERAnno and the downstream ResNet
   trained on the same annotated faces with the same images seen, at a short budget and at table 2's.
7. **Representation learning** (issue 32): SimCLR (`examples/train_ssl.py`) on real N, synthetic N and kN and real
   + synthetic images, each encoder probed linearly on the same real labelled faces.

The judge and the AU regressor are trained on real FaceWorld only (ResNet seeds 0 and 1, the commands of
`examples/train_faceworld_default.sh`) and never take part in generation; the default checkpoint's guide is a deeper
ResNet with seed 2. A second judge of another family (MobileNetV2, trained on the true labels of FaceWorld seed 1)
scores tables 1 and 5 beside the first. The three are committed in `measurement_models/` with their recipe and
copied into the run directory; they are trained only for another recipe (`--quick`). Every stage stores its result
under `--run-dir` and is skipped when that result exists, so a killed run resumes where it stopped (the synthetic
set shard by shard); delete a stage's JSON to redo it. Every finished table is recorded in
`results/tables/table_N.json` with its code commit (`suite.common.git_commit`), sizes, date and machine; RESULTS.md
gathers the tables recorded at the current code commit with the current sizes, so one suite run may span
invocations, sessions and machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
from suite.common import BENCHMARKS, FULL, QUICK, SuiteConfig, git_commit
from suite.downstream import table_downstream
from suite.editing import editing_targets, plot_editing, render_editing, table_editing
from suite.feranno import feranno_targets, table_feranno
from suite.generation import table_generation
from suite.hard_regime import hard_targets, table_hard_regime
from suite.prerequisites import ensure_measurement_models
from suite.records import gather_records, write_record
from suite.report import (
    RESULT_KEYS,
    TABLE_NAMES,
    downstream_targets,
    generation_targets,
    plot_downstream,
    plot_generation,
    plot_speed,
    print_tables,
    render_results,
    speed_targets,
)
from suite.representation import representation_targets, table_representation
from suite.speed import table_speed

RUN_ORDER = (1, 5, 6, 2, 7, 4, 3)  # the label-rectification tables early, the speed ratios last
TARGETS = {
    1: lambda table, config: generation_targets(table),
    2: downstream_targets,
    3: lambda table, config: speed_targets(table),
    4: editing_targets,
    5: hard_targets,
    6: lambda table, config: feranno_targets(table),
    7: representation_targets,
}
PLOTS = {1: plot_generation, 2: plot_downstream, 3: plot_speed, 4: lambda table, plots: [plot_editing(table, plots)]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one seed, tiny speed rows only")
    parser.add_argument("--run-dir", default=None, help="FaceWorld, measurement models and stage results "
                        "(default: runs for full, shared with train_faceworld_default.sh; runs/quick for --quick)")  # fmt: skip
    parser.add_argument("--output-dir", default=None, help="where RESULTS.md, results/*.png and results/*.json go "
                        "(default: benchmarks for full, the run dir for --quick)")  # fmt: skip
    parser.add_argument("--num-real", type=int, default=None, help="override N of the downstream table")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the downstream seeds")
    parser.add_argument("--tables", type=int, nargs="+", choices=sorted(TABLE_NAMES), default=sorted(TABLE_NAMES),
                        help="the tables to run and report (default: all; " + ", ".join(
                            f"{n} {name}" for n, name in TABLE_NAMES.items()) + ")")  # fmt: skip
    parser.add_argument("--editing-only", action="store_true", help="only table 4 (after its prerequisites): "
                        "writes results/editing.json and results/editing.png, leaves RESULTS.md as it is")  # fmt: skip
    args = parser.parse_args(argv)
    check_args(parser, args)
    config = QUICK if args.quick else FULL
    if args.num_real is not None:
        config = replace(config, num_real=args.num_real)
    if args.seeds is not None:
        config = replace(config, seeds=tuple(args.seeds))
    run_dir = Path(args.run_dir or ("runs/quick" if args.quick else "runs"))
    output_dir = Path(args.output_dir or (run_dir if args.quick else BENCHMARKS))
    work = run_dir / "benchmarks" / f"{config.mode}_n{config.num_real}"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    ensure_measurement_models(config, run_dir)
    if args.editing_only:
        return editing_only(config, run_dir, work, output_dir)
    provenance = {
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)",
    }
    results_dir = output_dir / "results"
    record = partial(write_record, results_dir, config=config, provenance=provenance)
    computed = run_tables(set(args.tables), config, run_dir, work, record)
    records = gather_records(results_dir, TABLE_NAMES, config, provenance["commit"])
    records |= {number: {**provenance, "result": table} for number, table in computed.items()}
    tables = {number: records[number]["result"] for number in sorted(records)}
    results = {
        "config": asdict(config),
        **provenance,
        "tables": sorted(tables),
        "measured": {number: {k: records[number][k] for k in ("date", "machine")} for number in sorted(records)},
        "stages": table_stages(tables),
        **{RESULT_KEYS[number]: table for number, table in tables.items()},
    }
    checks = [check for number in sorted(tables) for check in TARGETS[number](tables[number], config)]
    results_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        name for number in sorted(tables) if number in PLOTS for name in PLOTS[number](tables[number], results_dir)
    ]
    (results_dir / "benchmarks.json").write_text(json.dumps(results, indent=2))
    (output_dir / "RESULTS.md").write_text(render_results(results, checks, config, run_dir))
    print_tables(checks)
    print(f"\nwrote {output_dir / 'RESULTS.md'} and {', '.join(plots)} in {results_dir}")
    return results


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Ends the program (exit 2, one line naming the flag) on values the suite cannot use, before anything runs."""
    if args.num_real is not None and args.num_real < 7:
        parser.error(f"argument --num-real: must be >= 7 (one face per expression), got {args.num_real}")
    if args.seeds is not None and (min(args.seeds) < 0 or len(set(args.seeds)) < len(args.seeds)):
        parser.error(f"argument --seeds: must be distinct ints >= 0, got {args.seeds}")
    for flag, folder in (("--run-dir", args.run_dir), ("--output-dir", args.output_dir)):
        if folder is not None and os.path.exists(folder) and not os.path.isdir(folder):
            parser.error(f"argument {flag}: {folder!r} exists and is not a folder")


def run_tables(
    selected: set[int], config: SuiteConfig, run_dir: Path, work: Path, record: Callable[[int, dict], None]
) -> dict[int, dict]:
    """The selected tables' results by number, computed in `RUN_ORDER`; `record(number, table)` as each finishes,
    so a later table's failure, a kill or a session's end keeps the tables already measured."""
    compute = {
        1: lambda: table_generation(config, run_dir, work),
        2: lambda: table_downstream(config, run_dir, work),
        3: lambda: table_speed(config, work),
        4: lambda: table_editing(config, run_dir, work),
        5: lambda: table_hard_regime(config, run_dir, work),
        6: lambda: table_feranno(config, run_dir, work),
        7: lambda: table_representation(config, run_dir, work),
    }
    tables = {}
    for number in (number for number in RUN_ORDER if number in selected):
        tables[number] = compute[number]()
        record(number, tables[number])
    return tables


def table_stages(tables: dict[int, dict]) -> dict[str, dict]:
    """Each stage's seconds and commit, named `table N (stage)`."""
    stages = {}
    for number, table in sorted(tables.items()):
        if number == 1:
            stages["table 1 (generation)"] = table
            if "au_levers" in table:
                stages["table 1 (AU levers)"] = table["au_levers"]
        elif number == 3:
            stages |= {
                "table 3 (speed ratios)": table["speed"],
                "table 3 (generate vs bare pipeline)": table["writer"],
            }
        elif number == 6:
            stages["table 6 (FERAnno vs stock classifier)"] = table
        else:
            stages |= {f"table {number} ({name})": stage for name, stage in table["stages"].items()}
    return stages


def editing_only(config: SuiteConfig, run_dir: Path, work: Path, output_dir: Path) -> dict:
    """`--editing-only`: table 4 alone, into `results/editing.json` (with its config, commit and targets) and
    `results/editing.png`; its section of RESULTS.md is printed."""
    editing = table_editing(config, run_dir, work)
    checks = editing_targets(editing, config)
    result = {"config": asdict(config), "commit": git_commit(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "targets": [{"target": n, "measured": v, "met": met} for n, v, met in checks], **editing}  # fmt: skip
    (output_dir / "results").mkdir(parents=True, exist_ok=True)
    (output_dir / "results" / "editing.json").write_text(json.dumps(result, indent=2))
    plot_editing(editing, output_dir / "results")
    print("\n".join(render_editing(editing, config)))
    print_tables(checks)
    return result


if __name__ == "__main__":
    main()
