"""The `synfer` command line as a user meets it first: `--version`, a fast start without torch, help with defaults,
errors in flag names, underscore spellings, and README tables of every flag that stay in sync with the code.

The parser is built from dataclasses by one builder (`dataclass_cli.add_dataclass_arguments`); these tests read the
parser, never a second list of flags.
"""

import argparse
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import synfer_diffusers
from synfer_diffusers.cli import build_parser, command_parser, main
from synfer_diffusers.dataclass_cli import field_flag, flag_table
from synfer_diffusers.value_checks import check_int, check_number
from synthetic_sets import subprocess_env

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ("generate", "relabel", "faceworld", "build-fetext")
HEAVY_MODULES = ("torch", "diffusers", "transformers", "datasets")


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"synfer {synfer_diffusers.__version__}"


def test_import_and_every_help_load_no_torch():
    """In a fresh interpreter: `import synfer_diffusers`, building the whole parser and printing each command's help
    import none of torch, diffusers, transformers, datasets."""
    code = f"""
import contextlib, io, sys
import synfer_diffusers
from synfer_diffusers.cli import main
for argv in (["--help"], *([command, "--help"] for command in {COMMANDS!r})):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
print(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_public_names_still_import_lazily():
    """Every name of `__all__` is in `dir()` and resolves (importing its module on first use)."""
    assert set(synfer_diffusers.__all__) <= set(dir(synfer_diffusers))
    from synfer_diffusers import SynFERPipeline, VotingConfig

    assert SynFERPipeline.__name__ == "SynFERPipeline" and VotingConfig().label_type == "mixed"
    for name in synfer_diffusers.__all__:
        assert getattr(synfer_diffusers, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        synfer_diffusers.NoSuchName  # noqa: B018


def _flag_actions(command: str) -> list[argparse.Action]:
    return [action for action in command_parser(command)._actions if not isinstance(action, argparse._HelpAction)]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_flag_with_its_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for action in _flag_actions(command):
        shown = action.option_strings[0] if action.option_strings else action.metavar
        assert shown in text, shown
        if not action.required and action.option_strings:
            assert re.search(r"\(default: .+\)$", action.help), (shown, action.help)


@pytest.mark.parametrize(
    "command, flag, default",
    [
        ("generate", "--num-inference-steps", "(default: 25)"),
        ("generate", "--batch-size", "(default: 8)"),
        ("generate", "--expressions", "(default: balanced)"),
        ("generate", "--semantic-guidance-window", "(default: 0.6,1.0)"),
        ("build-fetext", "--shard-size", "(default: 1000)"),
        ("faceworld", "--num-train", "(default: 20000)"),
        ("faceworld", "--label-noise", "(default: the regime's)"),
        ("relabel", "--aggregation", "(default: the set's own)"),
    ],
)
def test_help_states_the_real_default(command, flag, default):
    (action,) = [action for action in _flag_actions(command) if flag in action.option_strings]
    assert action.help.endswith(default)


@pytest.mark.parametrize(
    "argv, flag, field",
    [
        (["generate", "--output-dir", "{tmp}/out", "--num-samples", "0"], "--num-samples", "num_samples"),
        (["generate", "--output-dir", "{tmp}/out", "--expressions", "joy=1"], "--expressions", "expression_distribution"),
        (["faceworld", "--output-dir", "{tmp}/out", "--label-noise", "1.5"], "--label-noise", "label_noise"),
        (["build-fetext", "--output-dir", "{tmp}/out", "--dataset", "{tmp}", "--au-estimator", "{tmp}",
          "--face-box-margin", "2"], "--face-box-margin", "face_box_margin"),
        (["relabel", "{tmp}/no_such_set"], "FOLDER", "output_dir"),
    ],
)  # fmt: skip
def test_a_bad_value_exits_2_with_one_line_naming_the_flag(argv, flag, field, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(tmp=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"synfer {argv[0]}: error: `{flag}`" in err and f"`{field}" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["generate", "faceworld", "build-fetext"])
def test_underscore_spellings_are_accepted(command):
    """`--output_dir` (the spelling of diffusers' scripts and ours) as well as `--output-dir`, for every flag."""
    required = ["--dataset", "d", "--au-estimator", "e"] if command == "build-fetext" else []
    args = build_parser().parse_args([command, "--output_dir", "out", "--seed" if command != "build-fetext"
                                      else "--shard_size", "7", *required])  # fmt: skip
    assert args.output_dir == "out" and 7 in (getattr(args, "seed", None), getattr(args, "shard_size", None))


def test_generate_has_one_flag_per_config_field():
    from synfer_diffusers.generate import SyntheticSetConfig

    flags = {option for action in _flag_actions("generate") for option in action.option_strings}
    assert [field_flag(item) for item in fields(SyntheticSetConfig) if field_flag(item) not in flags] == []


def test_faceworld_flags_override_single_settings_of_the_regime(monkeypatch):
    """Flags left out keep the regime's values; given ones (a tuple as 'a,b') replace them."""
    import synfer_diffusers.data.faceworld as faceworld

    written = {}
    monkeypatch.setattr(faceworld, "write_faceworld_splits", lambda *args: written.update(config=args[4]) or {})
    assert main(["faceworld", "--output-dir", "out", "--regime", "hard", "--scale-range", "0.9,1.1",
                 "--subtle-probability", "0.5"]) == 0  # fmt: skip
    assert written["config"] == faceworld.FaceWorldConfig.hard(scale_range=(0.9, 1.1), subtle_probability=0.5)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_lists_every_flag_as_the_parser_does(command):
    """The README's table of `synfer <command>` equals the one generated from the parser."""
    match = re.search(f"<!-- flags: {command} -->\n(.*?)<!-- end flags -->", README.read_text(), flags=re.S)
    table = flag_table(command_parser(command))
    assert match is not None and match.group(1) == table, f"Replace the README's table of {command} by:\n{table}"


@pytest.mark.parametrize(
    "check, value, message",
    [
        (lambda v: check_int("num_samples", v, 1), 0, "`num_samples` must be an int >= 1, got 0."),
        (lambda v: check_int("num_samples", v, 1), True, "`num_samples` must be an int >= 1, got True."),
        (lambda v: check_int("num_samples", v, 1), 2.0, "`num_samples` must be an int >= 1, got 2.0."),
        (lambda v: check_int("image_size", v, 1, optional=True), -3, "`image_size` must be an int >= 1 or None, got -3."),
        (lambda v: check_number("eta", v, 0, 1), 2.0, "`eta` must be a number in [0, 1], got 2.0."),
        (lambda v: check_number("dropout", v, 0, 1, open_maximum=True), 1.0, "`dropout` must be a number in [0, 1), got 1.0."),
        (lambda v: check_number("edit_strength", v, 0, 1, open_minimum=True), 0, "`edit_strength` must be a number in (0, 1], got 0."),
        (lambda v: check_number("au_scale", v), float("nan"), "`au_scale` must be a number, got nan."),
        (lambda v: check_number("scale", v, 0, open_minimum=True), 0.0, "`scale` must be a number > 0, got 0.0."),
    ],
)  # fmt: skip
def test_number_checks_share_one_message_format(check, value, message):
    with pytest.raises(ValueError) as error:
        check(value)
    assert str(error.value) == message


def test_number_checks_accept_values_in_range():
    check_int("n", 1, 1), check_int("n", None, 1, optional=True), check_number("p", 1.0, 0, 1)
    check_number("p", 0.5, 0, 1, open_minimum=True, open_maximum=True), check_number("x", -1e9)
