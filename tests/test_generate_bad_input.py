"""Bad input to `synfer generate` and `generate_synthetic_dataset` is refused before anything is written.

Each case runs the CLI in-process (exit 2, one `error:` line naming the flag, no traceback) and, where the input
exists in the API, the API (one of the CLI's user errors); before and after, every file of the output path is
hashed: a refused run leaves it exactly as it was (absent, a file, a foreign folder, or a set with a damaged plan
or manifest).
"""

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from synfer_diffusers.cli import USER_ERRORS, main
from synfer_diffusers.dataclass_cli import field_flag
from synfer_diffusers.generate import DEFAULT_MODEL_DIR, SyntheticSetConfig, generate_synthetic_dataset
from synthetic_sets import REFERENCE_ARGS, SMALL, assert_refused_in_one_line, folder_snapshot

pytestmark = pytest.mark.usefixtures("tiny_stand_in_as_default")


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory):
    """Copies of the embedded default checkpoint, each broken in one way."""
    root = tmp_path_factory.mktemp("models")

    def copy(name: str) -> Path:
        target = root / name
        shutil.copytree(DEFAULT_MODEL_DIR, target)
        return target

    (root / "empty").mkdir()
    weights = copy("truncated") / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (copy("broken_index") / "model_index.json").write_text('{"_class_name": "SynFERPipeline", "unet": [')
    config_path = copy("wrong_types") / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "block_out_channels": "many"}))
    return root


# (case id, extra CLI flags, expected text of the one error line); {models} is the broken-models folder
CLI_CASES = [
    ("height-not-divisible", ["--height", "15"], "`--height` and `--width` must be divisible"),
    ("width-too-large", ["--width", "100000"], "`--width` must be at most"),
    ("height-zero", ["--height", "0"], "`--height` must be an int >= 1 or None"),
    ("steps-zero", ["--num-inference-steps", "0"], "`--num-inference-steps` must be an int >= 1"),
    ("steps-not-a-number", ["--num-inference-steps", "many"], "--num-inference-steps"),
    ("guidance-negative", ["--guidance-scale", "-1"], "`--guidance-scale` must be a number >= 0"),
    ("sg-negative", ["--semantic-guidance-scale", "-1"], "`--semantic-guidance-scale`"),
    ("sg-without-guide", ["--semantic-guidance-scale", "1"], "needs a `guidance_classifier`"),
    ("sg-window", ["--semantic-guidance-window", "0.9,0.1"], "`--semantic-guidance-window`"),
    ("au-scale-nan", ["--au-scale", "nan"], "`--au-scale` must be a number"),
    ("prototype-intensity", ["--prototype-intensity", "9"], "`--prototype-intensity` must be a number in [0, 5]"),
    ("expression-unknown", ["--expressions", "joy=1"], "`--expressions` must be one of"),
    ("expressions-sum", ["--expressions", "happy=0.7,sad=0.2"], "must sum to 1"),
    ("au-policy", ["--au-policy", "random"], "`--au-policy` must be one of"),
    ("au-dataset-missing", ["--au-policy", "dataset"], "`--au-dataset` must be given"),
    ("au-dataset-unreadable", ["--au-policy", "dataset", "--au-dataset", "{tmp}/no_such_set"], "`--au-dataset`"),
    ("descriptions-missing", ["--descriptions-file", "{tmp}/none.txt"], "`--descriptions-file`"),
    ("descriptions-empty", ["--descriptions-file", "{tmp}/empty.txt"], "`--descriptions-file` must be a non-empty list"),
    ("scheduler", ["--scheduler", "PNDMScheduler"], "`--scheduler` must be one of"),
    ("dtype", ["--dtype", "float64"], "`--dtype` must be one of"),
    ("device", ["--device", "tpu"], "`--device` must be"),
    ("eta-without-ddim", ["--scheduler", "EulerDiscreteScheduler", "--eta", "0.5"], "`--eta` > 0 needs"),
    ("voting", ["--label-type", "fuzzy"], "argument --label-type/--label_type: invalid choice"),
    ("model-missing", ["--model", "{models}/no_such_model"], "`--model`"),
    ("model-empty", ["--model", "{models}/empty"], "has no model_index.json"),
    ("model-truncated", ["--model", "{models}/truncated"], "`--model`"),
    ("model-broken-index", ["--model", "{models}/broken_index"], "`--model`"),
    ("model-wrong-types", ["--model", "{models}/wrong_types"], "`--model`"),
    ("voter-missing", ["--voter", "{tmp}/no_such_classifier"], "`--voter`"),
    ("layout-missing", ["--layout-dataset", "{tmp}/no_such_faces"], "`--layout-dataset`"),
    ("shard-size", ["--shard-size", "0"], "`--shard-size` must be an int >= 1"),
    ("batch-size", ["--batch-size", "0"], "`--batch-size` must be an int >= 1"),
    ("repo-id", ["--push-to-hub", "not a repo"], "`--push-to-hub`"),
    ("resume-and-overwrite", ["--resume", "--overwrite"], "`--resume` and `--overwrite` exclude each other"),
    ("persons-zero", ["--persons", "0"], "`--persons` must be an int >= 1 or None, got 0"),
    ("persons-not-a-number", ["--persons", "many"], "--persons"),
    ("persons-and-edit-dataset", ["--persons", "2", "--edit-dataset", "{tmp}/faces"],
     "`--persons` and `--edit-dataset` exclude each other"),
    ("persons-unused-option", ["--persons", "2", "--layout-dataset", "{tmp}/faces"],
     "`--persons`: an edit set does not use ['layout_dataset']"),
    ("persons-too-few", ["--persons", "1", "--expressions", "happy=1"],
     "`--num-samples` 6 exceeds the edit set's 1 faces x 1 expressions = 1"),
]


