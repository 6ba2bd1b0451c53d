"""`synfer generate` under kills and concurrency: kill -9 at many instants then `--resume`, two runs on one folder,
a stale lock, hand-split processes, and two real processes under `torchrun`.

Kills and pauses land on the writer's durable-write events (`durable_write_hook.py`: every fsync and rename, so
inside a shard write, between a shard and its manifest, inside the card and the preview) and at random times.
Every final folder is compared byte for byte with the uninterrupted `reference` run.
"""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synfer_diffusers.generate import FolderLockedError, OutputLock
from synthetic_sets import _assert_same_dataset, cli_command, run_cli, subprocess_env

pytestmark = pytest.mark.usefixtures("tiny_stand_in_as_default")
HOOK = Path(__file__).parent / "durable_write_hook.py"


def _hooked(mode: str, event: int, log: Path, folder: Path, *extra: str) -> list[str]:
    """The reference CLI command run under the durable-write hook."""
    return [sys.executable, str(HOOK), mode, str(event), str(log), "--", *cli_command(folder, *extra)[3:]]


def _killed_at(log: Path) -> list[str]:
    return [line.split(" ", 2)[2] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow
def test_kill_9_at_many_instants_then_resume_equals_an_uninterrupted_run(reference, tmp_path):
    folder, log = tmp_path / "set", tmp_path / "kills.log"
    counting = run_cli(_hooked("count", 0, tmp_path / "count.log", tmp_path / "counted"), timeout=300)
    assert counting.returncode == 0, counting.stderr[-2000:]
    total = int((tmp_path / "count.log").read_text().split()[-1])
    assert total >= 20  # plan, 3 shards and their manifests, preview, card: 3 events each

    rng = random.Random(0)
    started = time.monotonic()
    timed = subprocess.Popen(cli_command(folder), env=subprocess_env(), stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(1.0, 4.0))  # a kill at a random time (loading, generating or writing)
    timed.send_signal(signal.SIGKILL)
    assert timed.wait() == -signal.SIGKILL, f"finished within {time.monotonic() - started:.1f} s"
    kills, finished = 1, False
    while not finished:
        assert kills < 40, "no progress"
        result = run_cli(_hooked("kill", rng.randint(1, 9), log, folder, "--resume"), timeout=300)
        if result.returncode == 0:
            finished = True
        else:
            assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
            kills += 1
    targets = _killed_at(log)
    assert kills >= 6, targets
    assert any(".synfer/tmp/train-" in t or "/data/train-" in t for t in targets), targets  # inside a shard write
    assert any("/shards/" in t for t in targets), targets  # between a shard and its manifest
    assert any("README.md" in t or "preview.png" in t for t in targets), targets  # inside the card or preview
    _assert_same_dataset(folder, reference)
    assert (folder / "README.md").read_text() == (reference / "README.md").read_text()


@pytest.mark.slow
def test_a_second_run_on_a_folder_is_refused_or_waits(reference, tmp_path):
    folder, log = tmp_path / "set", tmp_path / "pause.log"
    first = subprocess.Popen(_hooked("pause", 4, log, folder), env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(lambda: log.exists() or first.poll() is not None)
    assert first.poll() is None, first.stderr.read()[-2000:]  # paused at its 4th write, holding the lock

    refused = run_cli(cli_command(folder, "--resume"), timeout=300)
    assert refused.returncode == 2 and f"pid {first.pid}" in refused.stderr
    assert "being written by another run" in refused.stderr.strip().splitlines()[-1]

    waiting = subprocess.Popen(cli_command(folder, "--resume", "--wait"), env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(3.0)
    assert waiting.poll() is None  # it waits for the lock
    Path(f"{log}.release").touch()
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert waiting.wait(timeout=300) == 0, waiting.stderr.read()[-2000:]
    _assert_same_dataset(folder, reference)


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over(reference, tmp_path):
    folder, log = tmp_path / "set", tmp_path / "pause.log"
    holder = subprocess.Popen(_hooked("pause", 4, log, folder), env=subprocess_env(), stderr=subprocess.DEVNULL)
    _wait_for(lambda: log.exists() or holder.poll() is not None)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (folder / ".synfer" / "lock").read_text().startswith('{"pid": ' + str(holder.pid))
    resumed = run_cli(cli_command(folder, "--resume"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"left by a finished run (pid {holder.pid}" in resumed.stderr
    _assert_same_dataset(folder, reference)


def test_locks_exclude_a_second_run_and_share_between_hand_split_parts(tmp_path):
    with OutputLock(tmp_path / "set"):
        for other in (OutputLock(tmp_path / "set"), OutputLock(tmp_path / "set", part=0)):
            with pytest.raises(FolderLockedError, match="being written by another run"):
                other.acquire()
    with OutputLock(tmp_path / "set", part=0), OutputLock(tmp_path / "set", part=1):
        with pytest.raises(FolderLockedError):
            OutputLock(tmp_path / "set", part=1).acquire()
        with pytest.raises(FolderLockedError):
            OutputLock(tmp_path / "set").acquire()
    OutputLock(tmp_path / "set").acquire().release()  # all released


@pytest.mark.slow
def test_torchrun_two_cpu_processes_split_the_shards(reference, tmp_path):
    """Two real processes (`torchrun --nproc_per_node 2`): each writes its own shards, the set equals one process's."""
    folder = tmp_path / "set"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "synfer_diffusers.cli", *cli_command(folder)[3:]]  # fmt: skip
    result = run_cli(command, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Process 1/2: 2 of its 2 shards to write." in result.stderr  # shards 0 and 2
    assert "Process 2/2: 1 of its 1 shards to write." in result.stderr  # shard 1
    _assert_same_dataset(folder, reference)


def _wait_for(condition, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
