"""Synthetic persons (`synfer generate --persons K`, `generate/persons.py`): each new identity's neutral face edited
into every expression asked for, a `person_id` column, and a person planned the same way in every process and
resume."""

import hashlib
import io

import numpy as np
import pytest

from synfer_diffusers import EXPRESSIONS
from synfer_diffusers.data.writer import synthetic_features
from synfer_diffusers.generate import SyntheticSetConfig, generate_synthetic_dataset
from synthetic_sets import SMALL, _assert_same_dataset, _load

pytestmark = pytest.mark.usefixtures("tiny_stand_in_as_default")
PERSONS = {"persons": 2, "expression_distribution": {"happy": 0.5, "surprise": 0.5}, "shard_size": 1, **SMALL}


def _run(folder, **kwargs):
    return generate_synthetic_dataset(SyntheticSetConfig(**PERSONS), folder, batch_size=1, show_progress=False,
                                      **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def persons_reference(tmp_path_factory):
    """An uninterrupted persons set in one process: 2 persons x 2 expressions, one sample per shard."""
    folder = tmp_path_factory.mktemp("persons") / "set"
    result = _run(folder, process_index=0, num_processes=1)
    assert result.complete and result.num_samples == 4 and result.shards_written == 4
    return folder


def test_persons_set_rows_are_each_person_times_each_expression(persons_reference):
    dataset = _load(persons_reference)
    assert dataset.features == synthetic_features(12, edit=True, persons=True)
    assert "source_id" not in dataset.column_names
    assert dataset["person_id"] == [0, 0, 1, 1]
    assert [EXPRESSIONS[i] for i in dataset["target_label"]] == ["happy", "surprise", "happy", "surprise"]
    sha = dataset["source_image_sha256"]
    assert sha[0] == sha[1] and sha[2] == sha[3] and sha[0] != sha[2]
    card = (persons_reference / "README.md").read_text()
    assert "`person_id`" in card and "2 synthetic persons" in card and "inverted under its own condition" in card


def test_a_persons_faces_are_the_same_across_processes_and_resume(persons_reference, tmp_path):
    """Each sample in its own shard: process 1 of 2 writes person 0's surprise and person 1's, then a resume in one
    process writes the rest; every process generates the persons' neutral faces itself and gets the same ones, so
    the set equals the uninterrupted one byte for byte (the source face's sha256 included)."""
    folder = tmp_path / "set"
    partial = _run(folder, process_index=1, num_processes=2)
    assert not partial.complete and partial.shards_written == 2
    assert _run(folder, resume=True, process_index=0, num_processes=1).complete
    _assert_same_dataset(folder, persons_reference)
    rows = _load(folder)
    faces = {row["person_id"]: row["source_image_sha256"] for row in rows}
    assert len(faces) == 2


def test_person_planning_comes_from_the_persons_seed(persons_reference):
    """The neutral face a person's rows name is the one its own seed generates (its PNG's sha256), whatever the
    sample seeds."""
    from synfer_diffusers.generate.model import resolve_pipeline
    from synfer_diffusers.generate.persons import SyntheticPersons

    pipe, _ = resolve_pipeline(None)
    pipe.set_progress_bar_config(disable=True)
    persons = SyntheticPersons(SyntheticSetConfig(**PERSONS), pipe)
    rows = _load(persons_reference)
    for row in rows:
        buffer = io.BytesIO()
        persons.images[row["person_id"]].save(buffer, format="PNG")
        assert row["source_image_sha256"] == hashlib.sha256(buffer.getvalue()).hexdigest()
    assert np.asarray(persons.images[0]).shape == (16, 16, 3)