def _prepare_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")


def _expand(args: list[str], tmp_path: Path, models: Path) -> list[str]:
    return [a.format(tmp=tmp_path, models=models) for a in args]


@pytest.mark.parametrize("case, flags, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_leaves_nothing_behind(case, flags, message, tmp_path, broken_models, capsys):
    _prepare_inputs(tmp_path)
    out = tmp_path / "out"
    argv = ["generate", "--output-dir", str(out), *REFERENCE_ARGS, *_expand(flags, tmp_path, broken_models)]
    assert_refused_in_one_line(main, argv, message, capsys)
    assert not out.exists()


def _reference_copy(reference: Path, target: Path) -> Path:
    shutil.copytree(reference, target)
    (target / "README.md").unlink()  # unfinished (no card, shard 2 without its manifest): a resume verifies shards
    (target / ".synfer" / "shards" / "00002.json").unlink()
    return target


FOLDER_CASES = {
    "output-is-a-file": (lambda ref, out: out.write_text("not a folder"), [], "is not a writable folder"),
    "foreign-files": (
        lambda ref, out: (out.mkdir(), (out / "notes.txt").write_text("mine")), [], "holds no synthetic-set plan"),
    "corrupted-plan": (
        lambda ref, out: (_reference_copy(ref, out) / "plan.json").write_text("{"), ["--resume"],
        "not a readable plan"),
    "corrupted-manifest": (
        lambda ref, out: (_reference_copy(ref, out) / ".synfer" / "shards" / "00001.json").write_text("[1, "),
        ["--resume"], "not a readable shard manifest"),
    "unfinished-without-resume": (lambda ref, out: _reference_copy(ref, out), [], "pass --resume"),
    "other-plan": (lambda ref, out: shutil.copytree(ref, out), ["--seed", "3"], "holds a different plan"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_cli_refuses_a_folder_it_cannot_use_and_leaves_it_unchanged(case, reference, tmp_path, capsys):
    setup, flags, message = FOLDER_CASES[case]
    out = tmp_path / "out"
    setup(reference, out)
    before = folder_snapshot(out)
    assert_refused_in_one_line(main, ["generate", "--output-dir", str(out), *REFERENCE_ARGS, *flags], message, capsys)
    assert folder_snapshot(out) == before


API_CASES = [
    ("width-too-large", {"config": {"width": 100000}}, "`width` must be at most"),
    ("sg-without-guide", {"config": {"semantic_guidance_scale": 1.0}}, "`guidance_classifier`"),
    ("au-feedback-without-estimator", {"config": {"au_feedback_passes": 1}}, "`au_feedback_passes` > 0 needs"),
    ("prototype-intensity", {"config": {"prototype_intensity": 9.0}}, "`prototype_intensity`"),
    ("model-truncated", {"model": "{models}/truncated"}, "`model`"),
    ("model-wrong-types", {"model": "{models}/wrong_types"}, "`model`"),
    ("voter-missing", {"voters": ["{tmp}/no_such_classifier"]}, "`voters`"),
    ("layout-missing", {"config": {"layout_dataset": "{tmp}/no_such_faces"}}, "`layout_dataset`"),
    ("batch-size", {"batch_size": 0}, "`batch_size`"),
    ("repo-id", {"push_to_hub": "not a repo"}, "`push_to_hub`"),
    ("resume-and-overwrite", {"resume": True, "overwrite": True}, "exclude each other"),
    ("pipeline-kwargs", {"pipeline_kwargs": {"guidance_scale": 2.0}}, "`pipeline_kwargs` must not set"),
    ("pipeline-kwargs-unknown", {"pipeline_kwargs": {"strength": 0.5}}, "Not an argument"),
]


@pytest.mark.parametrize("case, kwargs, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_leaves_nothing_behind(case, kwargs, message, tmp_path, broken_models):
    out = tmp_path / "out"
    kwargs = json.loads(json.dumps(kwargs).replace("{tmp}", str(tmp_path)).replace("{models}", str(broken_models)))
    config = SyntheticSetConfig(num_samples=6, shard_size=2, **{**SMALL, **kwargs.pop("config", {})})
    with pytest.raises(USER_ERRORS, match=message.replace("[", r"\[")):
        generate_synthetic_dataset(config, out, show_progress=False, **kwargs)
    assert not out.exists()


def test_every_config_field_is_a_flag(capsys):
    """The `generate` parser is built from the dataclass: a field without a flag cannot exist."""
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert [field_flag(f) for f in fields(SyntheticSetConfig) if field_flag(f) not in text] == []
