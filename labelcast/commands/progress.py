"""Progress reporting for ``labelcast run``: bars on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from tqdm import tqdm

from labelcast.pipeline.state import StreamStats

log = logging.getLogger(__name__)


class Progress:
    """Shows each stream's decoding progress and classification rate until stopped."""

    def __init__(
        self, stats: Mapping[str, StreamStats], *, bars: bool, log_every_s: float = 10.0
    ) -> None:
        self._stats = stats
        self._bars = bars
        self._interval = 0.5 if bars else log_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.monotonic()
        bars: dict[str, tqdm] = {}
        if self._bars:
            for position, (stream, stats) in enumerate(list(self._stats.items())):
                bars[stream] = tqdm(
                    total=stats.total_frames,
                    desc=stream,
                    unit="frame",
                    position=position,
                    leave=True,
                    dynamic_ncols=True,
                )
        while not self._stop.wait(self._interval):
            elapsed = time.monotonic() - started
            for stream, stats in list(self._stats.items()):
                rate = stats.classified / elapsed if elapsed > 0 else 0.0
                if stream in bars:
                    bar = bars[stream]
                    if bar.total is None and stats.total_frames is not None:
                        bar.total = stats.total_frames
                    bar.update(stats.decoded - bar.n)
                    bar.set_postfix(classified=stats.classified, fps=f"{rate:.1f}", refresh=False)
                elif not stats.ended:
                    total = f"/{stats.total_frames}" if stats.total_frames else ""
                    log.info(
                        "stream %s: %d%s frames decoded, %d classified (%.1f/s), %d dropped",
                        stream,
                        stats.decoded,
                        total,
                        stats.classified,
                        rate,
                        stats.dropped,
                    )
        for stream, bar in bars.items():
            bar.update(self._stats[stream].decoded - bar.n)
            bar.close()
