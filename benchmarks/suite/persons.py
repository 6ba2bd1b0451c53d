"""Table 4's synthetic persons rows: a persons set (`synfer generate --persons K`: K new identities, each a neutral
face edited into the seven expressions) against as many plain generated images grouped as if they were persons.

Identity consistency is read by the FaceWorld identity classifier (`faceworld_identity.py`), expression accuracy by
the judge and the second judge; all three are trained on real FaceWorld and never generate, steer or label a set (the
embedded default, its guide and FERAnno do). Downstream, a classifier trained on each set alone is tested on the real
FaceWorld test faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from synfer_diffusers import EXPRESSIONS
from synfer_diffusers.evaluation import evaluate_expression_classifier, images_to_tensor
from synfer_diffusers.generate import SyntheticSetConfig

from .common import (
    JUDGES,
    SuiteConfig,
    cached,
    combined_stage,
    downstream_table,
    load_real,
    run_classifiers,
    summarise_runs,
)
from .downstream import generated_set, load_edit_set, load_synthetic_set, write_set

PERSONS_ROWS = ("synthetic persons (vote)", "plain generated (vote)")
"""The downstream rows: each set alone, labelled by the paper's vote over its stored votes."""
RENDER_SEED = 12345
"""FaceWorld seed of the reference renders (table 4's source faces)."""


def identity_row_names(config: SuiteConfig) -> tuple[str, str, str]:
    """The persons set, the plain generated images grouped as persons, and FaceWorld's own persons (reference)."""
    return (
        f"synthetic persons (`--persons {config.edit_persons}`)",
        f"plain generated, {len(EXPRESSIONS)} consecutive samples as a person",
        f"FaceWorld renders, one face in {len(EXPRESSIONS)} expressions (reference)",
    )


def table_persons(config: SuiteConfig, run_dir: Path, work: Path) -> tuple[dict, dict[str, dict]]:
    """The persons rows (identity consistency, expression accuracy by both judges) and the downstream rows
    `PERSONS_ROWS` over `config.seeds`, with the stages' cached results by name. The plain images are the first 7K
    of table 4's generated set, grouped the way the persons set is: sample `i` is "person" `i // 7`."""
    persons_config = SyntheticSetConfig(persons=config.edit_persons, seed=0,
                                        num_inference_steps=config.generation_steps)  # fmt: skip
    persons_path, persons_stage = write_set(persons_config, work, "persons_set")
    fresh_path, fresh_stage = generated_set(config, work)
    persons = load_edit_set(persons_path, source="person_id")
    size, fresh = len(persons["image"]), load_synthetic_set(fresh_path)
    if len(fresh["image"]) < size:
        raise ValueError(f"`edit_persons`: {size} persons images need as many generated ones, table 4 generates "
                         f"6 * edit_num_real = {len(fresh['image'])}.")  # fmt: skip
    plain = {key: fresh[key][:size] for key in ("image", "target", "vote")}
    plain["person_id"] = np.arange(size) // (size // config.edit_persons)
    names = identity_row_names(config)

    def measure() -> dict:
        groups = {names[0]: persons, names[1]: plain, names[2]: faceworld_persons(config.edit_persons)}
        return {"rows": persons_measurements(groups, run_dir, config.identity_steps)}

    measured = cached(work / "persons_eval.json", measure)
    test = load_real(run_dir, "test", ("image", "clean_label"))
    sets = {name: lambda data=data: {"image": data["image"], "label": data["vote"]}
            for name, data in zip(PERSONS_ROWS, (persons, plain))}  # fmt: skip
    runs = run_classifiers(sets, test, work / "persons_downstream", config, run_dir, suffix=f"_k{config.edit_persons}")
    result = {"rows": measured["rows"], "downstream": [{"name": name, **summarise_runs(runs, name)}
                                                       for name in PERSONS_ROWS], "runs": runs}  # fmt: skip
    stages = {"persons set": persons_stage, "generated set": fresh_stage, "persons evaluation": measured,
              "persons classifiers": combined_stage(runs)}  # fmt: skip
    return result, stages


