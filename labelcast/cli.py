"""The ``labelcast`` command.

Subcommands: run, check, serve, reload, schema, model-info, verify, export, listen, train.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from labelcast.commands.train_command import add_train_parser, train_command
from labelcast.config import PipelineConfig, SourceConfig, config_schema, load_config
from labelcast.errors import ConfigError, LabelcastError, ModelError, SourceError
from labelcast.logs import apply_log_config, setup_logging

log = logging.getLogger("labelcast")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``labelcast`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "INFO", args.log_format or "text")
    try:
        if args.command == "schema":
            print(json.dumps(config_schema(), indent=2))
            return EXIT_OK
        if args.command == "model-info":
            return _model_info(args.model, args.revision, as_json=args.json)
        if args.command == "train":
            return train_command(args, sys.argv[1:] if argv is None else argv)
        config = load_config(args.config, args.set)
        if args.command == "check":
            return _check(config)
        if args.command == "verify":
            return _verify(config, args)
        if args.command == "export":
            return _export(config, args)
        if args.command == "listen":
            return _listen(config, args)
        if args.command == "reload":
            return _reload(config)
        if args.command == "serve":
            apply_log_config(
                config.log, config.name, level=args.log_level, log_format=args.log_format
            )
            return _serve(config, args)
        apply_log_config(config.log, config.name, level=args.log_level, log_format=args.log_format)
        return _run(config, args)
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
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: the config's log.level, else INFO",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text or one JSON object per line on stderr (default: the config's log.format)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run a pipeline until its files end or a signal stops it"),
        ("check", "validate a config: keys, media, model, sinks"),
        ("reload", "make the running labelcast of this config re-read it (via server.bind)"),
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
    text = "print the label events a running pipeline publishes to its MQTT broker"
    listen = commands.add_parser("listen", help=text, description=text)
    listen.add_argument("config", type=Path, help="pipeline YAML file (its mqtt sink's settings)")
    listen.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    listen.add_argument("--sink", type=int, metavar="INDEX", help="which sink (default: 1st mqtt)")
    listen.add_argument(
        "--all", action="store_true", help="every topic of the pipeline, as 'topic payload' lines"
    )
    listen.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    listen.add_argument("--timeout", type=float, metavar="SECONDS", help="exit after SECONDS")
    commands.add_parser("schema", help="print the JSON Schema of the config file")
    text = "describe a checkpoint: revision, files and SHA-256, license, labels, preprocessing"
    info = commands.add_parser("model-info", help=text, description=text)
    info.add_argument("model", help="hub id or local checkpoint directory")
    info.add_argument("--revision", help="hub revision (branch, tag or commit sha)")
    info.add_argument("--json", action="store_true", help="print JSON")
    text = "check the configured model on your images: agreement with fp32, accuracy"
    verify = commands.add_parser(
        "verify",
        help=text,
        description=text + ". The configured model (its device, precision and backend) is "
        "compared with the same checkpoint in fp32 on torch on that device. A model already "
        "configured as that reference (precision fp32, or auto on a CPU, on torch) has "
        "nothing to compare: it is loaded once, the report says so, and --min-agreement is "
        "skipped; set model.precision (int8 or bf16 on a CPU, fp16 or bf16 on CUDA) to "
        "measure what it changes. Problems with DIR are all reported before the model loads.",
    )
    verify.add_argument("config", type=Path, help="pipeline YAML file (its model settings)")
    verify.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    verify.add_argument(
        "--images",
        type=Path,
        required=True,
        metavar="DIR",
        help="images; DIR/<label>/*.jpg makes a labelled set",
    )
    verify.add_argument(
        "--expect-top1",
        type=float,
        metavar="PCT",
        help="reference top-1 accuracy in percent (e.g. 85.2)",
    )
    verify.add_argument(
        "--tolerance",
        type=float,
        default=2.0,
        metavar="POINTS",
        help="allowed |top-1 - expected| in percentage points (default 2)",
    )
    verify.add_argument(
        "--min-agreement",
        type=float,
        metavar="PCT",
        help="fail if top-1 agreement with fp32 is below PCT (skipped for an fp32 model)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    text = "export the configured model to ONNX for model.backend: onnxruntime (docs/onnx.md)"
    export = commands.add_parser("export", help=text, description=text)
    export.add_argument("config", type=Path, help="pipeline YAML file (its model settings)")
    export.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", type=Path, metavar="FILE", help="the .onnx file to write")
    target.add_argument(
        "--triton-repo",
        type=Path,
        metavar="DIR",
        help="write a Triton model repository instead: uint8 input, normalising graph, "
        "config.pbtxt with dynamic batching (docs/scaling.md)",
    )
    export.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="int8: ONNX Runtime dynamic quantization (an accuracy trade-off; default none)",
    )
    export.add_argument("--json", action="store_true", help="print the result as JSON")
    add_train_parser(commands)
    text = "host the configured model on a Triton server for model.backend: triton gateways"
    serve = commands.add_parser("serve", help=text, description=text + " (docs/scaling.md)")
    serve.add_argument("config", type=Path, help="pipeline YAML file (its model settings)")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    serve.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help="where PyTriton makes its working folder, removed at exit (default: the "
        "system's temporary folder)",
    )
    return parser


def _run(config: PipelineConfig, args: argparse.Namespace) -> int:
    from labelcast.commands.progress import stdout_above_bars
    from labelcast.daemon import Daemon, exit_now

    interval = None if args.no_progress else args.progress_interval
    # Before the pipeline starts: a log sink on stdout takes sys.stdout when it opens.
    with stdout_above_bars(enabled=interval is not None):
        daemon = Daemon(args.config, args.set, config, progress_interval=interval)
        code = daemon.run()
    unfinished = daemon.pipeline.unfinished_threads()
    if unfinished:
        # A stop gave up on them (or start-up stopped during the model load); they may be
        # in native code, where the interpreter's own exit would abort (SIGABRT, 134).
        log.info("exiting with code %d; still running: %s", code, ", ".join(unfinished))
        exit_now(code)
    return code


def _reload(config: PipelineConfig) -> int:
    import urllib.error
    import urllib.request

    if config.server is None:
        raise ConfigError(
            "reload asks the running labelcast over its local endpoint, and this config has "
            "no server.bind; send SIGHUP instead (kill -HUP <pid>, or systemctl reload labelcast)"
        )
    from labelcast.server import reload_request

    # The request carries the header (and token) the endpoint asks of reloads.
    request = reload_request(config.server)
    url = request.full_url
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            print(r.read().decode())
            return EXIT_OK
    except urllib.error.HTTPError as exc:
        print(exc.read().decode())
        if exc.code in (401, 403):
            log.error("the running labelcast refused the reload request (is server.token right?)")
        else:
            log.error("the running labelcast rejected the new config (see its log)")
        return EXIT_FAILED
    except OSError as exc:
        log.error("no labelcast answers at %s (%s)", url, exc)
        return EXIT_FAILED


def _check(config: PipelineConfig) -> int:
    from labelcast.sinks import sink_class
    from labelcast.sources import source_class

    # What needs no model first, all of it: loading one takes 5-10 s, too long to wait
    # for news of a missing file, and one problem at a time makes a slow round trip.
    problems = _local_model_problems(config)
    for source_config in config.sources:
        try:
            with source_class(source_config.type)(source_config) as source:
                problems.extend(_region_problems(source_config, source.frame_size))
        except SourceError as exc:
            problems.append(str(exc))
    for sink_config in config.sinks:
        # Each sink kind checks what it cheaply can: a folder writable, a broker reachable.
        problems.extend(sink_class(sink_config.type).check(sink_config))
    model_checked = not problems
    if model_checked:
        problems = _model_problems(config)
    for problem in problems:
        log.error("%s", problem)
    if problems:
        if not model_checked:
            log.info("the model was not loaded: check loads it once the above are fixed")
        return EXIT_BAD_INPUT
    log.info("config OK: %d source(s), %d sink(s)", len(config.sources), len(config.sinks))
    return EXIT_OK


def _region_problems(config: SourceConfig, frame_size: tuple[int, int] | None) -> list[str]:
    """Find regions whose box falls outside the source's frames, when their size is known."""
    if frame_size is None:
        return []
    problems = []
    for region in config.regions:
        try:
            region.pixels(*frame_size)
        except ValueError as exc:
            problems.append(f"sources[{config.id}].regions[{region.id}].box: {exc}")
    return problems


