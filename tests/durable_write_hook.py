"""Runs the `synfer` CLI with a hook on its durable-write events, for the kill and concurrency tests.

    python durable_write_hook.py MODE N LOG -- synfer-args...

Events are the calls of `os.fsync` and `os.replace` (each atomic write of the writer makes three: fsync of the
temporary file, the rename, fsync of the folder). N is an event number, or `CALL:TEXT` for the first event of that
call (`fsync` or `replace`) whose path contains TEXT (a kill point that does not depend on what an earlier,
interrupted run left). Before event N the hook appends `N <call> <path> <thread name>` to LOG, then
- `kill`: SIGKILLs its own process (a kill -9 at that instant);
- `pause`: waits until the file `LOG.release` exists, then goes on (the run holds its lock meanwhile);
- `count`: LOG gets every event (`N <call> <path>`), and `total <number of events>` at exit.
"""

import atexit
import os
import signal
import sys
import threading
import time


def main() -> None:
    mode, target, log = sys.argv[1], sys.argv[2], sys.argv[3]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    count = 0
    original = {"fsync": os.fsync, "replace": os.replace}

    def event(call: str, path: str) -> None:
        nonlocal count, target
        count += 1
        if mode == "count":
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{count} {call} {path}\n")
            return
        if target.isdigit():
            hit = count == int(target)
        else:
            wanted, _, text = target.partition(":")
            hit = call == wanted and text in path
        if not hit:
            return
        target = "done"  # only the first matching event
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{count} {call} {path} {threading.current_thread().name}\n")
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while not os.path.exists(log + ".release"):
            time.sleep(0.05)

    def fsync(fd: int) -> None:
        event("fsync", os.readlink(f"/proc/self/fd/{fd}"))
        original["fsync"](fd)

    def replace(src, dst, *args, **kwargs) -> None:
        event("replace", os.fspath(dst))
        original["replace"](src, dst, *args, **kwargs)

    os.fsync, os.replace = fsync, replace
    if mode == "count":
        atexit.register(lambda: open(log, "a", encoding="utf-8").write(f"total {count}\n"))
    from synfer_diffusers.cli import main as cli

    sys.exit(cli(argv))


if __name__ == "__main__":
    main()
