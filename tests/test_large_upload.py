"""Publishing synthetic sets too large for one commit: killed mid-upload, resumed, card last, nothing sent twice.

`plan_commits` is tested in-process. Sets are written here with `SyntheticSetWriter` (tiny 8x8 images, no model);
pushes run in client subprocesses of the strict Hub server of `hub_server.py` (this file:
`python tests/test_large_upload.py '<steps as JSON>'`), each printing one JSON line per push; small
`max_commit_files` make a dozen shards a multi-commit upload. Those tests are `slow`: each client process imports
the package (~10 s on 2 cores).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fork_server
from hub_server import arm_fault, client_env

LARGE_REPO = "tester/large-set"
SMALL_REPO = "tester/small-set"
LIMITS = {"max_commit_files": 4, "retry_wait": 0.05}  # 12 shards + plan + preview: 4 commits of data, then the card


def make_set(folder: Path, num_samples: int, shard_size: int, seed: int = 0) -> Path:
    """A complete synthetic set of `num_samples` rows in shards of `shard_size`, without a model."""
    from synfer_diffusers.data.writer import SyntheticSetWriter
    from synfer_diffusers.facs import AUSpace

    plan = {"num_samples": num_samples, "shard_size": shard_size, "au_space": AUSpace.disfa12().to_config(),
            "seed": seed}  # fmt: skip
    writer = SyntheticSetWriter(folder, plan)
    writer.prepare(resume=False, overwrite=False)
    for spec in writer.shards:
        writer.write_shard(spec, [_row(i, seed) for i in spec.sample_ids])
    card_data = {"task_categories": ["image-classification"], "tags": ["synfer", "synthetic"]}
    writer.finalize({"license": "apache-2.0", "num_samples": num_samples}, card_data)
    return folder


def _row(i: int, seed: int) -> dict:
    import PIL.Image

    label = i % 7
    return {"image": PIL.Image.new("RGB", (8, 8), (i % 256, seed % 256, label * 30)), "text": f"face {i}",
            "action_units": [0.0] * 12, "target_label": label, "label": label,
            "label_probs": [float(k == label) for k in range(7)], "agreement": 1.0, "keep": True,
            "votes": [{"voter": "target", "probs": [float(k == label) for k in range(7)]}], "seed": i,
            "sample_id": i}  # fmt: skip


def run_client(hub, workdir: Path, steps: list[dict], **popen) -> fork_server.Popen:
    env = client_env(hub)
    return fork_server.Popen([sys.executable, __file__, json.dumps(steps)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, **popen)  # fmt: skip


def results(process: fork_server.Popen, timeout: float = 300) -> list[dict]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stdout[-3000:] + stderr[-5000:]
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def additions(commits) -> dict[str, list[int]]:
    """`{path: indices of the commits that added or changed it}` over a repo's history."""
    added: dict[str, list[int]] = {}
    for k, commit in enumerate(commits):
        before = commits[k - 1].files if k else {}
        for path, stored in commit.files.items():
            if path not in before or before[path].data != stored.data:
                added.setdefault(path, []).append(k)
    return added


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("large_upload")


@pytest.fixture(scope="module")
def sets(workdir):
    large = make_set(workdir / "large", num_samples=24, shard_size=2)
    (large / "notes.txt").write_text("not part of the set")
    (large / ".cache" / "huggingface").mkdir(parents=True)
    (large / ".cache" / "huggingface" / "state").write_text("upload state of some tool")
    return {"large": large, "replacement": make_set(workdir / "replacement", 10, 2, seed=1),
            "small": make_set(workdir / "small", 4, 2, seed=2)}  # fmt: skip


@pytest.fixture(scope="module")
def killed(hub, workdir, sets):
    """A multi-commit push killed (SIGKILL) while its third commit is on the wire: `(returncode, commits so far)`."""
    hub.hold("commit", after=2)
    process = run_client(hub, workdir, [{"folder": str(sets["large"]), "repo": LARGE_REPO, "kwargs": LIMITS}])
    try:
        assert hub.held.wait(timeout=180), "the push never reached its third commit"
        process.kill()
        process.wait(timeout=30)
    finally:
        hub.release()
    return process.returncode, hub.num_commits("dataset", LARGE_REPO)