def _local_model_problems(config: PipelineConfig) -> list[str]:
    """Find a local checkpoint directory that is missing or no checkpoint, without loading it.

    ``model.id`` is a local directory when it exists or is written as a path
    (``/``, ``./``, ``../``); anything else is a hub id, resolved when the model loads.
    """
    model_id = config.model.id
    path = Path(model_id)
    if not (model_id.startswith(("/", "./", "../")) or path.exists()):
        return []
    if not path.exists():
        return [f"model.id {model_id!r}: no such directory"]
    if not path.is_dir():
        return [f"model.id {model_id!r}: not a directory (a checkpoint is a directory)"]
    if not (path / "config.json").is_file():
        # The words model loading uses for it (labelcast/model/checkpoint.py).
        return [
            f"model directory {model_id!r} has no config.json "
            "(it is not a Hugging Face checkpoint directory)"
        ]
    return []


def _model_problems(config: PipelineConfig) -> list[str]:
    """Load the model and report what only it can tell: labels, a Triton server's answer."""
    from labelcast.labels.postprocess import StreamPostprocess
    from labelcast.model.classifier import Classifier

    problems: list[str] = []
    try:
        classifier = Classifier.load(config.model)
        log.info(
            "model %s: %d labels, revision %s",
            classifier.info.id,
            classifier.num_labels,
            classifier.info.revision or "local",
        )
        # backend triton: the server answers, and serves this checkpoint.
        remote = classifier.remote_status()
        if remote is not None:
            problems.append(remote)
        # Group maps go by class id: they must fit the model's classes.
        rules = {
            f"{source.id}/{region}": config.subject_labels(source.id, region)[0]
            for source in config.sources
            for region in [None, *(region.id for region in source.regions)]
        }
        StreamPostprocess(rules, classifier.id2label)
    except (ModelError, ConfigError) as exc:
        problems.append(str(exc))
    return problems


