"""A real Triton server for the tests: ``labelcast serve`` (PyTriton) on loopback ports.

PyTriton's Python backend stub must match the interpreter, and the pyenv Python the
tests run under is one it fails with; the server runs in a venv of Debian's
``/usr/bin/python3`` instead (``scripts/test.sh`` makes it: ``.venv-serve``, or the
interpreter named by ``$LABELCAST_SERVE_PYTHON``).

The fixture half (``TritonServer``) runs under the test's Python: it starts the server
process in a session of its own, waits until its model is ready, and kills, freezes or
restarts it. Run as a script (with the server venv's Python) this module serves the
configured model through ``labelcast.commands.serve.serve`` with a fault switch, for the fault
tests: a JSON file the test writes, read on every request::

    .venv-serve/bin/python tests/triton_server.py CONFIG --control faults.json

``{"delay_s": 1.5}`` delays every request; ``{"fail": 3}`` fails the next 3 requests
(counted from when the file changed); ``{}`` serves normally.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SERVE_PYTHON = Path(os.environ.get("LABELCAST_SERVE_PYTHON") or REPO / ".venv-serve/bin/python")


def missing_requirements() -> str | None:
    """Say what the Triton server needs and this machine lacks, or None if it can run."""
    if not SERVE_PYTHON.exists():
        return (
            f"no server Python at {SERVE_PYTHON}: scripts/test.sh makes it "
            "(/usr/bin/python3 -m venv .venv-serve; pip install -e '.[serve]')"
        )
    probe = "import pytriton.triton, labelcast.commands.serve, torch"
    result = subprocess.run(
        [str(SERVE_PYTHON), "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_clean_env(),
    )
    if result.returncode != 0:
        return f"{SERVE_PYTHON} cannot import PyTriton and labelcast: {result.stderr[-500:]}"
    return None


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    # The test venv's variables would make the server's Python look in the wrong places.
    for name in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["HF_HUB_OFFLINE"] = "1"
    return env


class TritonServer:
    """A ``labelcast serve`` process the test controls: start, kill, freeze, thaw."""

    def __init__(
        self,
        config: Path,
        *,
        grpc_port: int,
        http_port: int,
        model: str,
        workspace: Path,
        log_path: Path,
        control: Path | None = None,
    ) -> None:
        self.config = config
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.model = model
        self.workspace = workspace
        self.log_path = log_path
        self.control = control
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """The gRPC URL a gateway's model.triton.url takes."""
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """The HTTP URL a gateway's model.triton.url takes."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Start the server process and wait until its model is ready."""
        if self.control is not None:
            command = [
                str(SERVE_PYTHON),
                __file__,
                str(self.config),
                "--control",
                str(self.control),
            ]
        else:
            command = [str(SERVE_PYTHON), "-m", "labelcast", "serve", str(self.config)]
        command += ["--workspace", str(self.workspace)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.model_ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"Triton server on port {self.grpc_port} did not start:\n{self.log_tail()}"
                )
            time.sleep(0.25)
        return self

    def model_ready(self) -> bool:
        """Whether the server answers and its model is ready (HTTP, 1 s timeout)."""
        import tritonclient.http as httpclient

        try:
            client = httpclient.InferenceServerClient(
                f"127.0.0.1:{self.http_port}", connection_timeout=1.0, network_timeout=1.0
            )
            try:
                return bool(client.is_model_ready(self.model))
            finally:
                client.close()
        except Exception:
            return False

    def statistics(self) -> dict[str, Any]:
        """The model's inference statistics (Triton's batch sizes among them)."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(
            f"127.0.0.1:{self.http_port}", connection_timeout=5.0, network_timeout=5.0
        )
        try:
            stats: dict[str, Any] = client.get_inference_statistics(self.model)
            return stats
        finally:
            client.close()

    def batch_sizes(self) -> dict[int, int]:
        """How many times Triton ran the model on a batch of each size."""
        model_stats = self.statistics()["model_stats"][0]
        return {
            int(entry["batch_size"]): int(entry["compute_infer"]["count"])
            for entry in model_stats.get("batch_stats", [])
        }

    def kill(self) -> None:
        """Kill the server and its tritonserver at once (like a machine losing power)."""
        if self.process is not None:
            self.thaw()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            self.process = None

    def freeze(self) -> None:
        """Stop the whole server (SIGSTOP): its sockets stay open but nothing answers."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server go on (SIGCONT)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def set_faults(self, **faults: Any) -> None:
        """Switch the server's faults (a server started with ``control``)."""
        assert self.control is not None
        partial = self.control.with_suffix(".tmp")
        partial.write_text(json.dumps(faults))
        os.replace(partial, self.control)


class _Faults:
    """The fault switch of a script-run server: re-read when the control file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: int | None = None
        self.delay_s = 0.0
        self.fail = 0

    def before_request(self) -> None:
        """Apply the current faults to one request: sleep, or raise."""
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp != self.stamp:
            self.stamp = stamp
            faults = json.loads(self.path.read_text()) if stamp is not None else {}
            self.delay_s = float(faults.get("delay_s", 0.0))
            self.fail = int(faults.get("fail", 0))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("injected failure (tests/triton_server.py)")


def _serve_with_faults(config_path: str, control: str, workspace: str | None) -> int:
    """Serve the configured model behind the fault switch (server venv only)."""
    from labelcast.commands.serve import InferFunction, serve
    from labelcast.config import load_config
    from labelcast.logs import setup_logging

    faults = _Faults(Path(control))

    def faulty(function: InferFunction) -> InferFunction:
        def infer(*args: Any, **kwargs: Any) -> Any:
            faults.before_request()
            return function(*args, **kwargs)

        return infer

    setup_logging("INFO", "text")
    config = load_config(Path(config_path), [])
    return serve(config, workspace=Path(workspace) if workspace else None, wrap=faulty)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--control", required=True)
    parser.add_argument("--workspace")
    args = parser.parse_args()
    sys.exit(_serve_with_faults(args.config, args.control, args.workspace))
