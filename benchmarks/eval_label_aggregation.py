"""Label aggregation in FaceWorld's hard regime, where labels go wrong: target, FERAnno, the paper's vote and
Dawid-Skene over the same stored votes (issue 26), against both suite judges, and optionally downstream.
`--regime standard` measures the same on table 2's plan instead (where targets are mostly right), `--guided` with
semantic guidance (the main job's setting, on which the guide does not vote).

The set is table 5's (the embedded default, AUs drawn from hard-regime train faces by annotated label, no semantic
guidance, voted by FERAnno in the loop + the default's guide + the target), made once; every aggregation reads the
same stored `votes` column, so the rows differ only by how the votes are combined. The judges are the suite's
committed measurement models (neither shaped the images or voted). `--downstream` adds table 5's classifier at 1x
(the first N images, `--seeds`) for FERAnno, vote, plain and tempered (`synfer generate`'s default) Dawid-Skene
labels, tested on hard real test faces' true labels.

`--voter KIND:SPEC` (repeatable, as `synfer relabel --voter`) adds voters to a copy of the set with
`relabel_synthetic_dataset` (run once on the stored images, their votes stored like the others) and reports, from the
copy's stored votes, each aggregation with every voter and without the guide (the voters of a semantically guided
set, on which the guide does not vote), so a new voter is measured before it joins the default.

    python benchmarks/eval_label_aggregation.py --run-dir runs/labels --num-samples 500 --downstream
    python benchmarks/eval_label_aggregation.py --run-dir runs/labels --voter classifier:runs/voter_convnext
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from suite.common import (
    DEFAULT_LABELS,
    FULL,
    JUDGES,
    LABEL_SOURCES,
    agreement_with_judges,
    load_real,
    run_classifiers,
    summarise_runs,
    write_json,
)
from suite.downstream import (
    DownstreamRow,
    labelled_set,
    load_synthetic_set,
    synthetic_set_config,
    training_data,
    voted_labels,
    write_set,
)
from suite.hard_regime import hard_set_config
from suite.prerequisites import MEASUREMENT_MODELS, World, ensure_faceworld

BENCHMARKS = Path(__file__).resolve().parent
DOWNSTREAM_SOURCES = ("feranno", "vote", "dawid_skene", DEFAULT_LABELS)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="Work folder (FaceWorld, the set, classifiers); resumable.")
    parser.add_argument("--num-samples", type=int, default=500, help="Images of the synthetic set.")
    parser.add_argument("--regime", choices=("hard", "standard"), default="hard",
                        help="hard: table 5's set (AUs of hard train faces, no SG); standard: table 2's plan.")  # fmt: skip
    parser.add_argument("--guided", action="store_true",
                        help="standard regime: with semantic guidance (the main job's setting; the guide does not "
                             "vote).")  # fmt: skip
    parser.add_argument("--downstream", action="store_true", help="Hard regime: also train table 5's classifier at 1x.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(FULL.seeds), help="Classifier seeds.")
    parser.add_argument("--voter", action="append", default=[], help="A voter to add (`synfer relabel --voter`).")
    parser.add_argument("--output", default=str(BENCHMARKS / "results" / "label_aggregation.json"))
    args = parser.parse_args(argv)
    if args.regime == "hard" and args.guided:
        parser.error("--guided needs --regime standard (the hard set is unguided, as table 5's)")
    if args.regime == "standard" and args.downstream:
        parser.error("--downstream needs --regime hard (table 5's classifier, tested on hard real faces)")
    run_dir = Path(args.run_dir)
    work = run_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    config = replace(FULL, seeds=tuple(args.seeds))
    if args.regime == "hard":
        ensure_faceworld(run_dir / "faceworld_hard", World(0, config.hard_num_train, config.num_test, regime="hard"))
    for judge in JUDGES:  # the committed measurement models, by the names table 5 reads
        if not (run_dir / judge).exists():
            os.symlink(MEASUREMENT_MODELS / judge, run_dir / judge)
    if args.regime == "hard":
        set_config, name = replace(hard_set_config(config, run_dir), num_samples=args.num_samples), "hard"
    else:
        set_config = synthetic_set_config(config, args.num_samples, args.guided)
        name = "standard_sg" if args.guided else "standard"
    path, generation = write_set(set_config, work, f"{name}_synthetic_set_{args.num_samples}")
    synthetic = labelled_set(path, work, f"_{name}_{args.num_samples}")
    synthetic.pop("feranno_stage")
    results = {
        "regime": args.regime,
        "guided": args.guided,
        "num_samples": args.num_samples,
        "generation_seconds": generation.get("stage_seconds"),
        "commit": generation.get("commit"),
        "label_agreement_with_judges": agreement_with_judges(synthetic, run_dir),
        "changed_from_target": {s: float((synthetic[s] != synthetic["target"]).mean()) for s in LABEL_SOURCES},
    }
    if args.voter:
        results["added_voters"] = added_voter_rows(path, work, args.voter, synthetic, run_dir)
    if args.downstream:
        results["downstream"] = downstream(config, run_dir, work, synthetic, args.num_samples)
    write_json(Path(args.output), results)
    print(json.dumps(results, indent=2))
    return results


def added_voter_rows(path: Path, work: Path, voters: list[str], synthetic: dict, run_dir: Path) -> dict:
    """Agreement with both judges, and the share changed from the target, of each added voter alone and of each
    aggregation of a copy of the set with `voters` added, with every voter and without the guide."""
    from synfer_diffusers.generate.relabel import read_journal, relabel_synthetic_dataset

    key = hashlib.sha256("\n".join(voters).encode()).hexdigest()[:8]
    copy = work / f"{path.name}_plus_voters_{key}"
    if not copy.exists():
        shutil.copytree(path, copy.with_suffix(".tmp"))
        os.replace(copy.with_suffix(".tmp"), copy)
    stored, num_stored = load_synthetic_set(copy), len(synthetic["votes"][0])  # the set's own voters
    if read_journal(copy) is not None or len(stored["votes"][0]) == num_stored:
        relabel_synthetic_dataset(copy, voters=voters)  # resumable: a rerun after a kill finishes the same rewrite
        stored = load_synthetic_set(copy)
    names = tuple(vote["voter"] for vote in stored["votes"][0])
    added = names[num_stored:]
    subsets = {"all": names, "without guide": tuple(name for name in names if name != "guide")}
    labels = {"target": stored["target"], "feranno": synthetic["feranno"], "image": stored["image"]}
    for name in added:
        labels[f"voter {name}"] = np.array([np.argmax(next(v["probs"] for v in row if v["voter"] == name))
                                            for row in stored["votes"]])  # fmt: skip
    for subset, members in subsets.items():
        for aggregation in ("paper", "dawid_skene"):
            labels[f"{aggregation} ({subset})"] = voted_labels(stored["votes"], stored["target"], aggregation, members)
    sources = [key for key in labels if key != "image"]
    return {
        "voters": list(names),
        "label_agreement_with_judges": agreement_with_judges(labels, run_dir, sources),
        "changed_from_target": {s: float((labels[s] != labels["target"]).mean()) for s in sources},
    }


def downstream(config, run_dir: Path, work: Path, synthetic: dict, num: int) -> list[dict]:
    rows = [DownstreamRow(f"hard: synthetic N ({source})", False, 1, source, guided=False) for source in DOWNSTREAM_SOURCES]
    test = load_real(run_dir, "test", ("image", "clean_label"), world="faceworld_hard")
    sets = {row.name: partial(training_data, row, num, {}, {False: synthetic}) for row in rows}
    runs = run_classifiers(sets, test, work / f"label_aggregation_downstream_{num}", config, run_dir)
    return [{"name": row.name, **{k: v for k, v in summarise_runs(runs, row.name).items() if k != "confusion_matrix"}}
            for row in rows]  # fmt: skip


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