def _model_info(model: str, revision: str | None, *, as_json: bool) -> int:
    from labelcast.commands.model_info import format_model_info, model_info

    info = model_info(model, revision)
    print(json.dumps(info, indent=2) if as_json else format_model_info(info))
    return EXIT_OK


def _verify(config: PipelineConfig, args: argparse.Namespace) -> int:
    from labelcast.commands.verify import VerifyThresholds, format_report, load_images, verify

    thresholds = VerifyThresholds(args.expect_top1, args.tolerance, args.min_agreement)
    # Every problem found without the model first, then the model (see _check).
    images, problems = load_images(args.images, thresholds)
    problems = _local_model_problems(config) + problems
    if problems:
        for problem in problems:
            log.error("%s", problem)
        return EXIT_BAD_INPUT
    report = verify(config, images, thresholds)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return EXIT_OK if report["passed"] else EXIT_FAILED


def _export(config: PipelineConfig, args: argparse.Namespace) -> int:
    from labelcast.commands.export import export, format_export

    if args.triton_repo is not None:
        from labelcast.commands.export import export_triton_repo

        result = export_triton_repo(config.model, args.triton_repo, args.quantize)
    else:
        result = export(config.model, args.output, args.quantize)
    print(json.dumps(result, indent=2) if args.json else format_export(result))
    return EXIT_OK


def _serve(config: PipelineConfig, args: argparse.Namespace) -> int:
    from labelcast.commands.serve import serve

    return serve(config, workspace=args.workspace)


def _listen(config: PipelineConfig, args: argparse.Namespace) -> int:
    from labelcast.sinks.mqtt import listen, listen_config

    sink = listen_config(list(config.sinks), args.sink)
    if sink is None:
        which = "no mqtt sink" if args.sink is None else f"sink {args.sink} is not an mqtt sink"
        raise ConfigError(f"{args.config}: {which}; listen needs one")
    try:
        listen(
            sink,
            config.name,
            out=sys.stdout,
            everything=args.all,
            count=args.count,
            timeout_s=args.timeout,
        )
    except KeyboardInterrupt:
        return 128 + signal.SIGINT  # what a shell reports for Ctrl-C
    return EXIT_OK
