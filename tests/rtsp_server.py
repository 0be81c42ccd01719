"""A real RTSP server for the tests: GStreamer's RTSP server streaming an H.264 clip.

Run with the system Python (it needs ``python3-gi`` and ``gir1.2-gst-rtsp-server-1.0``,
which are not pip-installable)::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --clip clip.mp4 [--user U --password P]

It serves ``rtsp://127.0.0.1:<port>/cam``, one pipeline per client (each client sees
the clip from its start, paced in real time), prints ``ready`` once it listens, and
runs until killed. The tests kill, freeze (SIGSTOP) and restart it.

The fixture half of this module (``RtspServer``) runs under the test's Python.
"""

from __future__ import annotations

import argparse
import functools
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"


def serve(port: int, clip: str, user: str | None, password: str | None) -> None:
    """Serve ``clip`` on ``rtsp://127.0.0.1:<port>/cam`` until killed (system Python only)."""
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    # The clip is already H.264: demux and packetise it, no encoder needed.
    factory.set_launch(
        f'( filesrc location="{clip}" ! qtdemux ! h264parse config-interval=-1 '
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    factory.set_shared(False)
    if user is not None and password is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", user)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role(user)
        permissions.add_permission_for_role(user, "media.factory.access", True)
        permissions.add_permission_for_role(user, "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


@functools.cache
def missing_requirements() -> str | None:
    """Say what the RTSP server needs and this machine lacks, or None if it can run.

    Probed once per test process (it starts the system Python); tests route the answer
    through ``helpers.require`` (component ``gstreamer-rtsp``).
    """
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('qtdemux', 'h264parse', 'rtph264pay') "
        "if Gst.ElementFactory.find(e) is None];"
        "print(' '.join(missing))"
    )
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        return "GStreamer RTSP server bindings missing (gir1.2-gst-rtsp-server-1.0, python3-gi)"
    if result.stdout.strip():
        return (
            f"GStreamer elements missing: {result.stdout.strip()} (gstreamer1.0-plugins-good/-bad)"
        )
    return None


class RtspServer:
    """A GStreamer RTSP server process the test controls: start, kill, freeze, thaw."""

    def __init__(
        self,
        port: int,
        clip: Path,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port = port
        self.clip = clip
        self.user = user
        self.password = password
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """The stream's URL, without credentials."""
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, timeout: float = 15.0) -> RtspServer:
        """Start the server process and wait until it listens."""
        command = [SYSTEM_PYTHON, __file__, "--port", str(self.port), "--clip", str(self.clip)]
        env = dict(os.environ)
        if self.user is not None and self.password is not None:
            command += ["--user", self.user]
            env["RTSP_TEST_PASSWORD"] = self.password
        # The venv's variables would make the system Python look in the wrong places.
        for name in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        # Wait for "ready" without ever blocking past the timeout.
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.kill()
            raise RuntimeError(f"RTSP server on port {self.port} did not start")
        return self

    def kill(self) -> None:
        """Kill the server at once (like a camera losing power)."""
        if self.process is not None:
            self.thaw()
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def freeze(self) -> None:
        """Stop the server process (SIGSTOP): its sockets stay open but nothing flows."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server go on (SIGCONT)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--user")
    args = parser.parse_args()
    serve(args.port, args.clip, args.user, os.environ.get("RTSP_TEST_PASSWORD"))
