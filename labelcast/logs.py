"""Logging set-up: plain or JSON lines on stderr, tagged with pipeline and stream, rate-limited.

Every record carries the pipeline name; records logged on a source's thread (named
``source:<id>``) carry that stream. Repeated warnings and errors (same logger, same
formatted message) are let through once per ``window_s`` and then summarised with a count;
a record logged with ``extra={"always": True}`` is never held back.

Python warnings that libraries raise about their own internals (torch's deprecation
notes on quantized tensors when int8 loads, transformers' FutureWarnings, ...) are hidden:
a user can do nothing about them. ``--log-level DEBUG`` shows them again, as log records
(``logging.captureWarnings``). Warnings raised by labelcast's own code always show.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Distinct messages the repeat limiter remembers at most (messages carry varying details).
_MAX_REMEMBERED = 1024
NOISY_LOGGERS = ("httpx", "httpcore", "urllib3", "huggingface_hub", "filelock", "aioice", "aiortc")
# What libraries warn with about themselves (deprecations, implementation notes); other
# categories (ResourceWarning, RuntimeWarning, ...) may be about labelcast's use of them.
LIBRARY_WARNINGS: tuple[type[Warning], ...] = (
    UserWarning,
    FutureWarning,
    DeprecationWarning,
    PendingDeprecationWarning,
)


class LogConfig(BaseModel):
    """How labelcast logs (to stderr); ``--log-format``/``--log-level`` override these."""

    model_config = ConfigDict(extra="forbid")

    format: Annotated[
        Literal["text", "json"], Field(description="text, or one JSON object per line.")
    ] = "text"
    level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"], Field(description="Lowest level logged.")
    ] = "INFO"
    repeat_window_s: Annotated[
        float,
        Field(
            ge=0,
            description="Repeats of one warning/error (the same text from the same logger) "
            "within this window are counted, not logged; 0 logs every one.",
        ),
    ] = 60.0


class _Context(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.pipeline = "labelcast"

    def filter(self, record: logging.LogRecord) -> bool:
        record.pipeline = self.pipeline
        name = record.threadName or ""
        record.stream = name.split(":", 1)[1] if name.startswith("source:") else None
        return True


class _RateLimit(logging.Filter):
    def __init__(self, window_s: float) -> None:
        super().__init__()
        self.window_s = window_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # Answers to an operator's action (a reload) are never held back.
        if (
            record.levelno < logging.WARNING
            or self.window_s <= 0
            or getattr(record, "always", False)
        ):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # Arguments that don't fit the template: let the handler report it as usual.
            return True
        # The formatted message, not the template: "%s" carries many different errors.
        key = (record.name, message)
        now = time.monotonic()
        with self._lock:
            first, suppressed = self._seen.get(key, (0.0, -1))
            if suppressed >= 0 and now - first < self.window_s:
                self._seen[key] = (first, suppressed + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > _MAX_REMEMBERED:
                self._forget(now)
        if suppressed > 0:
            record.msg = (
                f"{message} (and {suppressed} more like it in the last {self.window_s:.0f} s)"
            )
            record.args = ()
        return True

    def _forget(self, now: float) -> None:
        """Drop messages whose window has passed; if still too many, the oldest half."""
        self._seen = {
            key: seen for key, seen in self._seen.items() if now - seen[0] < self.window_s
        }
        if len(self._seen) > _MAX_REMEMBERED:
            newest = sorted(self._seen.items(), key=lambda item: item[1][0])
            self._seen = dict(newest[len(newest) // 2 :])


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pipeline": getattr(record, "pipeline", None),
            "stream": getattr(record, "stream", None),
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(pipeline)s] %(name)s: %(message)s")


_context = _Context()
_rate_limit = _RateLimit(60.0)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send labelcast's logs to stderr in the given format, replacing other root handlers.

    Library warnings are hidden unless ``level`` is DEBUG (then they are logged).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    handler.addFilter(_context)
    handler.addFilter(_rate_limit)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # These clients log every retry or ICE step; labelcast reports outcomes once.
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)
    _route_warnings(debug=level.upper() == "DEBUG")


def apply_log_config(
    config: LogConfig, pipeline: str, *, level: str | None = None, log_format: str | None = None
) -> None:
    """Apply a pipeline's ``log`` settings (command-line values win) and name the pipeline."""
    setup_logging(level or config.level, log_format or config.format)
    _context.pipeline = pipeline
    _rate_limit.window_s = config.repeat_window_s


_ShowWarning = Callable[..., None]
# warnings.showwarning as it was before labelcast replaced it (set by _route_warnings).
_shown_before: _ShowWarning | None = None


def _route_warnings(*, debug: bool) -> None:
    """Hide library warnings, or (``debug``) log every warning as a ``py.warnings`` record.

    Safe to call again with another level: each call undoes the previous one's routing.
    """
    global _shown_before
    logging.captureWarnings(False)  # restores what a previous capture replaced
    if warnings.showwarning is not _show_unless_library:
        _shown_before = warnings.showwarning
    if debug:
        warnings.showwarning = _shown_before or warnings.showwarning
        logging.captureWarnings(True)
    else:
        warnings.showwarning = _show_unless_library


def _show_unless_library(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` that drops LIBRARY_WARNINGS raised outside labelcast."""
    if issubclass(category, LIBRARY_WARNINGS) and not _raised_by_labelcast():
        return
    if _shown_before is not None:  # always, once _route_warnings installed this
        _shown_before(message, category, filename, lineno, file, line)


def _raised_by_labelcast() -> bool:
    """Whether the code that raised the warning being shown is labelcast's (or a script's).

    Judged by the frame that called ``warnings.warn`` (or the native function that
    warned), not by ``filename``: a library's ``stacklevel`` points that at its caller,
    often labelcast, for warnings about the library's own internals.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in ("warnings", __name__):
        frame = frame.f_back
    if frame is None:
        return True
    module = str(frame.f_globals.get("__name__", ""))
    return module in ("labelcast", "__main__") or module.startswith("labelcast.")
