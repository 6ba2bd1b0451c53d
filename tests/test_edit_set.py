"""Identity-controlled edit sets (`synfer generate --edit-dataset`): each source face x each expression, source
columns, resumable after kill -9 like any set (the kill technique of test_generate_concurrency.py)."""

import hashlib
import inspect
import json
import signal
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from synfer_diffusers import EXPRESSIONS, SynFERPipeline
from synfer_diffusers.cli import main as cli_main
from synfer_diffusers.data.writer import synthetic_features
from synfer_diffusers.generate import SyntheticSetConfig, generate_synthetic_dataset
from synfer_diffusers.pipelines.synfer.editing import DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE
from synfer_diffusers.pipelines.synfer.mutual_attention import default_start_layer
from synfer_diffusers.tiny import make_tiny_components
from synthetic_sets import (
    CLI_ARGS,
    SMALL,
    _assert_same_dataset,
    _load,
    assert_refused_in_one_line,
    folder_snapshot,
    run_cli,
    with_action_units_as_lists_of_strings,
    with_action_units_as_text,
    with_unreadable_images,
)
from test_editing import guided_pipeline, make_au_regressor

pytestmark = pytest.mark.usefixtures("tiny_stand_in_as_default")
HOOK = Path(__file__).parent / "durable_write_hook.py"
EXPRESSIONS_FLAG = "happy=0.5,surprise=0.5"
SOURCE_AUS = [[0.0] * 4 + [3.0] + [0.0] * 7, [0.0] * 12]  # AU6 = 3 (DISFA-12 order); neutral


def _faces_folder(folder: Path, with_action_units: bool = True) -> Path:
    """Two 24x24 source faces (resized to the set's 16x16) with captions, stored as a parquet dataset."""
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)) for _ in range(2)]
    columns = {"image": images, "text": ["a photo of a young woman", None]}
    if with_action_units:
        columns["action_units"] = SOURCE_AUS
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image()).to_parquet(
        str(folder / "data" / "train-00000-of-00001.parquet")
    )
    return folder


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return _faces_folder(tmp_path_factory.mktemp("faces") / "faces")


@pytest.fixture(scope="module")
def edit_reference(tmp_path_factory, faces, tiny_stand_in_as_default):
    """An uninterrupted edit set: 2 faces x 2 expressions in 2 shards."""
    folder = tmp_path_factory.mktemp("edit_reference") / "set"
    config = SyntheticSetConfig(edit_dataset=str(faces), expression_distribution={"happy": 0.5, "surprise": 0.5},
                                shard_size=2, **SMALL)  # fmt: skip
    result = generate_synthetic_dataset(config, folder, batch_size=2, show_progress=False, process_index=0,
                                        num_processes=1)  # fmt: skip
    assert result.complete and result.num_samples == 4 and result.shards_written == 2
    return folder


def test_edit_set_rows_are_each_face_times_each_expression(edit_reference, faces):
    dataset = _load(edit_reference)
    assert dataset.features == synthetic_features(12, edit=True)
    assert dataset["source_id"] == [0, 0, 1, 1]
    names = dataset.features["target_label"].names
    assert [names[i] for i in dataset["target_label"]] == ["happy", "surprise", "happy", "surprise"]
    stored = datasets.load_dataset(str(faces), split="train").cast_column("image", datasets.Image(decode=False))
    sha = [hashlib.sha256(item["bytes"]).hexdigest() for item in stored["image"]]
    assert dataset["source_image_sha256"] == [sha[0], sha[0], sha[1], sha[1]]
    assert dataset["label"] == dataset["target_label"]  # the tiny stand-in has only the target to vote with
    assert "young woman" in dataset["text"][0] and "surprised" in dataset["text"][1]
    assert dataset[0]["image"].size == (16, 16)
    # the same face edited into two expressions stays closer to itself than to the other face
    pixels = [np.asarray(image, dtype=np.float32) for image in dataset["image"]]
    assert np.abs(pixels[0] - pixels[1]).mean() < np.abs(pixels[0] - pixels[2]).mean()


def test_edit_sets_default_to_the_edit_calls_cfg_and_generated_sets_to_cfg_5(edit_reference):
    edit_defaults = inspect.signature(SynFERPipeline.edit).parameters
    assert SyntheticSetConfig().guidance_scale == 5.0
    assert SyntheticSetConfig(edit_dataset="faces").guidance_scale == edit_defaults["guidance_scale"].default == 2.0
    assert SyntheticSetConfig(edit_dataset="faces", guidance_scale=1.0).guidance_scale == 1.0
    assert SyntheticSetConfig().edit_strength == edit_defaults["edit_strength"].default
    assert json.loads((edit_reference / "plan.json").read_text())["guidance_scale"] == 2.0  # what the edits ran with


