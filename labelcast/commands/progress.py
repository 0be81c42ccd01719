"""Progress reporting for ``labelcast run``: bars on a terminal, periodic log lines otherwise.

One bar (or line) per stream counts its *classified* frames against how many will be
classified (``StreamStats.expected``), with a rate and an ETA; it shows 100 % only once
the stream's last frame is classified, and its final figures are the run's summary's.
On a terminal, log records are written through the bars (tqdm's
``logging_redirect_tqdm``), and so are whole lines on stdout when it is a terminal too
(a log sink's events), so that no line lands inside a bar.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, TextIO, cast

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from labelcast.pipeline.state import StreamStats

log = logging.getLogger(__name__)

# How often bars are redrawn: smooth enough for a rate, cheap enough beside the classifier.
_BAR_REFRESH_S = 0.25
# The log lines' rate is measured over this many of their intervals (at least _MIN_WINDOW_S):
# recent enough to follow a change of pace, long enough not to jump with each batch.
_RATE_INTERVALS = 3
_MIN_WINDOW_S = 5.0

_BAR_FORMAT = (
    "{desc}: {percent:3d}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)
# Before the total is known (a live stream; a file before its sampling rate is): no bar.
_COUNT_FORMAT = "{desc}: {n_fmt} classified [{elapsed}, {rate_fmt}{postfix}]"


def percent(classified: int, expected: int | None, finished: bool) -> int | None:
    """Return the whole percentage classified, 100 only when ``finished``; None if unknown.

    Rounded down, and held at 99 until the stream is finished, so that 100 % never shows
    while a frame still waits (tqdm's own rounds 99.6 % up, and an estimated total can be
    reached early).
    """
    if not expected:
        return None
    value = min(100, 100 * classified // expected)
    return value if finished else min(value, 99)


class _Bar(tqdm):  # type: ignore[misc]  # tqdm ships no type information
    """A tqdm bar whose percentage comes from :func:`percent` (``finished`` is set by us)."""

    # No monitor thread: the progress thread is the only one that moves these bars.
    monitor_interval = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.finished = False
        self._finished_after: float | None = None  # seconds from the start to finished
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        """Return the values tqdm formats the bar with, plus ``percent``.

        A finished stream's bar stops its clock: it keeps the time it took and its
        average rate while other streams go on (and when tqdm redraws it at the end).
        """
        values: dict[str, Any] = super().format_dict
        n = int(self.n)
        values["percent"] = percent(n, self.total, self.finished) or 0
        if self.finished:
            if self._finished_after is None:
                self._finished_after = float(values["elapsed"])
            took = self._finished_after
            values["elapsed"] = took
            values["rate"] = n / took if took > 0 else None
        return values


class _RateMeter:
    """A stream's classification rate over a recent window, for the plain log lines."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, classified: int) -> float | None:
        """Record the count at ``now``; return frames per second over the window, if known."""
        samples = self._samples
        samples.append((now, classified))
        while len(samples) > 2 and now - samples[1][0] >= self._window_s:
            samples.popleft()
        then, before = samples[0]
        if now <= then:
            return None
        return (classified - before) / (now - then)


