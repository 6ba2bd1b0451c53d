"""`synfer faceworld` and `synfer build-fetext` refuse bad input through the `synfer` entry point: exit 2, one line
naming the flag, nothing written, the inputs byte-identical.

The cases call the console script's entry point object (`importlib.metadata`: `synfer = synfer_diffusers.cli:main`)
in this process; one case runs the installed `synfer` script as a real process (exit status and stderr across the
process boundary), the others would only add 8-12 s of imports each.
"""

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from synthetic_sets import folder_snapshot, subprocess_env

(SYNFER,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "synfer"]


def _refused(argv, capsys) -> str:
    """Runs the entry point; asserts exit 2 with exactly one error line and no traceback; returns that line."""
    with pytest.raises(SystemExit) as error:
        SYNFER.load()(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert error.value.code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def small_faceworld(tmp_path_factory):
    """A FaceWorld folder an earlier run wrote (a bad rerun into it must leave it as it was)."""
    from synfer_diffusers.data.faceworld import write_faceworld_splits

    folder = tmp_path_factory.mktemp("faceworld_before") / "fw"
    write_faceworld_splits(folder, num_train=4, num_test=2, seed=0, show_progress=False)
    return folder


FACEWORLD_CASES = {
    "negative-num-train": (["--num-train", "-1"], "`--num-train` must be an int >= 0"),
    "negative-num-test": (["--num-test", "-2"], "`--num-test` must be an int >= 0"),
    "resolution": (["--resolution", "100"], "`--resolution` must be 64 or 128"),
    "label-noise": (["--label-noise", "1.5"], "`--label-noise` must be a number in [0, 1]"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FACEWORLD_CASES))
@pytest.mark.parametrize("target", ["new", "existing"])
def test_faceworld_bad_input(case, target, small_faceworld, tmp_path, capsys):
    flags, message = FACEWORLD_CASES[case]
    out = tmp_path / "out" if target == "new" else small_faceworld
    before = folder_snapshot(out)
    line = _refused(["faceworld", "--output-dir", str(out), "--num-train", "4", "--num-test", "2", *flags], capsys)
    assert line.startswith("synfer faceworld: error: ") and message in line, line
    assert folder_snapshot(out) == before  # new: not created; existing: its shards and card untouched


def test_faceworld_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    line = _refused(["faceworld", "--output-dir", str(tmp_path / "file"), "--num-train", "4", "--num-test", "2"], capsys)
    assert "`--output-dir`" in line and "is not a folder" in line, line
    assert (tmp_path / "file").read_text() == "mine"


def _fetext_args(tmp_path, **overrides):
    args = {"--dataset": str(tmp_path / "images"), "--output-dir": str(tmp_path / "out"),
            "--au-estimator": str(tmp_path / "no-estimator")}  # fmt: skip
    args.update(overrides)
    return ["build-fetext", *[x for kv in args.items() for x in kv]]


FETEXT_CASES = {
    "missing-dataset-folder": ({"--dataset": "{tmp}/missing"}, "`--dataset`: no dataset folder at"),
    "unloadable-estimator": ({}, "`--au-estimator` '{tmp}/no-estimator' could not be loaded"),
    "shard-size": ({"--shard-size": "0"}, "`--shard-size` must be an int >= 1"),
    "max-samples": ({"--max-samples": "-3"}, "`--max-samples` must be an int >= 0 or None"),
    "face-box-margin": ({"--face-box-margin": "2"}, "`--face-box-margin` must be a number in [0, 1]"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FETEXT_CASES))
def test_build_fetext_bad_input(case, tmp_path, capsys):
    flags, message = FETEXT_CASES[case]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not really a png")
    before = folder_snapshot(tmp_path)
    overrides = {k: v.format(tmp=tmp_path) for k, v in flags.items()}
    line = _refused(_fetext_args(tmp_path, **overrides), capsys)
    assert line.startswith("synfer build-fetext: error: ") and message.format(tmp=tmp_path) in line, line
    assert folder_snapshot(tmp_path) == before  # no output folder, the images as they were


def test_the_installed_synfer_script_refuses_in_one_line(tmp_path):
    script = Path(sys.executable).parent / "synfer"
    result = subprocess.run([str(script), "faceworld", "--output-dir", str(tmp_path / "out"), "--num-train", "-1"],
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "`--num-train` must be an int >= 0" in lines[0] and not (tmp_path / "out").exists()