def test_edit_sets_default_to_the_edit_calls_levers_and_the_plan_records_them(edit_reference):
    """AU guidance 3 under CFG (none without it, generated sets none) and mutual self-attention in every step from
    the model's first decoder self-attention layer: recorded in the plan as run (a resume must ask for the same) and
    named on the card."""
    assert SyntheticSetConfig(edit_dataset="faces").au_guidance_scale == 3.0
    assert SyntheticSetConfig(persons=2).au_guidance_scale == 3.0
    assert SyntheticSetConfig(edit_dataset="faces", guidance_scale=1.0).au_guidance_scale is None
    assert SyntheticSetConfig(edit_dataset="faces", au_guidance_scale=0.5).au_guidance_scale == 0.5
    with pytest.raises(ValueError, match="`au_feedback_passes` applies to generated sets"):
        SyntheticSetConfig(edit_dataset="faces", au_feedback_passes=1)
    assert SyntheticSetConfig().au_guidance_scale is None
    plan = json.loads((edit_reference / "plan.json").read_text())
    layer = default_start_layer(SynFERPipeline(**make_tiny_components(seed=0)).unet)
    assert (plan["au_guidance_scale"], plan["mutual_self_attention_window"]) == (3.0, [0.0, 1.0])
    assert plan["mutual_self_attention_start_layer"] == layer
    card = (edit_reference / "README.md").read_text()
    assert "AU guidance scale 3.0" in card
    assert f"mutual self-attention over the steps 0%-100% from self-attention layer {layer}" in card


def test_mutual_self_attention_flags_reach_the_plan_and_a_resume_must_repeat_them(tmp_path, faces, capsys):
    out = tmp_path / "set"
    argv = ["generate", "--output-dir", str(out), "--edit-dataset", str(faces), "--expressions", "happy=1", *CLI_ARGS]
    shared = ["--mutual-self-attention-window", "0,0.5", "--mutual-self-attention-start-layer", "0"]
    assert cli_main([*argv, *shared]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["mutual_self_attention_window"], plan["mutual_self_attention_start_layer"]) == ([0.0, 0.5], 0)
    before = folder_snapshot(out)
    assert_refused_in_one_line(cli_main, [*argv, "--resume"], "holds a different plan", capsys)
    assert folder_snapshot(out) == before
    assert cli_main([*argv, "--output-dir", str(tmp_path / "off"), "--mutual-self-attention-window", "off"]) == 0
    assert json.loads((tmp_path / "off" / "plan.json").read_text())["mutual_self_attention_window"] is None
    assert cli_main([*argv, "--output-dir", str(tmp_path / "default")]) == 0
    default = _load(tmp_path / "default")["image"]  # the edits ran what the plans say
    assert _load(tmp_path / "off")["image"] != default and _load(out)["image"] != default
    assert "mutual self-attention over" not in (tmp_path / "off" / "README.md").read_text()


MUTUAL_SELF_ATTENTION_CASES = [
    (["--mutual-self-attention-window", "0.5,0.2"], "`--mutual-self-attention-window` must be (start, end) with"),
    (["--mutual-self-attention-window", "early"], "`--mutual-self-attention-window` must be 'start,end'"),
    (["--mutual-self-attention-start-layer", "-1"], "`--mutual-self-attention-start-layer` must be an int >= 0"),
    (["--mutual-self-attention-start-layer", "9"], "`--mutual-self-attention-start-layer` must be an int in [0, 3]"),
]


@pytest.mark.parametrize(
    ("flags", "message"), MUTUAL_SELF_ATTENTION_CASES, ids=lambda v: "-".join(v)[27:] if isinstance(v, list) else ""
)
def test_bad_mutual_self_attention_flags_exit_2_naming_the_flag(flags, message, tmp_path, faces, capsys):
    argv = ["generate", "--output-dir", str(tmp_path / "set"), "--edit-dataset", str(faces), "--expressions",
            EXPRESSIONS_FLAG, *CLI_ARGS, *flags]  # fmt: skip
    assert_refused_in_one_line(cli_main, argv, message, capsys)
    assert not (tmp_path / "set").exists()


def test_generated_sets_keep_their_columns(reference):
    assert _load(reference).features == synthetic_features(12)


def test_edit_set_source_action_units_estimated_by_the_pipelines_estimator(tmp_path):
    faces = _faces_folder(tmp_path / "faces", with_action_units=False)
    config = SyntheticSetConfig(edit_dataset=str(faces), expression_distribution={"anger": 1.0}, **SMALL)
    with pytest.raises(ValueError, match="`edit_dataset` has no `action_units` column and the model has no"):
        generate_synthetic_dataset(config, tmp_path / "refused", show_progress=False)
    assert not (tmp_path / "refused").exists()
    regressor, processor = make_au_regressor(size=16)
    pipe = SynFERPipeline(**make_tiny_components(seed=0), au_estimator=regressor, au_estimator_image_processor=processor)
    result = generate_synthetic_dataset(config, tmp_path / "set", pipeline=pipe, show_progress=False)
    assert result.complete and result.num_samples == 2
    rows = _load(tmp_path / "set")
    assert rows["source_id"] == [0, 1] and [EXPRESSIONS[i] for i in rows["target_label"]] == ["anger", "anger"]