def faceworld_persons(count: int) -> dict[str, np.ndarray | torch.Tensor]:
    """`count` FaceWorld faces (seed `RENDER_SEED`) each rendered with the seven expressions' prototypes: the same
    person for sure, so what identity consistency reads at best with the classifier."""
    from eval_faceworld_editing import edit_tasks  # the benchmark script beside the suite (on sys.path)

    tasks = edit_tasks(count, RENDER_SEED)
    return {"image": tasks.truths, "person_id": np.arange(len(tasks.names)) // len(EXPRESSIONS),
            "target": np.array([EXPRESSIONS.index(name) for name in tasks.names])}  # fmt: skip


def persons_measurements(groups: dict[str, dict], run_dir: Path, identity_steps: int) -> list[dict]:
    """One row per named group (`image`, `person_id`, `target` label): its identity consistency by the run's
    identity classifier (trained on the run's FaceWorld first when there is none) and its expression accuracy by
    each judge of `JUDGES`."""
    from faceworld_identity import identity_consistency, load_identity_classifier

    identity = load_identity_classifier(run_dir / "identity_classifier", str(run_dir / "faceworld"), identity_steps)
    judges = {name: AutoModelForImageClassification.from_pretrained(run_dir / name).eval() for name in JUDGES}
    rows = []
    for name, group in groups.items():
        images = images_to_tensor(group["image"])  # (N, 3, H, W) in [0, 1]
        accuracy = {f"{judge}_accuracy": evaluate_expression_classifier(model, images, group["target"])["accuracy"]
                    for judge, model in judges.items()}  # fmt: skip
        person_ids = np.asarray(group["person_id"])
        rows.append({"name": name, "num_images": len(images), "persons": len(np.unique(person_ids)),
                     **identity_consistency(identity, images, person_ids), **accuracy})  # fmt: skip
    return rows


def render_persons(persons: dict, config: SuiteConfig) -> list[str]:
    """Table 4's persons part of RESULTS.md."""
    k, e = config.edit_persons, len(EXPRESSIONS)
    return [
        "### Synthetic persons",
        "",
        f"`synfer generate --persons {k}` with its defaults (seed 0, {config.generation_steps} steps): {k} new "
        f"identities, each a neutral face generated from its own seed, then edited into the {e} expressions by the "
        f"default edit ({k * e} images). Plain generated: the first {k * e} images of the generated set above (table "
        f"2's plan: CFG 5, semantic guidance), samples {e}p to {e}p + {e - 1} taken as person p, as the persons set's rows are laid out. "
        f"FaceWorld renders: {k} FaceWorld faces (seed {RENDER_SEED}) each rendered with the {e} prototypes, truly "
        "one person each. Identity consistency by the identity classifier above: over every pair of images of one "
        "person, `attr. agree` is the share of the 8 identity attributes it reads the same on both, `all agree` the "
        "share of pairs with all 8 the same and `identity cos` the cosine similarity of its features; each is "
        "averaged over a person's pairs, then over persons (plain generated images show what no identity keeping gives, the renders "
        "what this classifier reads at best). Expression accuracy: the judge's (second judge's) label equals the "
        "target expression. The measurement models never take part in generation (the embedded default, its guide "
        "and FERAnno do).",
        "",
        "| row | images | persons | identity attr. agree | identity all agree | identity cos | expression acc. | "
        "by the second judge |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {r['name']} | {r['num_images']} | {r['persons']} | {r['identity_attribute_agreement']:.1%} | "
          f"{r['identity_all_attributes_agreement']:.1%} | {r['identity_cosine']:.3f} | {r['judge_accuracy']:.1%} | "
          f"{r['second_judge_accuracy']:.1%} |" for r in persons["rows"]],
        "",
        f"Downstream (the classifier and steps of table 2, seeds {list(config.seeds)}, the same real test faces): "
        f"each set alone, {k * e} images labelled by the paper's vote over their stored votes.",
        "",
        *downstream_table(persons["downstream"]),
        "",
    ]  # fmt: skip
