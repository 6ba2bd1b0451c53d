"""`synfer generate` / `generate_synthetic_dataset`: plan, determinism, resume after kill -9, K processes, bad input.

Runs use the no-`--model` path pointed (`$SYNFER_DEFAULT_MODEL`) at an empty folder, i.e. the tiny random stand-in,
at 16x16 pixels and 2 steps, so the CLI subprocesses and in-process calls share one plan and can be compared byte
for byte whatever checkpoint the package embeds (`tests/test_default_model.py` covers the embedded one).
"""

import json
import shutil
import signal
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from synfer_diffusers import EXPRESSIONS, AUSpace
from synfer_diffusers.cli import main
from synfer_diffusers.data.writer import ShardVerificationError, synthetic_features
from synfer_diffusers.generate import (
    SyntheticSetConfig,
    TargetLabeler,
    generate_synthetic_dataset,
    pipeline_inputs,
    plan_sample,
    resolve_pipeline,
    sample_seed,
)
from synthetic_sets import CLI_ARGS, SMALL, _assert_same_dataset, _generate, _load, _shard_digests, run_cli

DISFA = AUSpace.disfa12()
pytestmark = pytest.mark.usefixtures("tiny_stand_in_as_default")


# -- plan -----------------------------------------------------------------------------------------------------


def test_sample_seeds_are_stable_hashes():
    assert sample_seed(0, 0) == sample_seed(0, 0) != sample_seed(0, 1) != sample_seed(1, 0)
    assert sample_seed(0, 0) == 731156050227337514  # fixed across Python versions and platforms
    assert all(0 <= sample_seed(7, i) < 2**63 for i in range(100))


def test_plan_of_a_sample_depends_on_its_seed_only():
    config = SyntheticSetConfig(num_samples=1000, expression_distribution={"happy": 0.25, "sad": 0.75})
    samples = [plan_sample(config, i, DISFA) for i in range(400)]
    assert plan_sample(config, 123, DISFA).prompt == samples[123].prompt
    share = np.mean([s.expression == "happy" for s in samples])
    assert {s.expression for s in samples} == {"happy", "sad"} and 0.15 < share < 0.35
    balanced = {plan_sample(SyntheticSetConfig(), i, DISFA).expression for i in range(200)}
    assert balanced == set(EXPRESSIONS)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "`num_samples` must be an int >= 1"),
        ({"num_samples": 2.5}, "`num_samples`"),
        ({"expression_distribution": {"joy": 1.0}}, "`expression_distribution` must be one of"),
        ({"expression_distribution": {"happy": 0.5, "sad": 0.4}}, "must sum to 1, got 0.9"),
        ({"expression_distribution": {"happy": 1.5, "sad": -0.5}}, r"expression_distribution\['sad'\]"),
        ({"au_policy": "random"}, "`au_policy` must be one of"),
        ({"au_policy": "dataset"}, "`au_dataset` must be given"),
        ({"guidance_scale": float("nan")}, "`guidance_scale`"),
        ({"descriptions": []}, "`descriptions`"),
        ({"shard_size": 0}, "`shard_size`"),
    ],
)
def test_config_rejects_bad_input_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticSetConfig(**kwargs)


def test_without_a_model_the_tiny_stand_in_is_used_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        pipe, name = resolve_pipeline(None)
    assert name == "synfer-tiny-random" and "images are noise" in caplog.text
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    with pytest.raises(ValueError, match="`model`"):
        resolve_pipeline(str(Path(__file__).parent / "no_such_model"))


# -- the dataset ------------------------------------------------------------------------------------------------


