"""A pre-imported fork server for the tests' Python subprocesses: one interpreter start-up (8-12 s of imports of
torch and the HF stack) per environment instead of one per command.

A server is a long-lived `python fork_server.py SOCKET MODULE...` that has imported the MODULEs and serves requests
on a Unix socket. For each request (`argv` after the interpreter, `env`, `cwd` and the three stdio file descriptors)
it forks a monitor, which forks the command's process: stdio duplicated onto 0-2, the working folder, `os.environ`
and `sys.argv` / `sys.path[0]` / `__main__` set as `python ARGV...` sets them, then the `-m MODULE`, `-c CODE` or
`SCRIPT` run, its exit handlers and `os._exit(code)`. The monitor sends the process's pid, waits for it and sends
its exit status (`-N` for signal N), so a test can `kill -9` a real process at a real instant and see
`-signal.SIGKILL`.

What the modules read from the environment at import time (the HF libraries' endpoint, cache folders and offline
switches) is fixed in a server: [`ForkServer.for_env`] keeps one server per environment (every variable but
`SYNFER_*`, `GRADIO_*` and `_TORCHINDUCTOR_*` ones, read at call time, pytest's `PYTEST_*`, `PYTHONPATH`, put on
`sys.path` as the interpreter does, and `OMP_NUM_THREADS`), so a command sees what a fresh interpreter with its
environment would.
A server runs no torch operation (OpenMP has started no thread when it forks) and starts without
`OMP_NUM_THREADS`; a command's `OMP_NUM_THREADS` is set by `torch.set_num_threads`.

    process = Popen([sys.executable, "-m", "synfer_diffusers.cli", ...], env=env, stdout=PIPE, stderr=PIPE)
    result = run([sys.executable, script, ...], env=env, capture_output=True, text=True, timeout=300)

A launcher that starts its workers itself (`torchrun`) gets them forked when it runs `python fork_server.py --exec
ARGS...` instead of `python ARGS...`, with [`launcher_env`]: that relay (no heavy import) has its `python ARGS...`
forked by the launcher's server, with the relay's stdio, folder and environment (the launcher's `RANK`,
`MASTER_PORT`, ...), forwards SIGTERM / SIGINT to it and exits as it did. A command whose first argument is not
`sys.executable` starts its own interpreter as before.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

PRELOAD = ("torch", "numpy", "PIL.Image", "transformers", "diffusers", "datasets", "synfer_diffusers.cli",
           "synfer_diffusers.generate.run", "synfer_diffusers.training", "synfer_diffusers.metrics",
           "diffusers.training_utils")  # fmt: skip
"""Modules a server imports before it serves (the package and the HF stack: nearly all of a start-up). Beside the
`synfer` command line, the modules that its commands and the example scripts import lazily, on first use (the
writer, the training helpers, `evaluate`, diffusers' model classes: 0.6-1.5 s a command otherwise)."""
BASE = ("torch", "numpy", "PIL.Image", "pyarrow", "pandas", "scipy", "safetensors.torch")
"""Modules that read no `HF_*` variable: for commands whose HF variables differ from test to test (a Hub client's
endpoint and `HF_HOME`), which import the HF stack themselves."""
PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT
_SOCKET_ENV = "FORK_SERVER_SOCKET"
"""The socket of the server of a relay (`python fork_server.py --exec ARGS`)."""
_CALL_TIME_ENV = ("SYNFER_", "PYTEST_", "OMP_NUM_THREADS", "GRADIO_", "PYTHONPATH", "_TORCHINDUCTOR_", _SOCKET_ENV)
"""Prefixes of variables read at call time, not import time: they do not select a server (`torch.compile` in a
test's own process sets `_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR`, read when compiling)."""
_HF_ENV = ("HF_", "HUGGINGFACE_")
"""Prefixes of the HF libraries' variables: they select no [`BASE`] server."""


class ForkServer:
    """One pre-imported server process; [`for_env`] returns the one for an environment, started on first use."""

    _servers: dict[tuple[tuple[str, str], ...], ForkServer] = {}

    def __init__(self, env: dict[str, str] | None, preload: tuple[str, ...] = PRELOAD, socket_path: str | None = None):
        """Starts a server with `env` importing `preload`, or (`env=None`) connects to the one at `socket_path`."""
        self.socket_path = socket_path or os.path.join(tempfile.mkdtemp(prefix="fork_server_"), "socket")
        self.process = None if env is None else subprocess.Popen(
            [sys.executable, __file__, self.socket_path, *preload], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE)  # fmt: skip
        self._ready = threading.Lock()
        self._started = env is None

    @classmethod
    def for_env(cls, env: dict[str, str], preload: tuple[str, ...] = PRELOAD) -> ForkServer:
        call_time = _CALL_TIME_ENV + (_HF_ENV if preload == BASE else ())
        key = (preload, tuple(sorted((k, v) for k, v in env.items() if not k.startswith(call_time))))
        if key not in cls._servers:
            cls._servers[key] = cls(dict(key[1]), preload)
        return cls._servers[key]

    def wait_until_ready(self) -> ForkServer:
        """Returns once the server has imported its modules and listens on its socket (it prints `ready`)."""
        with self._ready:
            if not self._started:
                line = self.process.stdout.readline()
                if line.strip() != b"ready":
                    raise RuntimeError(f"fork server failed to start (exit {self.process.wait()})")
                self._started = True
        return self

    def connect(self) -> socket.socket:
        """A connection to the server, once it is ready."""
        self.wait_until_ready()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(self.socket_path)
        return connection

    def stop(self) -> None:
        self.process.stdin.close()  # the server exits at end of file on its stdin
        self.process.wait()


def launcher_env(env: dict[str, str], preload: tuple[str, ...] = PRELOAD) -> dict[str, str]:
    """`env` with the socket of its server, for a launcher whose workers run `python fork_server.py --exec ARGS`
    (the server is listening before this returns: the workers connect without waiting)."""
    return {**env, _SOCKET_ENV: ForkServer.for_env(env, preload).wait_until_ready().socket_path}


@atexit.register
def _stop_servers() -> None:
    for server in ForkServer._servers.values():
        server.stop()


class Popen:
    """A [`subprocess.Popen`] look-alike for `[sys.executable, ...]` commands run by a [`ForkServer`]: `pid`,
    `args`, `returncode`, `stdin` / `stdout` / `stderr` (for `PIPE`), `poll`, `wait`, `communicate`,
    `send_signal`, `kill`, `terminate`; `preload` selects the server's modules ([`PRELOAD`] or [`BASE`]), or
    `server` is the one to use."""

    def __init__(self, args, env=None, cwd=None, stdin=None, stdout=None, stderr=None, text=False, preload=PRELOAD,
                 server: ForkServer | None = None):  # fmt: skip
        if args[0] != sys.executable:
            raise ValueError(f"only `sys.executable` commands can be forked, not {args[0]!r}")
        self.args, self.returncode = list(args), None
        env = dict(os.environ if env is None else env)
        self.stdin = self.stdout = self.stderr = None
        ours, theirs = [], []
        for name, spec, mode in (("stdin", stdin, "w"), ("stdout", stdout, "r"), ("stderr", stderr, "r")):
            theirs.append(self._child_fd(spec, mode, name, ours, theirs, text))
        self._connection = (server or ForkServer.for_env(env, preload)).connect()
        request = json.dumps({"argv": self.args[1:], "env": env, "cwd": os.fspath(cwd or os.getcwd())}).encode()
        socket.send_fds(self._connection, [struct.pack("!Q", len(request))], theirs)
        self._connection.sendall(request)
        for fd in ours:
            os.close(fd)
        self._received = b""
        self.pid = int(self._line(None))

    def _child_fd(self, spec, mode: str, name: str, ours: list[int], theirs: list[int], text: bool) -> int:
        """The descriptor the command gets for one stream; pipes' other ends become `self.<name>`."""
        if spec == PIPE:
            read, write = os.pipe()
            mine, child = (write, read) if mode == "w" else (read, write)
            setattr(self, name, open(mine, mode + ("" if text else "b")))
            ours.append(child)
            return child
        if spec == STDOUT:
            return theirs[1]
        if spec == DEVNULL or (spec is None and name == "stdin"):
            fd = os.open(os.devnull, os.O_RDWR)
            ours.append(fd)
            return fd
        if spec is None:
            return {"stdout": 1, "stderr": 2}[name]
        return spec if isinstance(spec, int) else spec.fileno()

    def _line(self, timeout: float | None) -> str | None:
        """The monitor's next line (the pid, then the exit status), `None` if none came within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._received:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._connection], [], [], left)[0]:
                return None
            chunk = self._connection.recv(64)
            if not chunk:
                raise RuntimeError(f"the fork server lost the process of {self.args}")
            self._received += chunk
        line, self._received = self._received.split(b"\n", 1)
        return line.decode()

    def poll(self) -> int | None:
        return self._status(0)

    def wait(self, timeout: float | None = None) -> int:
        if self._status(timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _status(self, timeout: float | None) -> int | None:
        if self.returncode is None and (line := self._line(timeout)) is not None:
            self.returncode = int(line)
            self._connection.close()
        return self.returncode

    def communicate(self, input=None, timeout: float | None = None):
        """As [`subprocess.Popen.communicate`]: writes `input`, reads the piped streams to their end, waits."""
        outputs: dict[str, object] = {}

        def drain(name: str) -> None:
            outputs[name] = getattr(self, name).read()

        readers = [threading.Thread(target=drain, args=(n,), daemon=True) for n in ("stdout", "stderr")
                   if getattr(self, n) is not None]  # fmt: skip
        for reader in readers:
            reader.start()
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return outputs.get("stdout"), outputs.get("stderr")

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __enter__(self) -> Popen:
        return self

    def __exit__(self, *exc) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()


def run(args, *, input=None, capture_output: bool = False, timeout: float | None = None, check: bool = False,
        **popen) -> subprocess.CompletedProcess:  # fmt: skip
    """As [`subprocess.run`], with the command run by a [`ForkServer`] when it starts with `sys.executable`."""
    if args[0] != sys.executable:
        return subprocess.run(args, input=input, capture_output=capture_output, timeout=timeout, check=check, **popen)
    if capture_output:
        popen.update(stdout=PIPE, stderr=PIPE)
    if input is not None:
        popen["stdin"] = PIPE
    process = Popen(args, **popen)
    try:
        stdout, stderr = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    if check and process.returncode:
        raise subprocess.CalledProcessError(process.returncode, args, stdout, stderr)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def _relay(argv: list[str]) -> None:
    """`python fork_server.py --exec ARGS...`: `python ARGS...` forked by the server of `$FORK_SERVER_SOCKET`."""
    process = Popen([sys.executable, *argv], stdin=0, stdout=1, stderr=2,
                    server=ForkServer(None, socket_path=os.environ[_SOCKET_ENV]))  # fmt: skip
    for forwarded in (signal.SIGTERM, signal.SIGINT):
        signal.signal(forwarded, lambda number, frame: process.send_signal(number))
    code = process.wait()
    if code < 0:  # killed by a signal: so is the relay
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


# The server side: `python fork_server.py SOCKET MODULE...`.


def _serve(socket_path: str, modules: list[str]) -> None:
    import importlib

    for module in modules:
        importlib.import_module(module)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        readable = select.select([listener, sys.stdin], [], [])[0]
        while _reap():
            pass
        if sys.stdin in readable:  # end of file: the test session is over
            return
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            _monitor(connection)
        connection.close()


def _reap() -> bool:
    try:
        return os.waitpid(-1, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return False


def _monitor(connection: socket.socket) -> None:
    """In a fork of the server: receives one request, forks its process, reports its pid and exit status."""
    header, fds, _, _ = socket.recv_fds(connection, 8, 3)
    (length,) = struct.unpack("!Q", header)
    request = b""
    while len(request) < length:
        request += connection.recv(length - len(request))
    pid = os.fork()
    if pid == 0:
        connection.close()
        _command(json.loads(request), fds)
    for fd in fds:
        os.close(fd)
    connection.sendall(f"{pid}\n".encode())
    status = os.waitpid(pid, 0)[1]
    connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    os._exit(0)


def _command(request: dict, fds: list[int]) -> None:
    """In the command's process: the request's stdio, folder, environment and argv, then the command and exit."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if "OMP_NUM_THREADS" in os.environ and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    code = _exit_code(_run_argv, request["argv"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_argv(argv: list[str]) -> None:
    import runpy
    import types

    sys.path[1:1] = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if argv[0] == "-m":
        sys.argv, sys.path[0] = argv[1:], os.getcwd()
        sys.modules.pop(argv[1], None)  # preloaded; as in a fresh interpreter, it runs once, as `__main__`
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv, sys.path[0] = ["-c", *argv[2:]], ""
        main = sys.modules["__main__"] = types.ModuleType("__main__")
        exec(compile(argv[1], "<string>", "exec"), main.__dict__)
    else:
        sys.argv, sys.path[0] = argv, os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


def _exit_code(function, *args) -> int:
    """What the interpreter's exit status would be after `function(*args)`, its exit handlers run."""
    import traceback

    try:
        function(*args)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001  (as the interpreter: any uncaught exception is printed, exit 1)
        traceback.print_exc()
        code = 1
    threading._shutdown()  # non-daemon threads are joined, as at interpreter exit
    atexit._run_exitfuncs()
    return code


if __name__ == "__main__":
    _relay(sys.argv[2:]) if sys.argv[1] == "--exec" else _serve(sys.argv[1], sys.argv[2:])