@pytest.fixture(scope="module")
def rerun(hub, workdir, sets, killed):
    """One client process: resume the killed push (with a preupload and an LFS fault), push it again (nothing to
    do), replace the set by one with fewer shards, push a small set through a 429 and a 500, push to another
    user's namespace."""
    faults = [{"endpoint": "preupload", "times": 1, "status": 503}, {"endpoint": "lfs-upload", "times": 1}]
    steps = [
        {"folder": str(sets["large"]), "repo": LARGE_REPO, "kwargs": LIMITS, "faults": faults},
        {"folder": str(sets["large"]), "repo": LARGE_REPO, "kwargs": LIMITS},
        {"folder": str(sets["replacement"]), "repo": LARGE_REPO, "kwargs": LIMITS},
        {"folder": str(sets["small"]), "repo": SMALL_REPO, "kwargs": {"retry_wait": 0.05},
         "faults": [{"endpoint": "commit", "times": 1, "status": 429, "retry_after": 2},
                    {"endpoint": "commit", "times": 1, "status": 500}]},
        {"folder": str(sets["small"]), "repo": "someone-else/not-mine", "kwargs": {"retry_wait": 0.05}},
    ]  # fmt: skip
    return results(run_client(hub, workdir, steps))


def _files(folder: Path, sizes: dict[str, int]) -> list[str]:
    for path, size in sizes.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(b"x" * size)
    return list(sizes)


def test_plan_commits_keeps_a_set_that_fits_in_one_commit(tmp_path):
    from synfer_diffusers.data.hub import plan_commits

    files = _files(tmp_path, {"plan.json": 10, "data/a.parquet": 100, "data/b.parquet": 100, "README.md": 10})
    assert plan_commits(tmp_path, files, ["data/old.parquet"], True, max_bytes=220, max_files=5) == [
        (files, ["data/old.parquet"])]  # fmt: skip
    assert plan_commits(tmp_path, [], [], True, max_bytes=220, max_files=5) == []


def test_plan_commits_packs_larger_sets_within_both_limits_and_the_card_last(tmp_path):
    from synfer_diffusers.data.hub import plan_commits

    sizes = {"plan.json": 10, **{f"data/{i}.parquet": 100 for i in range(5)}, "data/big.parquet": 500,
             "preview.png": 10, "README.md": 10}  # fmt: skip
    files = _files(tmp_path, sizes)
    commits = plan_commits(tmp_path, files, ["data/old.parquet"], True, max_bytes=250, max_files=3)
    assert commits == [
        (["plan.json"], ["data/old.parquet", "README.md"]),  # the old card goes first; deletions count as files
        (["data/0.parquet", "data/1.parquet"], []),  # 200 bytes: a third shard would pass 250
        (["data/2.parquet", "data/3.parquet"], []),
        (["data/4.parquet"], []),
        (["data/big.parquet"], []),  # larger than max_bytes: alone
        (["preview.png"], []),
        (["README.md"], []),  # the card alone, last
    ]
    commits = plan_commits(tmp_path, files[:-1], [], True, max_bytes=10**6, max_files=3)  # card unchanged
    assert all("README.md" not in uploads + deletions for uploads, deletions in commits)
    assert [len(uploads) for uploads, _ in commits] == [3, 3, 2]


@pytest.mark.slow
def test_killed_push_left_no_card(hub, killed):
    returncode, num_commits = killed
    assert returncode == -9
    assert num_commits == 3  # creation + 2 commits of shards; the held third was never applied
    assert "README.md" not in hub.files("dataset", LARGE_REPO)


@pytest.mark.slow
def test_rerun_completes_with_every_shard_once_and_the_card_last(hub, sets, rerun):
    from synfer_diffusers.data.writer import SyntheticSetWriter

    resumed, again = rerun[0], rerun[1]
    assert resumed["error"] is None and again["error"] is None
    commits = hub.repo("dataset", LARGE_REPO).commits[: again["num_commits"]]
    published = set(SyntheticSetWriter.from_folder(sets["large"]).published_files())
    assert set(commits[-1].files) == published | {".gitattributes"}  # never .synfer/, notes.txt or .cache/
    for path in published:
        assert commits[-1].files[path].data == (sets["large"] / path).read_bytes(), path
    added = additions(commits)
    assert all(added[path] == added[path][:1] for path in published)  # each file committed once, kill or not
    assert added["README.md"] == [len(commits) - 1]  # the card first appears in the last commit
    assert len(commits) == 1 + 4 + 1  # creation, 4 commits of at most 4 files, the card


@pytest.mark.slow
def test_each_lfs_object_is_uploaded_once_across_the_kill(hub, sets, rerun):
    from synfer_diffusers.data.writer import SyntheticSetWriter

    shards = [p for p in SyntheticSetWriter.from_folder(sets["large"]).published_files() if p.endswith(".parquet")]
    oids = [hub.repo("dataset", LARGE_REPO).commits[rerun[1]["num_commits"] - 1].files[p].sha256 for p in shards]
    puts = [c.path.rsplit("/", 1)[1] for c in hub.calls("PUT", f"/_lfs/dataset/{LARGE_REPO}/") if c.status == 200]
    assert sorted(p for p in puts if p in oids) == sorted(oids)  # the two runs sent each shard once


