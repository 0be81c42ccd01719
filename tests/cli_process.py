"""Start ``python -m labelcast`` runs for tests, forked from a pre-imported server.

``start_cli`` returns a :class:`CliProcess` with the ``subprocess.Popen`` members tests
use (``pid``, ``poll``, ``wait``, ``send_signal``, ``terminate``, ``kill``,
``returncode``); ``run_cli_process`` is ``subprocess.run`` for the CLI. The process is
real and separate (see tests/cli_zygote.py): only the interpreter's start-up and imports
are shared. A run whose environment changes a variable that libraries read at import
time (``HF_*``, ``PYTHONPATH``, ...) is started as a plain subprocess instead, as is every
run when ``LABELCAST_TESTS_NO_FORK=1``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

ZYGOTE = Path(__file__).with_name("cli_zygote.py")
# Variables read when torch, transformers, huggingface_hub or Python itself start.
IMPORT_TIME_PREFIXES = (
    "HF_",
    "HUGGINGFACE",
    "TRANSFORMERS",
    "TOKENIZERS",
    "TORCH",
    "OMP_",
    "MKL_",
    "PYTHON",
    "LD_",
)

_server: tuple[subprocess.Popen[bytes], str, dict[str, str]] | None = None


def _zygote() -> tuple[str, dict[str, str]] | None:
    """Start this test process's fork server once; return its socket and environment."""
    global _server
    if os.environ.get("LABELCAST_TESTS_NO_FORK", "") not in ("", "0"):
        return None
    if _server is None or _server[0].poll() is not None:
        folder = tempfile.mkdtemp(prefix="lc-zygote-")
        path = os.path.join(folder, "socket")
        environment = dict(os.environ)
        process = subprocess.Popen(
            [sys.executable, str(ZYGOTE), path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            cwd=os.getcwd(),
            env=environment,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != b"ready":
            process.kill()
            raise RuntimeError(f"the CLI fork server did not start: {line!r}")
        atexit.register(process.kill)
        _server = (process, path, environment)
    return _server[1], _server[2]


def _forkable(env: dict[str, str], server_env: dict[str, str]) -> bool:
    keys = set(env) | set(server_env)
    return all(
        env.get(key) == server_env.get(key)
        for key in keys
        if key.upper().startswith(IMPORT_TIME_PREFIXES)
    )


class CliProcess:
    """A ``python -m labelcast`` run forked by the server: what tests use of ``Popen``."""

    def __init__(self, args: list[str], connection: socket.socket, pid: int) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self._connection = connection

    def _read_end(self, timeout: float | None) -> bool:
        if self.returncode is not None:
            return True
        readable, _, _ = select.select([self._connection], [], [], timeout)
        if not readable:
            return False
        message = self._connection.recv(4096)
        # An empty message: the server died; the child died with it (it kills them).
        self.returncode = json.loads(message)["returncode"] if message else -9
        self._connection.close()
        return True

    def poll(self) -> int | None:
        """The exit status if the run has ended, else None."""
        self._read_end(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the run to end; raise ``subprocess.TimeoutExpired`` after ``timeout``."""
        if not self._read_end(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signal_number: int) -> None:
        """Send a signal to the run (nothing once it has ended)."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal_number)

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(15)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(9)


def start_cli(
    args: list[str],
    *,
    stdin: IO[Any] | int | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
) -> CliProcess | subprocess.Popen[bytes]:
    """Start ``python -m labelcast ARGS``; streams are files (or fds), default /dev/null.

    ``env`` is the whole environment (default: this process's).
    """
    environment = dict(os.environ if env is None else env)
    server = _zygote()
    if server is None or not _forkable(environment, server[1]):
        return subprocess.Popen(
            [sys.executable, "-m", "labelcast", *args],
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
            env=environment,
            cwd=cwd,
        )
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        fds = [
            stream if isinstance(stream, int) else stream.fileno() if stream else devnull
            for stream in (stdin, stdout, stderr)
        ]
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        connection.connect(server[0])
        request = {"args": args, "cwd": str(cwd or os.getcwd()), "env": environment}
        socket.send_fds(connection, [json.dumps(request).encode()], fds)
    finally:
        os.close(devnull)
    pid = json.loads(connection.recv(4096))["pid"]
    return CliProcess(["labelcast", *args], connection, pid)


def run_cli_process(
    args: list[str], *, timeout: float, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` of ``python -m labelcast ARGS`` with its output captured as text."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = start_cli(args, stdout=out, stderr=err, env=env, cwd=cwd)
        started = time.monotonic()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise subprocess.TimeoutExpired(
                ["labelcast", *args], time.monotonic() - started
            ) from None
        out.seek(0)
        err.seek(0)
        assert process.returncode is not None  # wait() returned: the run has ended
        return subprocess.CompletedProcess(
            ["labelcast", *args],
            process.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )
