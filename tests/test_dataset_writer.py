"""The synthetic-set writer on hand-made rows: layout, features, atomic shards, verification, card, preview."""

import errno
import json
from dataclasses import fields

import datasets
import numpy as np
import PIL.Image
import pytest
import yaml

from synfer_diffusers import EXPRESSIONS, AUSpace
from synfer_diffusers.data import writer as writer_module
from synfer_diffusers.data.writer import (
    ShardVerificationError,
    SyntheticRow,
    SyntheticSetWriter,
    shard_specs,
    synthetic_features,
)

PLAN = {"num_samples": 5, "shard_size": 2, "seed": 0, "au_space": AUSpace.disfa12().to_config()}


def _rows(spec, seed=0):
    rng = np.random.default_rng([seed, spec.index])
    return [
        {
            "image": PIL.Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)),
            "text": f"sample {i}",
            "action_units": rng.uniform(0, 5, 12).astype(np.float32).tolist(),
            "target_label": i % 7,
            "label": i % 7,
            "label_probs": np.eye(7, dtype=np.float32)[i % 7].tolist(),
            "agreement": 1.0,
            "keep": True,
            "votes": [{"voter": "target", "probs": np.eye(7, dtype=np.float32)[i % 7].tolist()}],
            "seed": 1000 + i,
            "sample_id": i,
        }
        for i in spec.sample_ids
    ]


def _write_all(folder, plan=PLAN, card=True):
    writer = SyntheticSetWriter(folder, plan)
    writer.prepare(resume=False, overwrite=False)
    for spec in writer.pending_shards():
        writer.write_shard(spec, _rows(spec))
    if card:
        writer.finalize({"num_samples": plan["num_samples"]})
    return writer


def test_the_row_type_and_the_features_are_one_schema():
    names = [f.name for f in fields(SyntheticRow)]
    source_columns = ["source_id", "person_id", "source_image_sha256"]
    assert names[-3:] == source_columns
    assert list(synthetic_features(12)) == names[:-3]  # no source columns
    assert list(synthetic_features(12, edit=True)) == names[:-3] + ["source_id", "source_image_sha256"]
    assert list(synthetic_features(12, edit=True, persons=True)) == names[:-3] + ["person_id", "source_image_sha256"]


def test_with_drop_discarded_a_shard_holds_the_kept_subset_or_nothing(tmp_path):
    writer = SyntheticSetWriter(tmp_path, {**PLAN, "drop_discarded": True})
    writer.prepare(resume=False, overwrite=False)
    first, second, third = writer.shards
    writer.write_shard(first, [])  # every row dropped: a manifest, no file
    writer.write_shard(second, _rows(second)[1:])
    writer.write_shard(third, _rows(third))
    with pytest.raises(ValueError, match="must have sample ids"):
        writer.write_shard(second, _rows(second)[::-1])
    assert writer.pending_shards() == [] and not (tmp_path / first.filename).exists()
    writer.finalize({"num_samples": 2})
    loaded = datasets.load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / ".cache"))
    assert loaded["sample_id"] == [3, 4] and "num_examples: 2" in (tmp_path / "README.md").read_text()
    assert first.filename not in writer.published_files()


def test_shard_grid_is_fixed_by_the_plan():
    specs = shard_specs(5, 2)
    assert [(s.start, s.end) for s in specs] == [(0, 2), (2, 4), (4, 5)]
    assert specs[0].filename == "data/train-00000-of-00003.parquet"


def test_folder_loads_with_the_exact_features_and_card(tmp_path):
    _write_all(tmp_path)
    loaded = datasets.load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / ".cache"))
    assert loaded.features == synthetic_features(12)
    assert loaded["sample_id"] == [0, 1, 2, 3, 4] and loaded.features["label"].names == list(EXPRESSIONS)
    card = (tmp_path / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    assert metadata["dataset_info"]["splits"][0]["num_examples"] == 5
    assert [f["name"] for f in metadata["dataset_info"]["features"]] == list(synthetic_features(12))
    assert "## Limitations" in card and "## Licence" in card and '"shard_size": 2' in card
    assert PIL.Image.open(tmp_path / "preview.png").size == (8 * 8, 8 + 12)
    assert not (tmp_path / ".synfer" / "tmp").exists()


def test_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    writer = SyntheticSetWriter(tmp_path, PLAN)
    writer.prepare(resume=False, overwrite=False)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module.os, "fsync", full_disk)
    spec = writer.shards[0]
    with pytest.raises(OSError, match=r"Could not write data/train-00000-of-00003.parquet.*--resume"):
        writer.write_shard(spec, _rows(spec))
    assert not list((tmp_path / "data").iterdir()) and not list((tmp_path / ".synfer" / "tmp").iterdir())
    assert writer.verify_shard(spec) == "missing"


