"""The model card (``README.md``) ``labelcast train`` writes beside the checkpoint.

Its YAML front matter is what the Hugging Face hub reads (``base_model`` for a hub base,
``library_name``, ``pipeline_tag``, the base's ``license`` when its card states one); the
text names the base model and revision, the pictures per label, the held-out accuracy with
its confusion matrix, and the exact command.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any


def model_card(report: dict[str, Any], license_name: str | None, *, local: bool) -> str:
    """Return the model card of a checkpoint ``labelcast train`` wrote; ``report`` is train's."""
    base = report["base"]
    front = []
    if not local:
        front.append(f"base_model: {json.dumps(base['id'])}")
    front += ["library_name: transformers", "pipeline_tag: image-classification"]
    if license_name:
        # A new head on the base's weights: the base's terms still apply.
        front.append(f"license: {json.dumps(license_name)}")
    front += ["tags:", "- labelcast", "- linear-probe"]
    if local:
        where = f"the local checkpoint directory `{base['id']}` (no hub revision)"
    else:
        where = f"`{base['id']}` at revision `{base['revision']}`"
    labels = report["labels"]
    lines = [
        "---",
        *front,
        "---",
        "",
        f"# {_name(report['output'])}",
        "",
        f"An image classifier for {len(labels)} labels ({', '.join(f'`{x}`' for x in labels)}), "
        "made with `labelcast train`: the base model's weights unchanged, with a new "
        "linear classification head trained on its features (a linear probe).",
        "",
        f"- Base model: {where}",
        f"- Head: `classifier`, Linear({report['hidden_size']} → {len(labels)}), trained "
        f"{report['epochs']} epochs (full batch) with seed {report['seed']}",
        f"- Made with labelcast {_version()}",
        "",
        "## Training data",
        "",
        "| label | pictures | trained on | held out |",
        "|---|---|---|---|",
    ]
    for label, counts in report["pictures"].items():
        total = counts["train"] + counts["holdout"]
        lines.append(f"| `{label}` | {total} | {counts['train']} | {counts['holdout']} |")
    lines += ["", "## Evaluation", ""]
    accuracy = report["holdout_top1_pct"]
    if accuracy is None:
        lines.append(
            "Not measured: every picture was trained on (`--holdout 0`). Training top-1: "
            f"{report['train_top1_pct']:.2f}%."
        )
    else:
        held = len(report["held_out"])
        lines += [
            f"Held-out top-1 accuracy: **{accuracy:.2f}%** on {held} pictures "
            f"({report['holdout']:.0%} of each label, drawn with seed {report['seed']}, "
            "not trained on). Training top-1: "
            f"{report['train_top1_pct']:.2f}%.",
            "",
            "Confusion (rows: true label, columns: predicted):",
            "",
            "| | " + " | ".join(f"`{x}`" for x in labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for label, row in zip(labels, report["confusion"], strict=True):
            lines.append(f"| `{label}` | " + " | ".join(str(n) for n in row) + " |")
    lines += [
        "",
        "## How it was made",
        "",
        "```sh",
        report["command"],
        "```",
        "",
        "## Use",
        "",
        "In a labelcast config (`labelcast run`, `verify`, `model-info` take it as it is):",
        "",
        "```yaml",
        "model:",
        f"  id: {report['output']}",
        "```",
        "",
        "or with transformers: `AutoModelForImageClassification.from_pretrained(<this folder>)`.",
        "",
    ]
    return "\n".join(lines)


def _name(output: str) -> str:
    return output.rstrip("/").rsplit("/", 1)[-1] or output


def _version() -> str:
    try:
        return metadata.version("labelcast")
    except metadata.PackageNotFoundError:
        return "(version unknown)"
