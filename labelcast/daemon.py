"""``labelcast run`` as a process: signals, graceful stop, reload, health endpoint, systemd."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from labelcast.commands.progress import Progress
from labelcast.config import PipelineConfig, load_config
from labelcast.errors import LabelcastError
from labelcast.pipeline.metrics import CONTENT_TYPE
from labelcast.pipeline.runner import Pipeline
from labelcast.server import Endpoints, OpsServer
from labelcast.systemd import Notifier, Watchdog, watchdog_interval_s

log = logging.getLogger("labelcast")

EXIT_OK = 0
EXIT_FAILED = 1


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` at once, without the interpreter's shutdown.

    For a run that gave up on threads still inside native code (a forward pass in
    torch, a sink's write to a full pipe, a model download): a normal interpreter exit
    then aborts the process (``terminate called without an active exception``, SIGABRT)
    or hangs. Log lines are already out (each is flushed as it is written); so is every
    line a sink wrote.
    """
    os._exit(code)


class Daemon:
    """Runs one pipeline until its files end or a signal stops it; reloads on SIGHUP."""

    def __init__(
        self,
        config_path: Path,
        overrides: list[str],
        config: PipelineConfig,
        *,
        progress_interval: float | None,
    ) -> None:
        self._config_path = config_path
        self._overrides = overrides
        self._progress_interval = progress_interval
        self.pipeline = Pipeline(config)
        self._notifier = Notifier()
        self._stop_requested: float | None = None
        self._reload_lock = threading.Lock()

    def run(self) -> int:
        """Start, serve, wait; return the exit code. Model/sink errors at start propagate.

        A stop signal during start-up ends it at once (see ``Pipeline.start``): nothing
        opens, systemd hears ``STOPPING=1`` and never ``READY=1``, and the code is 0.
        Threads a stop gave up on may still run when this returns
        (``pipeline.unfinished_threads()``): end the process with :func:`exit_now` then.
        """
        pipeline = self.pipeline
        self._install_signals()
        self._notifier.notify("STATUS=loading the model")
        pipeline.start()
        config = pipeline.config
        server: OpsServer | None = None
        watchdog: Watchdog | None = None
        if self._stop_requested is None:
            server = OpsServer(config.server, self._endpoints()) if config.server else None
            if server is not None:
                server.start()
            self._notifier.notify(f"READY=1\nSTATUS=classifying {len(config.sources)} stream(s)")
            interval = watchdog_interval_s()
            watchdog = Watchdog(self._notifier, pipeline.liveness, interval) if interval else None
            if watchdog is not None:
                watchdog.start()
        try:
            finished = self._wait()
        finally:
            if watchdog is not None:
                watchdog.stop()
            if server is not None:
                server.close()
            self._notifier.notify("STOPPING=1")
            self._notifier.close()
        return self._summarise(finished)

    def reload(self) -> tuple[bool, dict[str, Any]]:
        """Re-read the config file; apply it if valid, else keep running the old one."""
        with self._reload_lock:
            self._notifier.notify("RELOADING=1")
            try:
                config = load_config(self._config_path, self._overrides)
                result = self.pipeline.reconfigure(config)
            except LabelcastError as exc:
                log.error(
                    "reload rejected, still running the previous configuration: %s",
                    exc,
                    extra={"always": True},
                )
                return False, {"error": str(exc)}
            finally:
                self._notifier.notify("READY=1")
            return True, {
                "added": list(result.added),
                "removed": list(result.removed),
                "restarted": list(result.restarted),
                "kept": list(result.kept),
                "sinks_added": result.sinks_added,
                "sinks_removed": result.sinks_removed,
                "model_reloaded": result.model_reloaded,
            }

    def _endpoints(self) -> Endpoints:
        pipeline = self.pipeline

        def health() -> tuple[bool, dict[str, Any]]:
            ok, reason = pipeline.liveness()
            return ok, {"reason": reason}

        return Endpoints(
            health=health,
            ready=pipeline.readiness,
            metrics=lambda: (pipeline.metrics.exposition(), CONTENT_TYPE),
            reload=self.reload,
        )

    def _install_signals(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            if self._stop_requested is not None:
                exit_now(128 + signum)  # a second signal: the user wants out now
            self._stop_requested = time.monotonic()
            log.info(
                "%s received: stopping (classifying queued frames, flushing sinks, at most "
                "%.0f s); signal again to exit at once",
                signal.Signals(signum).name,
                self.pipeline.config.shutdown_timeout_s,
            )
            self._notifier.notify("STOPPING=1")
            self.pipeline.stop()

        def on_reload(signum: int, frame: FrameType | None) -> None:
            log.info("SIGHUP received: reloading %s", self._config_path)
            threading.Thread(target=self.reload, name="reload", daemon=True).start()

        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, on_reload)

    def _wait(self) -> bool:
        """Wait for the pipeline; after a stop signal, at most shutdown_timeout_s.

        Returns False if the stop gave up. A classifier error ends the pipeline too
        (logged where it happened; ``_summarise`` turns it into exit 1).
        """
        progress: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self._progress_interval is not None:
            progress = Progress(
                self.pipeline.stats, bars=sys.stderr.isatty(), log_every_s=self._progress_interval
            )
        with progress:
            while not self._finished(0.2):
                started = self._stop_requested
                limit = self.pipeline.config.shutdown_timeout_s
                if started is not None and time.monotonic() - started > limit:
                    log.error(
                        "shutdown took over shutdown_timeout_s (%.0f s): exiting without "
                        "waiting for the rest",
                        limit,
                    )
                    self.pipeline.abort()
                    self._finished(2.0)
                    return False
        return True

    def _finished(self, timeout: float) -> bool:
        """``pipeline.wait(timeout)``, except that the pipeline's own error is not raised."""
        try:
            return self.pipeline.wait(timeout)
        except Exception as exc:
            if exc is not self.pipeline.error:
                raise
            return True

    def _summarise(self, finished: bool) -> int:
        pipeline = self.pipeline
        for stats in list(pipeline.stats.values()):
            log.info(
                "stream %s: %d frames decoded, %d sampled, %d classified, %d dropped%s%s",
                stats.stream,
                stats.decoded,
                stats.sampled,
                stats.classified - stats.unchanged,
                stats.dropped,
                _gate_summary(stats.unchanged, stats.skipped),
                " (FAILED)" if stats.failed else "",
            )
        if pipeline.failed_streams:
            log.error(
                "%d stream(s) failed: %s",
                len(pipeline.failed_streams),
                ", ".join(pipeline.failed_streams),
            )
            return EXIT_FAILED
        if pipeline.error is not None:
            return EXIT_FAILED
        return EXIT_OK if finished else EXIT_FAILED


def _gate_summary(unchanged: int, skipped: dict[str | None, int]) -> str:
    """Describe what the change gate skipped: frames left out, pictures per subject."""
    if not skipped:
        return ""
    subjects = ", ".join(
        f"{region or 'whole frame'} {count}"
        for region, count in sorted(skipped.items(), key=lambda item: item[0] or "")
    )
    return f"; {unchanged} unchanged (not classified); pictures skipped: {subjects}"