def test_resume_regenerates_damaged_and_unfinished_shards(tmp_path, caplog):
    writer = _write_all(tmp_path, card=False)
    assert writer.pending_shards() == []
    shard = tmp_path / writer.shards[1].filename
    shard.write_bytes(shard.read_bytes()[:-40])  # truncated
    (tmp_path / ".synfer" / "shards" / "00002.json").unlink()  # killed before the manifest
    with caplog.at_level("WARNING"):
        pending = writer.pending_shards()
    assert [s.index for s in pending] == [1, 2]
    assert "train-00001-of-00003.parquet is damaged" in caplog.text and "00002" not in caplog.text
    flipped = bytearray((tmp_path / writer.shards[0].filename).read_bytes())
    flipped[64] ^= 0xFF  # inside the first data page, not the footer
    (tmp_path / writer.shards[0].filename).write_bytes(bytes(flipped))
    assert writer.verify_shard(writer.shards[0]) == "sha256 differs from its manifest"


def test_foreign_shards_and_files_are_refused(tmp_path):
    other = _write_all(tmp_path / "other", plan={**PLAN, "seed": 1}, card=False)
    writer = _write_all(tmp_path / "mine", card=False)
    foreign = (tmp_path / "other" / other.shards[0].filename).read_bytes()
    (tmp_path / "mine" / writer.shards[0].filename).write_bytes(foreign)
    with pytest.raises(ShardVerificationError, match="another plan"):
        writer.pending_shards()
    writer.write_shard(writer.shards[0], _rows(writer.shards[0]))
    (tmp_path / "mine" / "data" / "extra.parquet").write_bytes(b"x")
    with pytest.raises(ShardVerificationError, match="extra.parquet"):
        writer.pending_shards()


def test_prepare_refuses_other_plans_and_unfinished_runs(tmp_path):
    writer = SyntheticSetWriter(tmp_path, PLAN)
    writer.prepare(resume=False, overwrite=False)
    writer.write_shard(writer.shards[0], _rows(writer.shards[0]))
    with pytest.raises(FileExistsError, match="--resume"):
        SyntheticSetWriter(tmp_path, PLAN).prepare(resume=False, overwrite=False)
    SyntheticSetWriter(tmp_path, PLAN).prepare(resume=True, overwrite=False)  # same plan: fine
    SyntheticSetWriter(tmp_path, PLAN).prepare(resume=False, overwrite=False, is_main_process=False)

    other = {**PLAN, "num_samples": 6}
    for resume in (False, True):
        with pytest.raises(FileExistsError, match=r"different plan \(fields \['num_samples'\]"):
            SyntheticSetWriter(tmp_path, other).prepare(resume=resume, overwrite=False)
    with pytest.raises(ValueError, match="exclude each other"):
        SyntheticSetWriter(tmp_path, other).prepare(resume=True, overwrite=True)
    replaced = SyntheticSetWriter(tmp_path, other)
    replaced.prepare(resume=False, overwrite=True)
    assert json.loads((tmp_path / "plan.json").read_text())["num_samples"] == 6
    assert len(replaced.pending_shards()) == 3 and not list((tmp_path / "data").iterdir())


def test_prepare_refuses_unrelated_and_unwritable_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        SyntheticSetWriter(tmp_path, PLAN).prepare(resume=False, overwrite=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="not a writable folder"):
        SyntheticSetWriter(blocker / "out", PLAN).prepare(resume=False, overwrite=False)


def test_rows_must_match_the_shard(tmp_path):
    writer = SyntheticSetWriter(tmp_path, PLAN)
    writer.prepare(resume=False, overwrite=False)
    with pytest.raises(ValueError, match=r"sample ids \[0, 2\)"):
        writer.write_shard(writer.shards[0], _rows(writer.shards[1]))