def test_edit_sets_guide_by_default_where_the_model_has_a_guide(tmp_path, faces):
    """An edit set's semantic guidance defaults to the edit's: DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE with the model's
    guide (which does not vote on the images it steered), none without a guide; generated sets keep 0."""
    config = SyntheticSetConfig(edit_dataset=str(faces), expression_distribution={"fear": 1.0}, **SMALL)
    assert config.semantic_guidance_scale is None and SyntheticSetConfig(**SMALL).semantic_guidance_scale == 0.0
    for name, pipe, scale in (("guided", guided_pipeline(make_tiny_components(seed=0)), DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE),
                              ("plain", None, 0.0)):  # fmt: skip
        generate_synthetic_dataset(config, tmp_path / name, pipeline=pipe, show_progress=False)
        plan = json.loads((tmp_path / name / "plan.json").read_text())
        assert plan["semantic_guidance_scale"] == scale and "guide" not in plan["labeler"]["name"], plan


@pytest.mark.parametrize(
    ("config_kwargs", "match"),
    [
        ({"layout_dataset": "x"}, r"an edit set does not use \['layout_dataset'\]"),
        ({"semantic_guidance_window": (0.5, 1.0)}, r"an edit set does not use \['semantic_guidance_window'\]"),
        ({"semantic_guidance_scale": 1.0}, "`semantic_guidance_scale` > 0 needs a `guidance_classifier`"),
        ({"edit_strength": 0.0}, r"`edit_strength` must be a number in \(0, 1\]"),
        ({"num_samples": 5}, "`num_samples` 5 exceeds the edit set's 2 faces x 2 expressions = 4"),
    ],
)
def test_edit_set_bad_inputs_are_refused_before_writing(tmp_path, faces, config_kwargs, match):
    with pytest.raises(ValueError, match=match):
        config = SyntheticSetConfig(edit_dataset=str(faces), expression_distribution={"happy": 0.5, "sad": 0.5},
                                    **SMALL, **config_kwargs)  # fmt: skip
        generate_synthetic_dataset(config, tmp_path / "set", show_progress=False)
    assert not (tmp_path / "set").exists()


BAD_FACES = {
    "unreadable-image": (with_unreadable_images, "the image of row 0 cannot be read"),
    "action-units-as-text": (with_action_units_as_text, "`action_units` must hold a list of numbers per row"),
    "action-units-as-lists-of-strings": (
        with_action_units_as_lists_of_strings,
        "`action_units` must hold a list of numbers per row",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FACES))
def test_edit_dataset_with_unreadable_images_or_wrong_feature_types_is_refused(case, faces, tmp_path, capsys):
    """`synfer generate --edit-dataset`: exit 2, one line naming the flag, nothing written, the dataset unchanged."""
    change, message = BAD_FACES[case]
    bad = tmp_path / "faces"
    (bad / "data").mkdir(parents=True)
    rows = datasets.Dataset.from_parquet(str(faces / "data" / "train-00000-of-00001.parquet"))
    change(rows).to_parquet(str(bad / "data" / "train-00000-of-00001.parquet"))
    capsys.readouterr()  # the progress bars of the copy
    before = folder_snapshot(bad)
    argv = ["generate", "--output-dir", str(tmp_path / "set"), "--edit-dataset", str(bad), "--expressions",
            EXPRESSIONS_FLAG, *CLI_ARGS]  # fmt: skip
    assert_refused_in_one_line(cli_main, argv, f"`--edit-dataset` {str(bad)!r}: {message}", capsys)
    assert folder_snapshot(bad) == before and not (tmp_path / "set").exists()


@pytest.mark.slow
def test_edit_set_killed_then_resumed_equals_an_uninterrupted_run(edit_reference, faces, tmp_path):
    folder, log = tmp_path / "set", tmp_path / "kills.log"
    command = [sys.executable, "-m", "synfer_diffusers.cli", "generate", "--output-dir", str(folder),
               "--edit-dataset", str(faces), "--expressions", EXPRESSIONS_FLAG, "--shard-size", "2",
               "--batch-size", "2", *CLI_ARGS]  # fmt: skip
    # each atomic write makes 3 events (fsync, rename, fsync of the folder): plan 1-3, shard 0 4-6, ...; the first run
    # dies renaming shard 0 into place, the resumed one after shard 0's manifest
    for event, extra in ((5, []), (6, ["--resume"])):
        hooked = [sys.executable, str(HOOK), "kill", str(event), str(log), "--", *command[3:], *extra]
        result = run_cli(hooked, timeout=300)
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    targets = [line.split(" ", 2)[2] for line in log.read_text().splitlines()]
    assert len(targets) == 2 and "/data/train-00000" in targets[0] and "/shards" in targets[1], targets
    assert not (folder / "README.md").exists()
    finished = run_cli([*command, "--resume"], timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    _assert_same_dataset(folder, edit_reference)
    assert (folder / "README.md").read_text() == (edit_reference / "README.md").read_text()



def test_edit_set_card_names_the_source_columns(edit_reference, faces, reference):
    card = (edit_reference / "README.md").read_text()
    assert "`source_id`" in card and "`source_image_sha256`" in card and f"edits of the faces of `{faces}`" in card
    assert "`source_id`" not in (reference / "README.md").read_text()
