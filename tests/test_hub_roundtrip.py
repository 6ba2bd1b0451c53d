"""Hub round trips against the stdlib Hub server of `hub_server.py`, on 127.0.0.1.

`HF_ENDPOINT` (and `HF_HUB_OFFLINE`, which conftest sets) are read when the HF libraries are imported, and the
test process has imported them already. So the server runs in the test process (a thread, random port) and the
clients run in one subprocess with `HF_ENDPOINT=<server>`, `HF_HUB_DISABLE_XET=1`, `HF_TOKEN=<any>` and offline
mode off: this file doubles as that client (`python tests/test_hub_roundtrip.py <workdir>`), which prints one
JSON line of observations for the assertions below. Checks that need no network (repo id, token) run in-process.
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

import fork_server
from hub_server import arm_fault, client_env

HERE = Path(__file__).resolve().parent
DATASET_REPO = "tester/synfer-synthetic"
BROKEN_REPO = "tester/never-published"
PIPELINE_REPO = "tester/tiny-synfer-pipeline"
GENERATE_ARGS = ["--num-samples", "4", "--shard-size", "2", "--batch-size", "2", "--num-inference-steps", "2",
                 "--height", "16", "--width", "16", "--no-progress"]  # fmt: skip



@pytest.fixture(scope="module")
def client_run(hub, tmp_path_factory):
    """Runs the client scenarios once against the server; returns their observations."""
    workdir = tmp_path_factory.mktemp("hub_client")
    env = client_env(hub, threads=torch.get_num_threads())
    hub.fail("commit", times=1)  # the first dataset commit fails: the push must retry
    result = fork_server.run([sys.executable, __file__, str(workdir)], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # its client subprocess imports the HF stack
def test_dataset_push_retries_and_pulls_the_same_rows(hub, client_run):
    assert client_run["pulled_equals_local"], client_run
    assert client_run["features_equal"]
    statuses = [call.status for call in hub.calls("POST", "/commit/") if DATASET_REPO in call.path]
    assert statuses[:2] == [500, 200]  # one injected failure, then the retry
    files = hub.repo("dataset", DATASET_REPO).commits[1].files  # repo creation, then one commit with everything
    assert {"README.md", "plan.json", "preview.png"} <= set(files)
    assert sorted(p for p in files if p.startswith("data/")) == [
        "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]  # fmt: skip
    assert not [p for p in files if p.startswith(".synfer")]


def test_the_preview_image_goes_through_lfs(hub, client_run):
    """The Hub refuses binary files committed inline (the test Hub too): the push sends `preview.png` through LFS."""
    assert hub.repo("dataset", DATASET_REPO).commits[1].files["preview.png"].lfs


def test_a_push_whose_commit_answer_is_lost_is_retried_idempotently(hub, client_run):
    """The set regenerated with other shard names is pushed over the first; the Hub applies that commit (new shards
    in, the stale ones deleted) but its answer is lost. The retry must neither fail on the deletions already done
    nor commit again: the push succeeds and the repo holds exactly the new set."""
    assert client_run["lost_answer_push"] == 0, client_run
    statuses = [call.status for call in hub.calls("POST", "/commit/") if DATASET_REPO in call.path]
    assert statuses == [500, 200, 0]  # the retry found nothing left to commit
    assert hub.num_commits("dataset", DATASET_REPO) == 3
    shards = sorted(p for p in hub.files("dataset", DATASET_REPO) if p.startswith("data/"))
    assert shards == [f"data/train-0000{i}-of-00004.parquet" for i in range(4)]
    assert client_run["pulled_equals_resharded"]


def test_failed_push_publishes_nothing(hub, client_run):
    assert "injected failure" in client_run["broken_error"] or "500" in client_run["broken_error"]
    assert not [p for p in hub.files("dataset", BROKEN_REPO) if p.endswith(".parquet") or p == "README.md"]


def test_pipeline_push_and_pull(client_run):
    """`SynFERPipeline.push_to_hub` (one commit, same retries) then `resolve_pipeline("user/repo")`, which
    `synfer generate --model user/repo` uses: the same weights come back."""
    assert client_run["pipeline_equal"]


def test_pipeline_from_pretrained_with_repo_id(client_run):
    assert client_run["pipeline_direct_error"] == ""


def test_bad_repo_id_and_missing_token_fail_before_any_work(tmp_path, monkeypatch):
    from synfer_diffusers.data import hub as data_hub
    from synfer_diffusers.generate import SyntheticSetConfig, generate_synthetic_dataset

    config = SyntheticSetConfig(num_samples=2)
    for bad in ("no-namespace", "a/b/c", "user/bad name", "user/-x-"):
        with pytest.raises(ValueError, match="push_to_hub"):
            generate_synthetic_dataset(config, tmp_path / "out", push_to_hub=bad, token="t")
    monkeypatch.setattr(data_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="`token`"):
        generate_synthetic_dataset(config, tmp_path / "out", push_to_hub="user/name")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# The client process
# ----------------------------------------------------------------------------------------------------------




def _client(workdir: Path) -> dict:
    import datasets
    import numpy as np

    from synfer_diffusers import SynFERPipeline
    from synfer_diffusers.cli import main
    from synfer_diffusers.data.hub import push_synthetic_dataset
    from synfer_diffusers.generate import resolve_pipeline
    from synfer_diffusers.tiny import make_tiny_components

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    observations = {}
    folder = workdir / "synthetic"
    assert main(["generate", "--output-dir", str(folder), "--push-to-hub", DATASET_REPO, *GENERATE_ARGS]) == 0
    local = datasets.load_dataset(str(folder), split="train", cache_dir=str(workdir / "cache_local"))
    pulled = datasets.load_dataset(DATASET_REPO, split="train", cache_dir=str(workdir / "cache_hub"))
    observations["features_equal"] = pulled.features == local.features
    keys = [k for k in local.column_names if k != "image"]
    local_images = [np.asarray(im) for im in local["image"]]
    pulled_images = [np.asarray(im) for im in pulled["image"]]
    observations["pulled_equals_local"] = bool(
        all(local[k] == pulled[k] for k in keys) and all(map(np.array_equal, local_images, pulled_images))
    )

    resharded = workdir / "resharded"  # the same set in 4 shards: the 2 shards on the Hub become stale
    arm_fault("commit", times=1, drop=True)
    shard_args = [*GENERATE_ARGS[: GENERATE_ARGS.index("--shard-size")], "--shard-size", "1",
                  *GENERATE_ARGS[GENERATE_ARGS.index("--shard-size") + 2 :]]  # fmt: skip
    try:
        observations["lost_answer_push"] = main(["generate", "--output-dir", str(resharded), "--push-to-hub",
                                                 DATASET_REPO, *shard_args])  # fmt: skip
    except SystemExit as error:
        observations["lost_answer_push"] = error.code
    pulled = datasets.load_dataset(DATASET_REPO, split="train", cache_dir=str(workdir / "cache_hub_resharded"))
    observations["pulled_equals_resharded"] = pulled["seed"] == local["seed"] and pulled.num_rows == 4

    arm_fault("commit", times=10)
    try:
        push_synthetic_dataset(folder, BROKEN_REPO, max_retries=2, retry_wait=0.05)
        observations["broken_error"] = ""
    except Exception as error:  # noqa: BLE001 - reported to the test
        observations["broken_error"] = f"{type(error).__name__}: {error}"
    arm_fault("commit", times=0)

    pipe = SynFERPipeline(**make_tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    pipe.push_to_hub(PIPELINE_REPO)
    try:
        SynFERPipeline.from_pretrained(PIPELINE_REPO)
        observations["pipeline_direct_error"] = ""
    except ValueError as error:
        observations["pipeline_direct_error"] = str(error)
    loaded, name = resolve_pipeline(PIPELINE_REPO)
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a face", "expression": "happy", "num_inference_steps": 2, "output_type": "np"}
    a = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    b = loaded(generator=torch.Generator().manual_seed(0), **kwargs).images
    observations["pipeline_equal"] = bool(np.array_equal(a, b))
    return observations


if __name__ == "__main__":
    print(json.dumps(_client(Path(sys.argv[1]))))
