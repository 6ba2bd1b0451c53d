"""`synfer generate` under kills and concurrency: kill -9 at many instants then `--resume`, two runs on one folder,
a stale lock, hand-split processes, and two real processes under `torchrun`.

Kills and pauses land on the writer's durable-write events (`durable_write_hook.py`: every fsync and rename, so
inside a shard write, between a shard and its manifest, inside the card and the preview), chosen by kind or at random
from the event count. Every final folder is compared byte for byte with the uninterrupted `reference` run. The CLI
processes are forks of a pre-imported `fork_server` (real processes, without an interpreter start-up each).
"""

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fork_server
from synfer_diffusers.cli import main as cli_main
from synfer_diffusers.generate import FolderLockedError, OutputLock
from synthetic_sets import _assert_same_dataset, cli_command, run_cli, subprocess_env

pytestmark = pytest.mark.usefixtures("tiny_stand_in_as_default")
HOOK = Path(__file__).parent / "durable_write_hook.py"


def _hooked(mode: str, event: int | str, log: Path, folder: Path, *extra: str) -> list[str]:
    """The reference CLI command run under the durable-write hook."""
    return [sys.executable, str(HOOK), mode, str(event), str(log), "--", *cli_command(folder, *extra)[3:]]


def _killed_at(log: Path) -> list[str]:
    return [line.split(" ")[2] for line in log.read_text().splitlines()] if log.exists() else []  # the path


def _random_event_before_the_last_shard(folder: Path, log: Path, rng: random.Random) -> int:
    """A random event number of an uninterrupted run (counted in `folder`), before the last shard's first write: 1
    is the first write of all (nothing written yet, as a kill while loading)."""
    counted = run_cli(_hooked("count", 0, log, folder), timeout=300)
    assert counted.returncode == 0, counted.stderr[-2000:]
    *events, total = log.read_text().splitlines()
    assert total == f"total {len(events)}", total
    last_shard = next(i for i, event in enumerate(events, 1) if "train-00002" in event)
    return rng.randint(1, last_shard - 1)


# Deterministic kill points, each the first event of that kind in its run (whatever earlier runs left):
KILL_POINTS = (
    "fsync:/.synfer/tmp/train-",  # inside a shard write: its temporary file, before the rename
    "fsync:/data",  # the shard renamed into place, the folder not yet synced, no manifest
    "replace:/.synfer/shards/",  # between a shard and its manifest: renaming the manifest
    "replace:/preview.png",  # inside the preview
    "fsync:/.synfer/tmp/README.md",  # inside the card
)


@pytest.mark.slow
def test_kill_9_at_many_instants_then_resume_equals_an_uninterrupted_run(reference, tmp_path):
    """A kill -9 at a random write event (before the last shard), then a `--resume` killed at each of `KILL_POINTS`
    in turn, then a `--resume` that finishes: the folder equals the uninterrupted `reference`, card included."""
    folder, log = tmp_path / "set", tmp_path / "kills.log"
    event = _random_event_before_the_last_shard(tmp_path / "counted", tmp_path / "count.log", random.Random(0))
    first = run_cli(_hooked("kill", event, log, folder), timeout=300)
    assert first.returncode == -signal.SIGKILL and len(_killed_at(log)) == 1, first.stderr[-2000:]
    log.unlink()
    for point in KILL_POINTS:
        result = run_cli(_hooked("kill", point, log, folder, "--resume"), timeout=300)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
    targets = _killed_at(log)
    assert len(targets) == len(KILL_POINTS), targets
    for point, target in zip(KILL_POINTS, targets):
        assert point.partition(":")[2] in target, (point, target)
    assert not (folder / "README.md").exists()
    finished = run_cli(cli_command(folder, "--resume"), timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    _assert_same_dataset(folder, reference)
    assert (folder / "README.md").read_text() == (reference / "README.md").read_text()


@pytest.mark.slow
def test_a_second_run_on_a_folder_is_refused_or_waits(reference, tmp_path, capsys):
    """While a first run (another process) is paused holding the lock, a second run is refused (exit 2 naming the
    holder) and a `--wait` run blocks on the lock: seen by the kernel as a blocked `flock` request of this process
    in `/proc/locks`, not after a sleep. Released, both finish and the set equals the reference. The second runs
    are in-process `synfer` calls (no interpreter start-up)."""
    folder, log = tmp_path / "set", tmp_path / "pause.log"
    first = fork_server.Popen(_hooked("pause", 4, log, folder), env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _second_runs_refused_or_waiting(first, folder, log, capsys)
    finally:
        if first.poll() is None:  # a failed check must not leave the paused holder behind
            first.kill()
            first.wait()
    _assert_same_dataset(folder, reference)


def _second_runs_refused_or_waiting(first: fork_server.Popen, folder: Path, log: Path, capsys) -> None:
    _wait_for(lambda: log.exists() or first.poll() is not None)
    assert first.poll() is None, first.stderr.read()[-2000:]  # paused at its 4th write, holding the lock
    lock_inode = (folder / ".synfer" / "lock").stat().st_ino

    with pytest.raises(SystemExit) as refused:
        cli_main(cli_command(folder, "--resume")[3:])
    assert refused.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "being written by another run" in error and f"pid {first.pid}" in error

    outcome: dict[str, object] = {}

    def second_run() -> None:
        try:
            outcome["code"] = cli_main(cli_command(folder, "--resume", "--wait")[3:])
        except SystemExit as exit_:
            outcome["code"] = exit_.code

    waiting = threading.Thread(target=second_run, daemon=True)
    waiting.start()
    _wait_for(lambda: _blocked_on(lock_inode, os.getpid()) or not waiting.is_alive())
    assert waiting.is_alive() and "code" not in outcome, outcome  # blocked in flock, not refused
    assert first.poll() is None  # the holder is still paused
    Path(f"{log}.release").touch()
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    waiting.join(timeout=300)
    assert not waiting.is_alive() and outcome == {"code": 0}, outcome


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over(reference, tmp_path, caplog):
    folder, log = tmp_path / "set", tmp_path / "pause.log"
    holder = fork_server.Popen(_hooked("pause", 4, log, folder), env=subprocess_env(), stderr=subprocess.DEVNULL)
    _wait_for(lambda: log.exists() or holder.poll() is not None)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (folder / ".synfer" / "lock").read_text().startswith('{"pid": ' + str(holder.pid))
    with caplog.at_level(logging.INFO, logger="synfer_diffusers"):
        assert cli_main(cli_command(folder, "--resume")[3:]) == 0  # in-process: no interpreter start-up
    assert f"left by a finished run (pid {holder.pid}" in caplog.text
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
    """Two real processes (`torchrun --nproc_per_node 2`): each writes its own shards, the set equals one process's.
    The launcher and its two workers are forks of a `fork_server` (the workers through its `--exec` relay)."""
    folder = tmp_path / "set"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               fork_server.__file__, "--exec", "-m", "synfer_diffusers.cli", *cli_command(folder)[3:]]  # fmt: skip
    result = run_cli(command, env=fork_server.launcher_env(subprocess_env()), timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Process 1/2: 2 of its 2 shards to write." in result.stderr  # shards 0 and 2
    assert "Process 2/2: 1 of its 1 shards to write." in result.stderr  # shard 1
    _assert_same_dataset(folder, reference)


def _blocked_on(inode: int, pid: int) -> bool:
    """Whether `/proc/locks` lists a blocked (`->`) lock request of process `pid` on the file with `inode`."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[5] == str(pid) and fields[6].endswith(f":{inode}"):
            return True
    return False


def _wait_for(condition, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