def test_rows_have_the_exact_features_and_reproduce_from_their_seed(reference):
    dataset = _load(reference)
    assert dataset.features == synthetic_features(12)
    assert dataset["sample_id"] == list(range(6)) and dataset["seed"] == [sample_seed(0, i) for i in range(6)]
    assert dataset["label"] == dataset["target_label"] and set(dataset["agreement"]) == {1.0}
    assert all(p[label] == 1.0 and sum(p) == 1.0 for p, label in zip(dataset["label_probs"], dataset["label"]))
    row = dataset[3]
    card = (reference / "README.md").read_text()
    assert "images are noise" in card and "synfer-tiny-random" in card and (reference / "preview.png").is_file()

    # image 3 alone, from its seed, by a bare pipeline call
    pipe, _ = resolve_pipeline(None)
    pipe.set_progress_bar_config(disable=True)
    config = SyntheticSetConfig(num_samples=6, shard_size=2, **SMALL)
    alone = pipe(**pipeline_inputs(config, [plan_sample(config, 3, pipe.au_space)]))
    assert alone.prompts[0] == row["text"]
    assert np.allclose([alone.action_units[0][n] for n in AUSpace.disfa12().names], row["action_units"], atol=1e-6)
    difference = np.abs(np.asarray(alone.images[0], dtype=int) - np.asarray(row["image"], dtype=int))
    assert difference.max() <= 1  # batch of 2 vs 1: float rounding at most one grey level


def test_two_processes_give_the_same_dataset(reference, tmp_path):
    first = _generate(tmp_path / "set", process_index=0, num_processes=2)
    assert not first.complete and first.shards_written == 2 and not (tmp_path / "set" / "README.md").exists()
    second = _generate(tmp_path / "set", process_index=1, num_processes=2)
    assert second.complete and second.shards_written == 1
    _assert_same_dataset(tmp_path / "set", reference)
    assert (tmp_path / "set" / "README.md").read_text() == (reference / "README.md").read_text()


