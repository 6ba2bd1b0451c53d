"""Bad input to the training scripts from their command line: exit status 2, one line naming the option, nothing
written, the inputs byte-identical (hashed before and after). Each case runs a script's `main()` as its command does
(`sys.argv`, [`run_from_command_line`]), in this process: the refusals come before any model loads.

- `--resume_from_checkpoint latest` when the newest checkpoint is damaged (a save killed half-way: a file missing,
  a truncated or garbled safetensors file, a truncated `torch.save` file);
- a dataset whose columns have the wrong feature types (`action_units` as strings or lists of strings, the label
  column of floats) or whose images are not images.
"""

import shutil
import sys

import datasets
import pytest

from synthetic_sets import (
    folder_snapshot,
    with_action_units_as_lists_of_strings,
    with_action_units_as_text,
    with_unreadable_images,
)
from training_chain import load_example, pretrained_settings


def _refused(script: str, argv: list[str], monkeypatch, capsys) -> str:
    """Runs `script`'s command line; asserts exit 2, exactly one line on stderr and no traceback; returns it."""
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        from synfer_diffusers.training import run_from_command_line

        run_from_command_line(load_example(script).main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err[-3000:]
    (line,) = err.splitlines()
    assert line.startswith(f"{script}.py: error: "), line
    return line


def _argv(settings: dict) -> list[str]:
    return [x for k, v in settings.items() for x in (f"--{k}", *map(str, v if isinstance(v, list) else [v]))]


DAMAGES = {
    "missing-weights": ("trainable_model_0.safetensors", lambda path: path.unlink(),
                        "trainable_model_0.safetensors is missing"),
    "missing-scheduler-state": ("lr_scheduler.json", lambda path: path.unlink(), "lr_scheduler.json is missing"),
    "truncated-safetensors": ("trainable_model_0.safetensors", lambda path: path.write_bytes(path.read_bytes()[:-64]),
                              "trainable_model_0.safetensors cannot be read"),
    "garbled-safetensors": ("trainable_model_0.safetensors", lambda path: path.write_bytes(b"\0" * 64),
                            "trainable_model_0.safetensors cannot be read"),
    "truncated-random-states": ("random_states_0.pkl", lambda path: path.write_bytes(path.read_bytes()[:40]),
                                "random_states_0.pkl is not a complete torch.save file"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DAMAGES))
@pytest.mark.parametrize("script", ["train_text_to_image", "train_au_adapter"])
def test_resume_from_a_damaged_checkpoint_is_refused(script, case, faceworld_dir, stage_a_dir, tmp_path, monkeypatch,
                                                     capsys):  # fmt: skip
    """The newest checkpoint of a run (stage A's, for both scripts: the check reads files, not models) damaged."""
    output_dir = tmp_path / "run"
    shutil.copytree(stage_a_dir, output_dir)
    (checkpoint,) = sorted(output_dir.glob("checkpoint-*"))[-1:]
    name, damage, message = DAMAGES[case]
    damage(checkpoint / name)
    before = folder_snapshot(output_dir)
    settings = pretrained_settings(faceworld_dir, stage_a_dir, resume_from_checkpoint="latest")
    line = _refused(script, ["--output_dir", str(output_dir), *_argv(settings)], monkeypatch, capsys)
    assert "`resume_from_checkpoint`" in line and checkpoint.name in line and message in line, line
    assert folder_snapshot(output_dir) == before


BAD_DATASETS = {
    "unreadable-images": (with_unreadable_images, "'image': the first image cannot be read"),
    "action-units-as-text": (with_action_units_as_text, "'action_units' must hold a list of 12 AU values (numbers)"),
    "action-units-as-lists-of-strings": (
        with_action_units_as_lists_of_strings,
        "'action_units' must hold a list of 12 AU values (numbers)",
    ),
    "labels-as-floats": (lambda rows: rows.cast_column("label", datasets.Value("float32")),
                         "'label' must be a ClassLabel or strings"),
}  # fmt: skip
MODEL_FLAG = {"train_text_to_image": "--pretrained_model_name_or_path", "train_au_adapter":
              "--pretrained_model_name_or_path", "train_feranno": "--pretrained_model"}  # fmt: skip
"""The option naming each script's model: a folder that holds none (the data is checked before any model loads)."""


@pytest.mark.parametrize(
    "script, case",
    [("train_text_to_image", "unreadable-images"), ("train_au_adapter", "unreadable-images"),
     ("train_feranno", "unreadable-images"), ("train_au_adapter", "action-units-as-text"),
     ("train_au_adapter", "action-units-as-lists-of-strings"), ("train_feranno", "labels-as-floats")],
)  # fmt: skip
def test_a_dataset_with_wrong_feature_types_or_unreadable_images_is_refused(script, case, tmp_path, monkeypatch,
                                                                              capsys):  # fmt: skip
    from synfer_diffusers.data.faceworld import build_faceworld_dataset

    change, message = BAD_DATASETS[case]
    dataset = tmp_path / "dataset"
    change(build_faceworld_dataset(8, seed=0)).save_to_disk(dataset)
    capsys.readouterr()  # the progress bar of the save
    before = folder_snapshot(dataset)
    argv = ["--output_dir", str(tmp_path / "out"), "--dataset_name", str(dataset), "--train_batch_size", "4",
            MODEL_FLAG[script], str(tmp_path)]  # fmt: skip
    line = _refused(script, argv, monkeypatch, capsys)
    assert message in line, line
    assert folder_snapshot(dataset) == before and not (tmp_path / "out").exists()
