"""Set-level label aggregation and `synfer relabel`: labels recomputed from the stored votes of a written set, a
custom voter added end to end (API and CLI), finalisation killed at every durable write event and rerun, bad input
refused before anything is written."""

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import DatasetCard

import fork_server
from synfer_diffusers import FERAnnoHead, SynFERPipeline
from synfer_diffusers.cli import main as cli
from synfer_diffusers.facs import EXPRESSIONS
from synfer_diffusers.generate import OutputLock, SyntheticSetConfig, generate_synthetic_dataset
from synfer_diffusers.generate.relabel import JOURNAL_FILE, relabel_synthetic_dataset
from synfer_diffusers.labels import CallableVoter, EnsembleVoter, VoteBatch, VotingConfig
from synfer_diffusers.tiny import make_tiny_components

SMALL = {"num_inference_steps": 2, "height": 16, "width": 16}


def contrarian(images):
    """A custom voter for the CLI tests (`callable:test_relabel:contrarian`): votes 'anger' on every image."""
    return torch.nn.functional.one_hot(torch.full((len(images),), EXPRESSIONS.index("anger")), 7).float()


def feranno_pipe():
    components = make_tiny_components(seed=0, sample_size=8)
    pipe = SynFERPipeline(**components, feranno_head=FERAnnoHead.from_unet(components["unet"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_set(folder, aggregation="paper", voters=(), num_samples=8):
    config = SyntheticSetConfig(num_samples=num_samples, shard_size=3, aggregation=aggregation, **SMALL)
    return generate_synthetic_dataset(config, folder, pipeline=feranno_pipe(), batch_size=4, voters=voters,
                                      show_progress=False, process_index=0, num_processes=1)  # fmt: skip


def rows(folder):
    tables = [pq.read_table(path) for path in sorted((Path(folder) / "data").glob("*.parquet"))]
    return {name: sum((t.column(name).to_pylist() for t in tables), []) for name in tables[0].column_names}


def digests(folder):
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".synfer" not in p.parts}  # fmt: skip


@pytest.fixture(scope="module")
def paper_set(tmp_path_factory):
    """8 samples in 3 shards, voted by in-loop FERAnno + target under the paper's rule."""
    folder = tmp_path_factory.mktemp("paper") / "set"
    make_set(folder)
    return folder


@pytest.fixture
def copy_of(tmp_path):
    def copy(folder):
        target = tmp_path / "copy"
        shutil.copytree(folder, target)
        return target

    return copy


def expected_labels(folder, voters, aggregation, tempering=SyntheticSetConfig().classifier_tempering):
    """What relabelling `folder` should give: its stored votes plus `voters`' votes, aggregated afresh (Dawid-Skene
    tempered as `synfer generate` does by default)."""
    stored = rows(folder)
    names = [vote["voter"] for vote in stored["votes"][0]]
    probabilities = {n: torch.tensor([[v["probs"] for v in row if v["voter"] == n][0] for row in stored["votes"]])
                     for n in names if n != "target"}  # fmt: skip
    batch = VoteBatch(images=[None] * len(stored["votes"]))  # the test's voters only count the images
    probabilities.update({voter.name: voter.vote(batch) for voter in voters})
    ensemble = EnsembleVoter(config=VotingConfig(probability_voters=tuple(probabilities), use_target=True,
                                                 aggregation=aggregation, classifier_tempering=tempering))  # fmt: skip
    targets = [EXPRESSIONS[i] for i in stored["target_label"]]
    return ensemble(probabilities=probabilities, targets=targets)


def test_relabel_recomputes_labels_from_stored_votes_with_an_added_voter(paper_set, copy_of):
    folder = copy_of(paper_set)
    before = rows(folder)
    voter = CallableVoter(contrarian, name="contrarian")
    result = relabel_synthetic_dataset(folder, voters=[voter], voting={"aggregation": "dawid_skene"})
    after = rows(folder)
    expected = expected_labels(paper_set, [voter], "dawid_skene")
    assert after["label"] == expected.label_ids.tolist()
    assert np.allclose(after["label_probs"], expected.probabilities.numpy())
    assert [[v["voter"] for v in row] for row in after["votes"]] == [["feranno", "target", "contrarian"]] * 8  # added votes appended
    for column in ("image", "text", "action_units", "target_label", "seed", "sample_id"):
        assert after[column] == before[column], column  # nothing regenerated
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["aggregation"] == "dawid_skene" and plan["relabel"]["added_voters"][0]["name"] == "contrarian"
    assert set(result.summary.reliability) == {"feranno", "contrarian", "target"}
    card = (folder / "README.md").read_text()
    assert "Dawid-Skene" in card and "estimated probability that each voter's vote is right: feranno" in card
    metadata = DatasetCard.load(folder / "README.md").data
    assert metadata.annotations_creators == ["machine-generated"] and metadata.pretty_name  # kept by the relabel
    assert metadata.license == DatasetCard.load(paper_set / "README.md").data.license
    assert not (folder / JOURNAL_FILE).exists()
    # plain Dawid-Skene (tempering 1) is one option away, and gives other probabilities than the tempered default
    relabel_synthetic_dataset(folder, voting={"classifier_tempering": 1.0})
    plain = expected_labels(paper_set, [voter], "dawid_skene", tempering=1.0).probabilities.numpy()
    assert np.allclose(rows(folder)["label_probs"], plain) and not np.allclose(plain, expected.probabilities.numpy())
    # relabelling again with the paper's rule from the new stored votes gives the paper's labels of those votes
    relabel_synthetic_dataset(folder, voting={"aggregation": "paper"})
    assert rows(folder)["label"] == expected_labels(paper_set, [voter], "paper").label_ids.tolist()


def test_generate_with_dawid_skene_finalises_the_whole_set(paper_set, tmp_path):
    folder = tmp_path / "ds"
    make_set(folder, aggregation="dawid_skene")
    labels = rows(folder)
    assert labels["votes"] == rows(paper_set)["votes"]  # the same images and votes as the paper-rule set
    assert labels["label"] == expected_labels(paper_set, [], "dawid_skene").label_ids.tolist()
    assert "aggregated over the whole set by dawid_skene" in (folder / "README.md").read_text()
    assert not (folder / JOURNAL_FILE).exists() and not (folder / ".synfer" / "relabel").exists()


def test_finalisation_killed_at_every_write_event_then_rerun_equals_an_uninterrupted_run(paper_set, tmp_path):
    """A stop at each durable write event of a relabel (fsync and rename, as a kill -9 lands), then the same relabel
    again: the folder equals an uninterrupted relabel's, byte for byte."""
    voter = CallableVoter(contrarian, name="contrarian")
    reference = tmp_path / "reference"
    shutil.copytree(paper_set, reference)
    relabel_synthetic_dataset(reference, voters=[voter], voting={"aggregation": "dawid_skene"})
    events = count_events(paper_set, tmp_path / "count", voter)
    assert events > 20
    for stop_at in range(1, events + 1):
        folder = tmp_path / f"stop{stop_at}"
        shutil.copytree(paper_set, folder)
        with pytest.raises(Killed), stopping_at(stop_at):
            relabel_synthetic_dataset(folder, voters=[voter], voting={"aggregation": "dawid_skene"})
        relabel_synthetic_dataset(folder, voters=[voter], voting={"aggregation": "dawid_skene"})
        assert digests(folder) == digests(reference), stop_at
        shutil.rmtree(folder)


class Killed(BaseException):
    """Stands for a SIGKILL: not an `Exception`, so no handler of the package catches it."""


class stopping_at:
    """Raises [`Killed`] at the `n`-th durable write event (an `os.fsync` or `os.replace`); counts them."""

    def __init__(self, n=None):
        self.n, self.count = n, 0

    def __enter__(self):
        self.original = os.fsync, os.replace

        def event(function):
            def wrapped(*args, **kwargs):
                self.count += 1
                if self.count == self.n:
                    raise Killed()
                return function(*args, **kwargs)

            return wrapped

        os.fsync, os.replace = event(self.original[0]), event(self.original[1])
        return self

    def __exit__(self, *exc_info):
        os.fsync, os.replace = self.original


def count_events(source, folder, voter):
    shutil.copytree(source, folder)
    with stopping_at() as counter:
        relabel_synthetic_dataset(folder, voters=[voter], voting={"aggregation": "dawid_skene"})
    return counter.count


def test_cli_relabel_and_generate_take_a_custom_voter(paper_set, copy_of, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="synfer_diffusers")
    folder = copy_of(paper_set)
    assert cli(["relabel", str(folder), "--voter", "callable:test_relabel:contrarian", "--aggregation",
                "dawid_skene"]) == 0  # fmt: skip
    assert [v["voter"] for v in rows(folder)["votes"][0]] == ["feranno", "target", "contrarian"]
    assert "Relabelled 8 rows" in caplog.text
    monkeypatch.setenv("SYNFER_DEFAULT_MODEL", str(tmp_path / "no_default_model"))
    (tmp_path / "no_default_model").mkdir()
    assert cli(["generate", "--output-dir", str(tmp_path / "gen"), "--num-samples", "2", "--num-inference-steps", "2",
                "--height", "16", "--width", "16", "--no-progress", "--voter", "callable:test_relabel:contrarian"]) == 0  # fmt: skip
    assert [v["voter"] for v in rows(tmp_path / "gen")["votes"][0]] == ["contrarian", "target"]


def break_votes(folder):
    path = sorted((folder / "data").glob("*.parquet"))[0]
    table = pq.read_table(path)
    pq.write_table(table.drop(["votes"]), path)


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda f: None, ["--voter", "callable:no_such_module:f"], "could not be loaded as a callable voter"),
        (lambda f: None, ["--voter", "/no/such/classifier"], "could not be loaded as a classifier voter"),
        (lambda f: None, ["--aggregation", "majority"], "argument --aggregation: invalid choice: 'majority'"),
        (lambda f: None, ["--agreement-threshold", "2"], "`--agreement-threshold` must be a number in [0, 1]"),
        (lambda f: (f / "plan.json").unlink(), [], "holds no plan.json: not a synthetic set"),
        (break_votes, [], "has no `votes` column"),
    ],
)
def test_cli_relabel_refuses_bad_input_in_one_line_and_leaves_the_folder_as_it_was(
    setup, args, message, paper_set, copy_of, capsys
):
    folder = copy_of(paper_set)
    setup(folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        cli(["relabel", str(folder), *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_cli_relabel_refuses_a_folder_another_run_holds(paper_set, copy_of, capsys):
    folder = copy_of(paper_set)
    before = digests(folder)
    with OutputLock(folder):
        with pytest.raises(SystemExit) as exit_info:
            cli(["relabel", str(folder), "--aggregation", "dawid_skene"])
    assert exit_info.value.code == 2 and "is being written by another run" in capsys.readouterr().err
    assert digests(folder) == before
    with pytest.raises(SystemExit):
        cli(["relabel", str(folder / "missing")])
    assert not (folder / "missing").exists()


@pytest.mark.slow
def test_two_torchrun_processes_finalise_once_and_equal_one_process(tmp_path, monkeypatch):
    """Dawid-Skene under `torchrun --nproc_per_node 2`: both processes write shards, process 0 alone finalises after
    the barrier, and the set equals a one-process run byte for byte."""
    monkeypatch.setenv("SYNFER_DEFAULT_MODEL", str(tmp_path / "no_default_model"))
    (tmp_path / "no_default_model").mkdir()
    args = ["--num-samples", "6", "--shard-size", "2", "--batch-size", "2", "--num-inference-steps", "2",
            "--height", "16", "--width", "16", "--no-progress", "--aggregation", "dawid_skene",
            "--voter", "callable:test_relabel:contrarian"]  # fmt: skip
    assert cli(["generate", "--output-dir", str(tmp_path / "one"), *args]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               fork_server.__file__, "--exec", "-m", "synfer_diffusers.cli", "generate", "--output-dir",
               str(tmp_path / "two"), *args]  # fmt: skip  (the launcher and its workers: forks of a `fork_server`)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    result = fork_server.run(command, env=fork_server.launcher_env(env), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Process 1/2: 2 of its 2 shards to write." in result.stderr
    assert "Process 2/2: 1 of its 1 shards to write." in result.stderr
    assert result.stderr.count("finalised the labels") == 1 and "Process 1/2 finalised the labels" in result.stderr
    assert digests(tmp_path / "two") == digests(tmp_path / "one")


def test_a_checkpoint_ships_voters_that_vote_by_default(tmp_path):
    """`voters/<name>/` in a checkpoint folder: each classifier votes in `synfer generate` with no `--voter`, and the
    card names it with its model family."""
    from transformers import ResNetConfig, ResNetForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    model = tmp_path / "model"
    SynFERPipeline(**make_tiny_components(seed=0, sample_size=8)).save_pretrained(model)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          id2label=EXPRESSIONS.id2label, label2id=EXPRESSIONS.label2id)  # fmt: skip
    ResNetForImageClassification(config).save_pretrained(model / "voters" / "independent")
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(model / "voters" / "independent")
    config = SyntheticSetConfig(num_samples=2, shard_size=2, aggregation="dawid_skene", **SMALL)
    generate_synthetic_dataset(config, tmp_path / "set", model=str(model), batch_size=2, show_progress=False,
                               process_index=0, num_processes=1)  # fmt: skip
    assert [v["voter"] for v in rows(tmp_path / "set")["votes"][0]] == ["independent", "target"]
    plan = json.loads((tmp_path / "set" / "plan.json").read_text())
    assert plan["labeler"]["voters"][0]["name"] == "independent" and plan["labeler"]["voters"][0]["fingerprint"]
    assert "ensemble vote of independent (resnet), target" in (tmp_path / "set" / "README.md").read_text()


def test_a_set_without_its_local_manifests_relabels_like_the_original(paper_set, tmp_path):
    """A set downloaded from the Hub has its plan, shards and card but not `.synfer/` (manifests stay with its
    maker): its shards are verified against the plan and adopted, and the relabel equals the original folder's."""
    original, downloaded = tmp_path / "original", tmp_path / "downloaded"
    shutil.copytree(paper_set, original)
    shutil.copytree(paper_set, downloaded, ignore=shutil.ignore_patterns(".synfer"))
    for folder in (original, downloaded):
        relabel_synthetic_dataset(folder, voting={"aggregation": "dawid_skene"})
    assert digests(downloaded) == digests(original)