@pytest.mark.slow
def test_rerun_of_a_finished_push_commits_nothing(rerun):
    resumed, again = rerun[0], rerun[1]
    assert again["num_commits"] == resumed["num_commits"]
    assert again["url"] == resumed["url"]  # the head it found


@pytest.mark.slow
def test_a_replacing_set_deletes_stale_shards_and_hides_the_old_card_meanwhile(hub, sets, rerun):
    from synfer_diffusers.data.writer import SyntheticSetWriter

    start, replaced = rerun[1]["num_commits"], rerun[2]
    assert replaced["error"] is None
    commits = hub.repo("dataset", LARGE_REPO).commits[: replaced["num_commits"]]
    published = set(SyntheticSetWriter.from_folder(sets["replacement"]).published_files())
    assert set(commits[-1].files) == published | {".gitattributes"}
    assert "README.md" not in commits[start].files  # the old card goes with the first commit ...
    assert all("README.md" not in c.files for c in commits[start:-1])  # ... and the new one comes last
    assert commits[-1].files["README.md"].data == (sets["replacement"] / "README.md").read_bytes()


@pytest.mark.slow
def test_small_set_is_one_commit_and_honours_retry_after(hub, rerun):
    assert rerun[3]["error"] is None
    assert hub.num_commits("dataset", SMALL_REPO) == 2  # creation + everything at once
    calls = [c for c in hub.calls("POST", "/commit/") if SMALL_REPO in c.path]
    assert [c.status for c in calls] == [429, 500, 200]
    assert calls[1].time - calls[0].time >= 2.0  # Retry-After: 2, although retry_wait is 0.05 s
    # the package waited Retry-After (2 s) after the 429 and retry_wait * 2 after the 500: what it asked for, so a
    # loaded machine cannot make this flake (the server's gap above is only a lower bound)
    assert rerun[3]["waits"] == [2.0, 0.1]


@pytest.mark.slow
def test_a_403_is_not_retried_and_says_why(hub, rerun):
    error = rerun[4]["error"]
    assert "403" in error and "not transient, not retried" in error and "namespace" in error
    assert len([c for c in hub.calls("POST", "/api/repos/create") if c.status == 403]) == 1


WRITES = ("/preupload/", "/commit/", "/_lfs/", "lfs/objects/batch")
"""Fragments of the paths of the Hub's write requests."""


@pytest.mark.slow  # ~1,000 shards written, hashed and pushed twice
def test_thousand_shards_push_and_noop_rerun(hub, workdir, capsys):
    folder = make_set(workdir / "thousand", num_samples=1000, shard_size=1, seed=3)
    steps = [{"folder": str(folder), "repo": "tester/thousand"}] * 2
    first, again = results(run_client(hub, workdir, steps))
    assert first["error"] is None and again["num_commits"] == first["num_commits"] == 1 + 5 + 1
    with capsys.disabled():
        print(f"\n1,000 shards: first push {first['seconds']:.1f} s ({first['num_commits'] - 1} commits), "
              f"rerun with nothing to do {again['seconds']:.1f} s")  # fmt: skip
    # the no-op rerun only reads: no preupload, LFS transfer or commit (what makes it fast; its time against the
    # first push's, the former check, was 0.48 against a bound of 0.5 at load 7: a timing window, not a property)
    start, end = again["span"]
    during = [c for c in hub.requests if start <= c.time <= end]
    assert during and not [c for c in during if any(k in c.path for k in WRITES)], during


# ----------------------------------------------------------------------------------------------------------
# The client process
# ----------------------------------------------------------------------------------------------------------


def _client(steps: list[dict]) -> None:
    """Runs each push of `steps` and prints its outcome as one JSON line (flushed: a killed run keeps them)."""
    from huggingface_hub import HfApi

    from synfer_diffusers import hub_utils
    from synfer_diffusers.data.hub import push_synthetic_dataset

    waits: list[float] = []

    class _Time:  # the package's retry waits, as it asks for them (not as a loaded machine measures them)
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds):
            waits.append(seconds)
            time.sleep(seconds)

    hub_utils.time = _Time()
    for step in steps:
        for fault in step.get("faults", []):
            arm_fault(**fault)
        waits.clear()
        start, started = time.perf_counter(), time.monotonic()  # monotonic: the server's clock for its calls
        outcome = {"url": None, "error": None}
        try:
            outcome["url"] = push_synthetic_dataset(step["folder"], step["repo"], **step.get("kwargs", {}))
        except Exception as error:  # noqa: BLE001 - reported to the test
            outcome["error"] = f"{type(error).__name__}: {error}"
        outcome["seconds"] = time.perf_counter() - start
        outcome["span"], outcome["waits"] = (started, time.monotonic()), list(waits)
        if outcome["error"] is None:
            outcome["num_commits"] = len(HfApi().list_repo_commits(step["repo"], repo_type="dataset"))
        print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    _client(json.loads(sys.argv[1]))