@pytest.mark.slow  # `synfer` subprocesses
def test_kill_9_then_resume_equals_an_uninterrupted_run(reference, tmp_path):
    folder, log = tmp_path / "set", tmp_path / "kills.log"
    args = ["generate", "--output-dir", str(folder), "--num-samples", "6", "--shard-size", "2", "--batch-size", "2",
            *CLI_ARGS]  # fmt: skip
    # killed at a deterministic instant (`durable_write_hook.py`): renaming the second shard's manifest, so the
    # first shard is complete and the run is not (no race between polling for a file and the run finishing)
    hook = Path(__file__).parent / "durable_write_hook.py"
    process = run_cli([sys.executable, str(hook), "kill", "replace:/.synfer/shards/00001", str(log), "--", *args],
                      timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert (folder / ".synfer" / "shards" / "00000.json").exists()
    assert not (folder / ".synfer" / "shards" / "00001.json").exists()
    assert not (folder / "README.md").exists()

    with pytest.raises(SystemExit) as error:  # the same command without --resume is refused
        main(args)
    assert error.value.code == 2
    assert main([*args, "--resume"]) == 0
    _assert_same_dataset(folder, reference)


def test_resume_reports_and_repairs_a_corrupt_shard_and_refuses_a_foreign_one(reference, tmp_path, caplog):
    folder = tmp_path / "set"
    shutil.copytree(reference, folder)
    shard = folder / "data" / "train-00001-of-00003.parquet"
    data = bytearray(shard.read_bytes())
    data[64] ^= 0xFF
    shard.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        result = _generate(folder, resume=True, process_index=0, num_processes=1)
    assert "train-00001-of-00003.parquet is damaged" in caplog.text and result.shards_written == 1
    assert _shard_digests(folder) == _shard_digests(reference)

    other = tmp_path / "other"
    config = SyntheticSetConfig(num_samples=2, shard_size=2, seed=1, **SMALL)
    generate_synthetic_dataset(config, other, show_progress=False, process_index=0, num_processes=1)
    shutil.copy(other / "data" / "train-00000-of-00001.parquet", folder / "data" / "train-00000-of-00003.parquet")
    with pytest.raises(ShardVerificationError, match="another plan"):
        _generate(folder, resume=True, process_index=0, num_processes=1)


def test_existing_folder_with_another_plan_needs_overwrite(reference, tmp_path):
    folder = tmp_path / "set"
    shutil.copytree(reference, folder)
    again = _generate(folder, process_index=0, num_processes=1)  # same plan, complete: nothing to do
    assert again.complete and again.shards_written == 0
    for flags in ({}, {"resume": True}):
        with pytest.raises(FileExistsError, match="different plan"):
            _generate(folder, num_samples=4, process_index=0, num_processes=1, **flags)
    assert _shard_digests(folder) == _shard_digests(reference)  # nothing touched
    replaced = _generate(folder, num_samples=4, overwrite=True, process_index=0, num_processes=1)
    assert replaced.complete and _load(folder)["sample_id"] == [0, 1, 2, 3]


def test_au_vectors_from_a_dataset(tmp_path):
    rng = np.random.default_rng(0)
    labels = [1, 2] * 4  # happy, sad
    action_units = rng.uniform(0, 5, (len(labels), 12)).astype(np.float32)
    features = datasets.Features({"action_units": datasets.List(datasets.Value("float32"), length=12),
                                  "label": datasets.ClassLabel(names=list(EXPRESSIONS))})  # fmt: skip
    source = tmp_path / "au_source"
    (source / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"action_units": action_units.tolist(), "label": labels}, features=features
                               ).to_parquet(str(source / "data" / "train-00000-of-00001.parquet"))  # fmt: skip
    config = SyntheticSetConfig(num_samples=4, shard_size=4, au_policy="dataset", au_dataset=str(source),
                                expression_distribution={"happy": 0.5, "sad": 0.5}, **SMALL)  # fmt: skip
    generate_synthetic_dataset(config, tmp_path / "set", show_progress=False, process_index=0, num_processes=1)
    for row in _load(tmp_path / "set"):
        matches = np.abs(action_units - np.asarray(row["action_units"])).max(axis=1) < 1e-6
        assert matches.any() and {labels[i] for i in np.flatnonzero(matches)} == {row["target_label"]}

    uncovered = SyntheticSetConfig(num_samples=4, au_policy="dataset", au_dataset=str(source), **SMALL)
    with pytest.raises(ValueError, match=r"no rows labelled \['neutral'"):
        generate_synthetic_dataset(uncovered, tmp_path / "x", show_progress=False, process_index=0, num_processes=1)

    wide = tmp_path / "au41"
    (wide / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(
        {"action_units": np.zeros((2, 41), np.float32).tolist(), "label": [1, 2]},
        features=datasets.Features({"action_units": datasets.List(datasets.Value("float32"), length=41),
                                    "label": datasets.ClassLabel(names=list(EXPRESSIONS))}),
    ).to_parquet(str(wide / "data" / "train-00000-of-00001.parquet"))  # fmt: skip
    config = SyntheticSetConfig(num_samples=2, au_policy="dataset", au_dataset=str(wide),
                                expression_distribution={"happy": 1.0}, **SMALL)  # fmt: skip
    with pytest.raises(ValueError, match="has 41 AU values per row, but the model's AU space has 12"):
        generate_synthetic_dataset(config, tmp_path / "y", show_progress=False, process_index=0, num_processes=1)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-samples", "0"], "`--num-samples` must be an int >= 1"),
        (["--expressions", "happy=0.7,sad=0.2"], "must sum to 1"),
        (["--expressions", "joy=1"], "`--expressions` must be one of"),
        (["--expressions", "happy"], "`--expressions` must be"),
        (["--push-to-hub", "not a repo"], "`--push-to-hub`"),
    ],
)
def test_cli_reports_bad_input_in_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        main(["generate", "--output-dir", str(tmp_path / "out"), *argv, *CLI_ARGS])
    assert error.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_labeler_hook_is_recorded_in_the_plan(tmp_path):
    class Flipped(TargetLabeler):
        name = "flipped-test"

        def __call__(self, output, target_labels):
            assert len(output.images) == len(target_labels) and output.feranno_probabilities is None
            labels = super().__call__(output, target_labels)
            labels.label = [(t + 1) % 7 for t in target_labels]
            return labels

    _generate(tmp_path / "set", num_samples=2, labeler=Flipped(), process_index=0, num_processes=1)
    dataset = _load(tmp_path / "set")
    assert dataset["label"] == [(t + 1) % 7 for t in dataset["target_label"]]
    assert json.loads((tmp_path / "set" / "plan.json").read_text())["labeler"] == {"name": "flipped-test"}


def test_layout_images_from_a_dataset(reference, tmp_path):
    from synfer_diffusers.data.faceworld import write_faceworld_splits

    write_faceworld_splits(tmp_path / "faces", num_train=4, num_test=1, seed=3, show_progress=False)
    layout = {"layout_dataset": str(tmp_path / "faces"), "layout_strength": 0.5}
    result = _generate(tmp_path / "set", config_kwargs=layout, process_index=0, num_processes=1)
    assert result.complete
    plan = (tmp_path / "set" / "plan.json").read_text()
    assert '"layout_dataset": "' in plan and '"layout_source": {' in plan
    with_layout, without = _load(tmp_path / "set"), _load(reference)
    assert with_layout["seed"] == without["seed"] and with_layout["target_label"] == without["target_label"]
    assert not np.array_equal(np.asarray(with_layout["image"][0]), np.asarray(without["image"][0]))
    with pytest.raises(ValueError, match="layout_dataset"):
        missing = {"layout_dataset": str(tmp_path / "no_such_folder")}
        _generate(tmp_path / "bad", config_kwargs=missing, process_index=0, num_processes=1)
    with pytest.raises(ValueError, match="layout_strength"):
        SyntheticSetConfig(layout_strength=1.5)


def test_feranno_pipelines_get_voted_labels(tmp_path):
    """FERAnno and the target vote. The head is set to always say "happy" and the plan draws happy and sad, so both
    branches of the paper's rule are exercised: unanimous rows (happy) get the target as a one-hot label with
    agreement 1, split rows (sad) agreement 1/2 and no one-hot label."""
    from synfer_diffusers import EXPRESSIONS, FERAnnoHead, SynFERPipeline
    from synfer_diffusers.tiny import make_tiny_components

    components = make_tiny_components(seed=0, sample_size=8)
    head = FERAnnoHead.from_unet(components["unet"])
    final = head.classifier[-1]
    with torch.no_grad():  # FERAnno says "happy" on every image, whatever the features
        final.weight.zero_()
        final.bias.fill_(-5.0)
        final.bias[head.config.label2id["happy"]] = 5.0
    pipe = SynFERPipeline(**components, feranno_head=head)
    config = SyntheticSetConfig(num_samples=6, shard_size=6, expression_distribution={"happy": 0.5, "sad": 0.5},
                                aggregation="paper", **SMALL)  # fmt: skip
    generate_synthetic_dataset(config, tmp_path / "set", pipeline=pipe, batch_size=6, show_progress=False)
    dataset = _load(tmp_path / "set")
    labeler = json.loads((tmp_path / "set" / "plan.json").read_text())["labeler"]
    assert labeler["name"] == "vote:feranno,target" and labeler["voting"]["use_target"]
    probs = np.asarray(dataset["label_probs"])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    happy, sad = EXPRESSIONS.index("happy"), EXPRESSIONS.index("sad")
    targets = list(dataset["target_label"])
    assert set(targets) == {happy, sad}, targets  # both branches below run
    for label, target, agreement, row in zip(dataset["label"], targets, dataset["agreement"], probs):
        assert label == int(row.argmax())
        if target == happy:  # unanimous: FERAnno agrees with the target, one-hot label (the paper's rule)
            assert agreement == 1.0 and label == happy and row.max() == 1.0
        else:  # FERAnno (happy) against the target (sad): split vote, not one-hot
            assert agreement == 0.5 and row.max() < 1.0 and row[happy] > 0 and row[sad] > 0