def _duration(seconds: float) -> str:
    """Format seconds as ``M:SS`` or ``H:MM:SS``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(stats: StreamStats, rate: float | None, *, finished: bool) -> str:
    """Return the plain progress line of one stream.

    ``rate`` is in frames classified per second; ``finished`` is ``stats.finished`` read
    by the caller *before* this reads the counts (then final), and the caller's to act on.
    """
    classified, expected = stats.classified, stats.expected
    done = percent(classified, expected, finished)
    if expected is not None and done is not None:
        counted = f"{classified}/{expected} frames classified ({done}%)"
    else:
        counted = f"{classified} frames classified"
    speed = f"{rate:.1f} frames/s" if rate is not None else "? frames/s"
    if finished:
        eta = ""
    elif expected is not None and rate:
        eta = f", ETA {_duration(max(0, expected - classified) / rate)}"
    else:
        eta = ", ETA ?"
    total = f"/{stats.total_frames}" if stats.total_frames else ""
    failed = " (FAILED)" if stats.failed else ""
    return (
        f"stream {stats.stream}: {counted}, {speed}{eta}; "
        f"{stats.decoded}{total} decoded, {stats.dropped} dropped{failed}"
    )


class Progress:
    """Shows each stream's classification progress, with rate and ETA, until stopped.

    ``bars``: tqdm bars on stderr (a terminal), log records written through them.
    Otherwise a log line per stream every ``log_every_s`` while it has frames to
    classify, and a last one when its last frame is classified.
    """

    def __init__(
        self, stats: Mapping[str, StreamStats], *, bars: bool, log_every_s: float = 10.0
    ) -> None:
        self._stats = stats
        self._bars_wanted = bars
        self._interval = _BAR_REFRESH_S if bars else log_every_s
        self._window_s = max(_MIN_WINDOW_S, _RATE_INTERVALS * self._interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._bars: dict[str, _Bar] = {}
        self._meters: dict[str, _RateMeter] = {}
        self._reported: set[str] = set()  # streams whose last line was logged
        self._redirect = contextlib.ExitStack()

    def __enter__(self) -> Progress:
        if self._bars_wanted:
            # Console log records go through tqdm.write: it clears the bars, writes the
            # line and redraws them, so no line is written into a bar.
            self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=_Bar))
        else:
            # Counted from now, so the first line has a rate already.
            now, window = time.monotonic(), self._window_s
            for stream, stats in list(self._stats.items()):
                self._meters[stream] = _RateMeter(window)
                self._meters[stream].add(now, stats.classified)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        # The pipeline has ended: the final figures, the same as the summary's.
        try:
            if self._bars_wanted:
                self._update_bars()
                for bar in self._bars.values():  # in position order: each leaves its line
                    bar.close()
            else:
                self._log_lines(final=True)
        finally:
            self._redirect.close()

    def _run(self) -> None:
        if self._bars_wanted:
            while True:
                self._update_bars()  # at once: the bars show from the start
                if self._stop.wait(self._interval):
                    return
        # A first line only after an interval, when there is something to say.
        while not self._stop.wait(self._interval):
            self._log_lines(final=False)

    def _update_bars(self) -> None:
        for stream, stats in list(self._stats.items()):
            bar = self._bars.get(stream)
            if bar is None:
                # A stream a reload added gets the next line.
                bar = _Bar(
                    desc=stream,
                    unit=" frames",
                    bar_format=_COUNT_FORMAT,
                    position=len(self._bars),
                    leave=True,
                    dynamic_ncols=True,
                    # Redraw and measure the rate at every update, even one without
                    # progress (so a stall shows), rather than tqdm's own pacing.
                    mininterval=0,
                    miniters=0,
                )
                self._bars[stream] = bar
            # ``finished`` first: once it is true the counts read after it are final, so
            # a bar never shows 100 % with a count short of the summary's.
            finished = stats.finished
            expected, classified = stats.expected, stats.classified
            postfix = []
            if stats.dropped:
                postfix.append(f"{stats.dropped} dropped")
            if stats.failed:
                postfix.append("FAILED")
            elif stats.state == "reconnecting":
                postfix.append("reconnecting")
            with bar.get_lock():  # tqdm.write (a log line) redraws only a consistent bar
                if expected != bar.total:
                    bar.total = expected
                    bar.bar_format = _BAR_FORMAT if expected else _COUNT_FORMAT
                bar.set_postfix_str(", ".join(postfix), refresh=False)
                bar.finished = finished
                bar.update(classified - bar.n)  # redraws (mininterval, miniters 0)

    def _log_lines(self, *, final: bool) -> None:
        now = time.monotonic()
        for stream, stats in list(self._stats.items()):
            if stream in self._reported:
                continue
            meter = self._meters.setdefault(stream, _RateMeter(self._window_s))
            # Read once, before the counts: the line logged and the decision agree.
            finished = stats.finished
            rate = meter.add(now, stats.classified)
            if finished:
                # Its last line, once: 100 % and the summary's figures.
                self._reported.add(stream)
            elif final:
                continue  # stopped before it finished: the summary says where it got to
            log.info("%s", progress_line(stats, rate, finished=finished))


class _LinesAboveBars:
    """Stdout for while bars are drawn on stderr: whole lines, written above the bars.

    Text is held until its line is complete, then the bars are cleared, the lines
    written and the bars drawn again below them (tqdm's ``external_write_mode``).
    Everything else (``isatty``, ``fileno``, ``encoding``, ...) is the stream's own.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._held = ""
        self._lock = threading.Lock()  # sink threads and the main thread write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        """Hold ``text``; write the lines it completes above the bars."""
        with self._lock:
            lines, newline, rest = (self._held + text).rpartition("\n")
            self._held = rest
            if newline:
                self._emit(lines + newline)
        return len(text)

    def flush(self) -> None:
        """Flush the stream written to (a part line stays held: a bar would follow it)."""
        self._stream.flush()

    def release(self) -> None:
        """Write out a part line still held."""
        with self._lock:
            if self._held:
                self._emit(self._held)
                self._held = ""

    def _emit(self, text: str) -> None:
        with _Bar.external_write_mode(file=sys.stderr):
            self._stream.write(text)
            self._stream.flush()


@contextlib.contextmanager
def stdout_above_bars(enabled: bool) -> Iterator[None]:
    """While ``enabled`` and stdout and stderr are both terminals, write stdout above the bars.

    For ``labelcast run``: a log sink writing events to stdout (``path: "-"``) shares the
    terminal with the progress bars on stderr. It takes ``sys.stdout`` when it opens, so
    this must be entered before the pipeline starts. Piped stdout is left alone.
    """
    if not (enabled and sys.stderr.isatty() and sys.stdout.isatty()):
        yield
        return
    original = sys.stdout
    wrapper = _LinesAboveBars(original)
    sys.stdout = cast(TextIO, wrapper)
    try:
        yield
    finally:
        sys.stdout = original
        wrapper.release()
