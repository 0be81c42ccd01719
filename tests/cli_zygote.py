"""A process that imports what ``labelcast`` imports once, then forks one CLI run per request.

Each ``python -m labelcast`` run pays 5-10 s of CPU importing torch and transformers
before it does anything; the test suite runs the CLI about a hundred times. This server
(one per test process) pays the imports once and forks a child per request: the child is
a real, separate process that runs ``python -m labelcast ARGS`` exactly as the command
does (``runpy``, ``sys.exit``, atexit handlers and non-daemon threads at exit), with the
request's stdin/stdout/stderr, working directory and environment. Signals sent to its pid
reach it as they would reach the command.

Nothing here runs a torch operation before forking, so no thread pool exists to be
broken by ``fork``. tests/cli_process.py is the client; it falls back to a plain
subprocess when an environment variable that is read at import time differs.

Protocol (one SOCK_SEQPACKET connection per run): the client sends a JSON request
``{"args", "cwd", "env"}`` with three file descriptors; the server answers
``{"pid": N}``, then ``{"returncode": N}`` when the child ends, and kills the child if
the client hangs up first.

Usage: ``python tests/cli_zygote.py SOCKET_PATH`` (prints ``ready`` once listening).
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
import traceback

REQUEST_BYTES = 1 << 20


def preload() -> None:
    """Import what a CLI run would import, without running any of it."""
    import transformers
    from transformers import (  # noqa: F401
        AutoModelForImageClassification,
        BeitForImageClassification,
    )

    import labelcast.cli
    import labelcast.commands.verify
    import labelcast.pipeline.runner  # noqa: F401

    # transformers resolves its classes lazily: touching them imports the modules now.
    transformers.BeitForImageClassification.__name__  # noqa: B018
    for optional in ("av", "paho.mqtt.client", "onnxruntime", "yaml", "pydantic"):
        with contextlib.suppress(ImportError):
            __import__(optional)


def run_child(request: dict[str, object], fds: list[int]) -> int:
    """In the forked child: become ``python -m labelcast ARGS`` and return its exit status."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    cwd = str(request["cwd"])
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})  # type: ignore[call-overload]
    sys.path[0] = cwd  # as ``python -m`` puts the working directory first
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.argv = ["-m", *[str(a) for a in request["args"]]]  # type: ignore[attr-defined]
    code = 0
    try:
        runpy.run_module("labelcast", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # What the interpreter does at exit: wait for non-daemon threads, run atexit handlers.
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        import atexit

        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    return code


def serve(path: str) -> None:
    """Accept requests on ``path`` until the process that started this one is gone."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    children: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        readable, _, _ = select.select([listener, *children.values()], [], [], 0.05)
        for sock in readable:
            if sock is listener:
                connection, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(connection, REQUEST_BYTES, 3)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        listener.close()
                        for other in children.values():
                            other.close()
                        connection.close()
                        code = run_child(json.loads(message), fds)
                    finally:
                        os._exit(code)
                for fd in fds:
                    os.close(fd)
                connection.send(json.dumps({"pid": pid}).encode())
                children[pid] = connection
            else:
                # the client hung up before its child ended (a test gave up): end the child
                if not sock.recv(16):
                    for pid, connection in children.items():
                        if connection is sock:
                            os.kill(pid, signal.SIGKILL)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = children.pop(pid, None)
            if connection is not None:
                try:
                    reply = {"returncode": os.waitstatus_to_exitcode(status)}
                    connection.send(json.dumps(reply).encode())
                except OSError:
                    pass
                connection.close()
    for pid in children:
        os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    preload()
    serve(sys.argv[1])
