"""Table 4's synthetic persons rows (`benchmarks/suite/persons.py`) end to end at a tiny size: a persons set of the
tiny stand-in (2 persons x 7 expressions, 1 step), the plain generated images, tiny random judges, an identity
classifier trained 2 steps on a 16-face FaceWorld (40 test faces: every class), downstream classifiers of 2 steps for
three seeds."""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification

from synfer_diffusers import EXPRESSIONS
from synfer_diffusers.data.faceworld import write_faceworld_splits
from synfer_diffusers.evaluation import images_to_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from suite import common, downstream, persons  # noqa: E402  (the suite package lives beside its script)

CONFIG = replace(
    common.QUICK, edit_num_real=3, edit_persons=2, generation_steps=1, classifier_steps=2, seeds=(0, 1, 2),
    identity_steps=2, semantic_guidance_scale=0.0,  # the stand-in has no guide
)  # fmt: skip


@pytest.fixture(scope="module")
def persons_table(tmp_path_factory, tiny_stand_in_as_default):
    """`table_persons` run once; returns `(result, stages, run_dir, work)`."""
    run_dir = tmp_path_factory.mktemp("suite_run")
    write_faceworld_splits(run_dir / "faceworld", num_train=16, num_test=40, seed=0, show_progress=False)
    for seed, name in enumerate(("judge", "second_judge")):
        torch.manual_seed(seed)
        ResNetForImageClassification(ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=len(EXPRESSIONS),
            id2label=EXPRESSIONS.id2label, label2id=EXPRESSIONS.label2id,
        )).save_pretrained(run_dir / name)  # fmt: skip
    work = run_dir / "work"
    result, stages = persons.table_persons(CONFIG, run_dir, work)
    return result, stages, run_dir, work


def test_persons_rows_and_one_downstream_run_per_seed(persons_table):
    result, stages, _, _ = persons_table
    assert [row["name"] for row in result["rows"]] == list(persons.identity_row_names(CONFIG))
    assert [(row["num_images"], row["persons"]) for row in result["rows"]] == [(14, 2)] * 3
    assert [row["name"] for row in result["downstream"]] == list(persons.PERSONS_ROWS)
    for name in persons.PERSONS_ROWS:
        assert sorted(run["seed"] for run in result["runs"] if run["row"] == name) == [0, 1, 2]
    assert all(row["seeds"] == 3 and row["num_train"] == 14 for row in result["downstream"])
    assert {"persons set", "persons evaluation", "persons classifiers"} <= set(stages)
    text = "\n".join(persons.render_persons(result, CONFIG))
    assert "### Synthetic persons" in text and "| synthetic persons (`--persons 2`) | 14 | 2 | " in text
    assert "| synthetic persons (vote) | 14 | " in text and "| plain generated (vote) | 14 | " in text


def test_identity_consistency_groups_images_by_person_id(persons_table):
    """The persons row is the identity classifier's pairwise consistency within each `person_id` of the set; the same
    images grouped otherwise read differently."""
    from faceworld_identity import identity_consistency, load_identity_classifier

    result, _, run_dir, work = persons_table
    data = downstream.load_edit_set(work / "persons_set", source="person_id")
    images = images_to_tensor(data["image"])
    model = load_identity_classifier(run_dir / "identity_classifier", None)
    row = result["rows"][0]
    measured = {key: row[key] for key in identity_consistency(model, images, data["person_id"])}
    assert identity_consistency(model, images, data["person_id"]) == pytest.approx(measured)
    shuffled = np.random.default_rng(0).permutation(data["person_id"])
    assert identity_consistency(model, images, shuffled) != pytest.approx(measured)


def test_persons_stages_resume_from_the_run_dir(persons_table, monkeypatch):
    """A second run reads every stage back (generation, measurements, classifiers) instead of redoing it."""
    result, _, run_dir, work = persons_table
    monkeypatch.setattr(downstream, "generate_synthetic_dataset", lambda *a, **k: pytest.fail("set regenerated"))
    monkeypatch.setattr(common, "train_and_test", lambda *a, **k: pytest.fail("classifier retrained"))
    monkeypatch.setattr(persons, "persons_measurements", lambda *a, **k: pytest.fail("set remeasured"))
    again, _ = persons.table_persons(CONFIG, run_dir, work)
    assert again == result
