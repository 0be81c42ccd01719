"""``labelcast train``'s command line: its options, the checks before a model loads, the run.

Imports nothing heavy at module level (the ``labelcast`` parser is built for every
command, ``labelcast schema`` included): the data checks import PyAV, training torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labelcast.model.config import DEFAULT_MODEL_ID, BatchConfig

log = logging.getLogger("labelcast")

# The fewest pictures per label, and the largest held-out share (each label then keeps
# at least half of its pictures for training, and the holdout gets at least one).
MIN_PER_LABEL = 5
MAX_HOLDOUT = 0.5
DEFAULT_EPOCHS = 300
# What train writes into -o (and, with --force, replaces there).
OUTPUT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")

_EXIT_OK = 0
_EXIT_BAD_INPUT = 2


def add_train_parser(commands: Any) -> None:
    """Add ``train`` to the ``labelcast`` command's subparsers."""
    text = "train a new classification head on your labelled pictures (docs/teach.md)"
    train = commands.add_parser(
        "train",
        help=text,
        description=text + f". DATA_DIR/<label>/*.jpg (.jpeg, .png, .bmp, .webp): at least 2 "
        f"labels and {MIN_PER_LABEL} pictures per label (20-40 recommended); hidden files and "
        "files that are not pictures are skipped. Writes a Hugging Face checkpoint that "
        "labelcast run, verify and model-info take as model.id.",
    )
    train.add_argument(
        "data", type=Path, metavar="DATA_DIR", help="one folder of pictures per label"
    )
    train.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="the checkpoint folder to write (new or empty; see --force)",
    )
    train.add_argument(
        "--base",
        default=DEFAULT_MODEL_ID,
        metavar="ID",
        help=f"base checkpoint: hub id or local directory (default {DEFAULT_MODEL_ID})",
    )
    train.add_argument(
        "--revision", metavar="SHA", help="hub revision of the base; pin a commit sha"
    )
    train.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        metavar="SHARE",
        help=f"share of each label's pictures held out to measure accuracy, 0 to "
        f"{MAX_HOLDOUT} (default 0.2; 0 trains on all and measures no accuracy)",
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the holdout draw and training (default 0)"
    )
    train.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        metavar="N",
        help=f"full-batch training steps of the head (default {DEFAULT_EPOCHS})",
    )
    train.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the base model runs (default auto: CUDA if there is one)",
    )
    default_batch = BatchConfig().max_size
    train.add_argument(
        "--batch-size",
        type=int,
        default=default_batch,
        metavar="N",
        help=f"pictures per forward pass (default {default_batch}, as model.batch.max_size)",
    )
    train.add_argument(
        "--force",
        action="store_true",
        help=f"write into a non-empty OUT, replacing {', '.join(OUTPUT_FILES)} there",
    )
    train.add_argument("--json", action="store_true", help="print the report as JSON")


def train_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run ``labelcast train`` with parsed ``args``; ``argv`` goes into the model card."""
    from labelcast.commands.train_data import holdout_problem, load_training_data, output_problem

    # Every problem found without the model first, all at once, before the model loads.
    problems = [
        problem
        for problem in (
            holdout_problem(args.holdout),
            output_problem(args.output, args.data, force=args.force),
            None if args.epochs >= 1 else f"--epochs {args.epochs}: must be at least 1",
            None if args.batch_size >= 1 else f"--batch-size {args.batch_size}: must be at least 1",
        )
        if problem is not None
    ]
    data, data_problems = load_training_data(args.data)
    problems += data_problems
    if problems:
        for problem in problems:
            log.error("%s", problem)
        return _EXIT_BAD_INPUT
    if data.skipped:
        log.info(
            "skipped %d file(s) that are not pictures (hidden, other types, in subfolders), "
            "e.g. %s",
            len(data.skipped),
            data.skipped[0],
        )
    from labelcast.commands.train import TrainOptions, format_report, train

    options = TrainOptions(
        out=args.output,
        base=args.base,
        revision=args.revision,
        holdout=args.holdout,
        seed=args.seed,
        epochs=args.epochs,
        device=args.device,
        batch_size=args.batch_size,
        command=shlex.join(["labelcast", *argv]),
    )
    report = train(data, options)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return _EXIT_OK
