"""The ``labelcast`` command: run, check and schema."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from labelcast.config import PipelineConfig, config_schema, load_config
from labelcast.errors import ConfigError, LabelcastError, ModelError, SinkError, SourceError

log = logging.getLogger("labelcast")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``labelcast`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    try:
        if args.command == "schema":
            print(json.dumps(config_schema(), indent=2))
            return EXIT_OK
        config = load_config(args.config, args.set)
        if args.command == "check":
            return _check(config)
        interval = None if args.no_progress else args.progress_interval
        return _run(config, progress_interval=interval)
    except (ConfigError, ModelError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    except LabelcastError as exc:
        log.error("%s", exc)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelcast", description="Turn video streams into label events."
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: INFO",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text (default) or one JSON object per line on stderr",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run a pipeline until its files end or a signal stops it"),
        ("check", "validate a config: keys, media, model, sinks"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("config", type=Path, help="pipeline YAML file")
        command.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set sources.door.sample.fps=5",
        )
        if name == "run":
            command.add_argument(
                "--no-progress", action="store_true", help="no progress bars or progress log lines"
            )
            command.add_argument(
                "--progress-interval",
                type=float,
                default=10.0,
                metavar="SECONDS",
                help="seconds between progress log lines when stderr is not a terminal",
            )
    commands.add_parser("schema", help="print the JSON Schema of the config file")
    return parser


def _run(config: PipelineConfig, *, progress_interval: float | None) -> int:
    from labelcast.pipeline.runner import Pipeline
    from labelcast.progress import Progress

    pipeline = Pipeline(config)
    signals_seen: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signals_seen:
            os._exit(128 + signum)
        signals_seen.append(signum)
        log.info(
            "%s received: stopping (classifying queued frames, flushing sinks); "
            "signal again to exit at once",
            signal.Signals(signum).name,
        )
        pipeline.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pipeline.start()
    if progress_interval is not None:
        bars = sys.stderr.isatty()
        with Progress(pipeline.stats, bars=bars, log_every_s=progress_interval):
            while not pipeline.wait(0.2):
                pass
    else:
        while not pipeline.wait(0.2):
            pass
    for stats in pipeline.stats.values():
        log.info(
            "stream %s: %d frames decoded, %d classified, %d dropped%s",
            stats.stream,
            stats.decoded,
            stats.classified,
            stats.dropped,
            " (FAILED)" if stats.failed else "",
        )
    if pipeline.failed_streams:
        log.error(
            "%d stream(s) failed: %s",
            len(pipeline.failed_streams),
            ", ".join(pipeline.failed_streams),
        )
        return EXIT_FAILED
    return EXIT_OK


def _check(config: PipelineConfig) -> int:
    from labelcast.pipeline.classifier import Classifier
    from labelcast.pipeline.runner import SOURCE_CLASSES

    problems: list[str] = []
    for source_config in config.sources:
        try:
            with SOURCE_CLASSES[source_config.type](source_config):
                pass
        except SourceError as exc:
            problems.append(str(exc))
    for sink_config in config.sinks:
        path = getattr(sink_config, "path", "-")
        if sink_config.type == "log" and path != "-":
            folder = Path(path).parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            if not os.access(folder, os.W_OK):
                problems.append(str(SinkError(f"log sink: {path} is not writable")))
    try:
        classifier = Classifier.load(config.model)
        log.info(
            "model %s: %d labels, revision %s",
            classifier.info.id,
            classifier.num_labels,
            classifier.info.revision or "local",
        )
    except ModelError as exc:
        problems.append(str(exc))
    for problem in problems:
        log.error("%s", problem)
    if problems:
        return EXIT_BAD_INPUT
    log.info("config OK: %d source(s), %d sink(s)", len(config.sources), len(config.sinks))
    return EXIT_OK


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The hub client logs every retry; labelcast reports the outcome once.
    for noisy in ("httpx", "httpcore", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
