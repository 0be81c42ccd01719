#!/usr/bin/env python
"""Render BENCHMARKS.md's tables from the raw results committed in ``bench/results/``.

Every figure in BENCHMARKS.md's tables comes from a JSON file that ``bench/bench.py
--json bench/results/NAME.json`` (or ``scripts/keyframes_cpu.py --json ...``) wrote: the
run's name, date, machine, exact command and results. A table is a block between two
marker comments that name what it shows and which runs, in order:

    <!-- table:cpu-10s kind=throughput rows=cpu-10s-fp32,cpu-10s-int8-kf -->
    (rendered here)
    <!-- /table -->

Kinds: ``throughput`` (bare, e2e, naive at the same precision and in fp32, and the
ratios), ``targets`` (each target of issue #7 a run can speak to, and whether it was met),
``time`` (where e2e's time goes), ``load`` (latency at a fraction of capacity), ``soak``
(drops and RSS growth under each rule), ``keyframes`` (decode CPU time saved),
``cameras`` (the live cameras each variant holds: ``bench/cameras.py``) and ``zeroshot``
(zero-shot image towers' cost per frame against BEiT-base: ``bench/zeroshot.py``).

A run is found by its JSON's ``name``. Noise is never counted as a target met: a ratio
comes with the interval its two rates' spreads allow (``ratio_intervals``), and a ratio
whose interval holds 1.0 or its target, or an e2e/bare above 1 (e2e cannot outrun the
bare model: such a figure is noise), is marked "within noise" instead of bold.

    python bench/render.py            # rewrite BENCHMARKS.md's tables
    python bench/render.py --check    # exit 1 if BENCHMARKS.md differs from the JSON

Both exit 1 when a table names a run with no JSON (it is rendered as missing), or a
``--quick`` smoke run.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOC = REPO / "BENCHMARKS.md"

BENCH_SCHEMA = "labelcast.bench/2"
KEYFRAMES_SCHEMA = "labelcast.keyframes/1"
CAMERAS_SCHEMA = "labelcast.cameras/1"
ZEROSHOT_SCHEMA = "labelcast.zeroshot-bench/1"

MARKER = re.compile(
    r"(?P<open><!-- table:(?P<id>[\w.-]+)(?P<options>[^>]*?)\s*-->)\n"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /table -->)",
    re.DOTALL,
)

# The targets of issue #7 (CPU). e2e/naive is against the naive loop in fp32: that is
# the loop they were set against, before the naive loop ran at labelcast's precision.
NAIVE_FP32_TARGETS = {"fp32": 1.35, "int8": 2.8}
E2E_OVER_BARE_TARGETS = {"all": 0.85, "keyframes": 0.95}
SOAK_TARGET_PCT = 5.0
# The RSS rule the soak target was set with: the figure under it is shown first.
SOAK_TARGET_RULE = "from-first-window"


# Typography of the rendered tables (named: ruff flags them as look-alikes in strings).
DASH = "\u2013"  # en dash, of ranges
TIMES = "\u00d7"  # multiplication sign


class RenderError(Exception):
    """A results file or a marker that cannot be rendered."""


@dataclass
class Rendering:
    """The rendered document and what kept it from being complete."""

    text: str
    missing: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- loading


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """Every benchmark JSON in ``folder`` by its ``name`` (other JSON files are skipped)."""
    runs: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RenderError(f"{path}: not readable JSON: {exc}") from exc
        schema = data.get("schema", "") if isinstance(data, dict) else ""
        if schema.startswith("labelcast.bench/") and schema != BENCH_SCHEMA:
            raise RenderError(
                f"{path}: schema {schema}, not {BENCH_SCHEMA}: rerun it with today's "
                f"bench/bench.py (its command is in the file)"
            )
        if schema not in (BENCH_SCHEMA, KEYFRAMES_SCHEMA, CAMERAS_SCHEMA, ZEROSHOT_SCHEMA):
            continue  # other benchmarks' results (e.g. preview_viewers.json)
        name = data.get("name") or path.stem
        if name in runs:
            raise RenderError(f"{path}: a second run named {name!r}")
        data["_path"] = _shown(path)
        runs[name] = data
    return runs


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- the document


def render_document(text: str, runs: dict[str, dict[str, Any]]) -> Rendering:
    """Replace every marked block of ``text`` with its rendering from ``runs``."""
    rendering = Rendering(text="")
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        table_id = match["id"]
        if table_id in seen:
            raise RenderError(f"two tables with the id {table_id!r}")
        seen.add(table_id)
        options = _options(match["options"], table_id)
        kind = options.get("kind", "")
        if kind not in KINDS:
            raise RenderError(f"table {table_id}: kind {kind!r} is not one of {sorted(KINDS)}")
        names = [n for n in options.get("rows", "").split(",") if n]
        if not names:
            raise RenderError(f"table {table_id}: no rows= (the runs it shows)")
        rows = []
        for name in names:
            if name not in runs:
                rendering.missing.append(f"table {table_id}: no results named {name!r}")
                continue
            rows.append(runs[name])
            if runs[name].get("settings", runs[name]).get("quick"):
                # Rendered all the same, so the document shows it; but it is no figure to
                # publish: a smoke run's clips are 2 s and its batches tiny.
                rendering.missing.append(
                    f"table {table_id}: {runs[name]['_path']} is a --quick smoke run"
                )
        body = KINDS[kind](rows) if rows else ""
        absent = [n for n in names if n not in runs]
        if absent:
            body += (
                ("\n\n" if body else "")
                + "_Not measured yet: "
                + ", ".join(f"`bench/results/{n}.json`" for n in absent)
                + " missing (see the commands above)._"
            )
        return f"{match['open']}\n{body.rstrip()}\n{match['close']}"

    rendering.text = MARKER.sub(replace, text)
    if not seen:
        raise RenderError("no <!-- table:... --> markers found")
    return rendering


def _options(text: str, table_id: str) -> dict[str, str]:
    options = {}
    for part in text.split():
        key, sep, value = part.partition("=")
        if not sep:
            raise RenderError(f"table {table_id}: option {part!r} is not key=value")
        options[key] = value
    return options


# --------------------------------------------------------------------------- cells


def number(value: float | None, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def rate_cell(phase: dict[str, Any] | None) -> str:
    """A phase's frames/s with its spread: ``4.52 (4.31-4.70)`` (an en dash in the table)."""
    if phase is None:
        return DASH
    spread = phase.get("rate_spread")
    text = number(phase["frames_per_s"])
    if spread and spread["n"] > 1:
        text += f" ({spread['min']:.2f}{DASH}{spread['max']:.2f})"
    return text


@dataclass(frozen=True)
class Verdict:
    """A ratio judged against 1.0 and its target, with the interval its spreads allow."""

    value: float
    low: float
    high: float
    target: float | None
    ceiling: bool  # the ratio cannot truly exceed 1.0 (e2e/bare)

    @property
    def within_noise(self) -> bool:
        """The interval holds 1.0 or the target; or above a ceiling of 1.0."""
        at_one = self.value > 1.0 if self.ceiling else self.low < 1.0 < self.high
        at_target = self.target is not None and self.low < self.target < self.high
        return at_one or at_target

    @property
    def met(self) -> bool | None:
        """Whether the target was met beyond noise (None: no target, or within noise)."""
        if self.target is None or self.within_noise:
            return None
        return self.low >= self.target

    def cell(self) -> str:
        """``**3.00** [2.90-3.10]``, ``1.03 [0.95-1.10] within noise`` or ``0.83 [..]``."""
        value = f"{self.value:.2f}"
        if self.met:
            value = f"**{value}**"
        text = f"{value} [{self.low:.2f}{DASH}{self.high:.2f}]"
        return text + " within noise" if self.within_noise else text

    def word(self) -> str:
        if self.target is None:
            return "no target"
        if self.within_noise:
            return "within noise"
        return "met" if self.met else "not met"


def verdict(run: dict[str, Any], key: str) -> Verdict | None:
    """The ratio ``key`` of a run, with its interval and target (None if not measured)."""
    value = run["ratios"].get(key)
    interval = run.get("ratio_intervals", {}).get(key)
    if value is None or interval is None:
        return None
    return Verdict(value, interval[0], interval[1], target_of(run, key), key == "e2e_over_bare")


def target_of(run: dict[str, Any], key: str) -> float | None:
    """The issue #7 target a run's ratio is held to, if any."""
    if key == "e2e_over_bare":
        return E2E_OVER_BARE_TARGETS.get(run["settings"].get("decode", "all"))
    if key == "e2e_over_naive_fp32":
        return NAIVE_FP32_TARGETS.get(run["bare"]["precision"])
    return None


def ratio_cell(run: dict[str, Any], key: str) -> str:
    judged = verdict(run, key)
    return DASH if judged is None else judged.cell()


def command_cell(run: dict[str, Any]) -> str:
    """The run's own options (not where it wrote), and what they make labelcast do."""
    return f"`{shlex.join(own_arguments(run))}` ({engine_text(run)})"


def own_arguments(run: dict[str, Any]) -> list[str]:
    """The command's options less those that only say where files go."""
    skip_with_value = {"--json", "--name", "--workdir"}
    arguments, skip = [], False
    for argument in run["argv"]:
        if skip:
            skip = False
        elif argument in skip_with_value:
            skip = True
        elif argument.split("=", 1)[0] not in skip_with_value:
            arguments.append(argument)
    return arguments


def engine_text(run: dict[str, Any]) -> str:
    """``int8 onnxruntime, key frames only`` and so on."""
    bare, settings = run["bare"], run["settings"]
    text = f"{bare['precision']} {bare.get('backend', 'torch')}, "
    text += "key frames only" if settings.get("decode") == "keyframes" else "full decode"
    if settings.get("buckets"):
        text += f", buckets {','.join(map(str, settings['buckets']))}"
    if settings.get("compile", "none") != "none":
        text += f", {settings['compile']}"
    return text


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def joined(values: Sequence[Any]) -> str:
    """Distinct values in order of appearance, joined with " / "."""
    seen: list[str] = []
    for value in values:
        if str(value) not in seen:
            seen.append(str(value))
    return " / ".join(seen)


def machine_text(runs: Sequence[dict[str, Any]]) -> str:
    """The machines and software the runs ran on, and when."""
    parts = []
    for run in runs:
        machine = run["machine"]
        versions = machine.get("versions", {})
        flags = machine.get("cpu_flags")
        text = (
            f"{machine['cpu_model']}, {machine['usable_cores']} cores"
            + (f" ({', '.join(flags)})" if flags else "")
            + f", torch {versions.get('torch')}, transformers {versions.get('transformers')}, "
            f"onnxruntime {versions.get('onnxruntime')}"
        )
        parts.append(text)
    dates = joined([run["date"] for run in runs])
    return f"{joined(parts)}; measured {dates}"


def others_text(runs: Sequence[dict[str, Any]]) -> str:
    """How much CPU other processes (and other guests) took during the runs."""
    shares = []
    for run in runs:
        cpu = run["machine"].get("cpu_during_run")
        if cpu is not None:
            shares.append(cpu["others_share"] + cpu["steal_share"])
    if not shares:
        return ""
    low, high = min(shares), max(shares)
    span = f"{low:.0%}" if f"{low:.0%}" == f"{high:.0%}" else f"{low:.0%}{DASH}{high:.0%}"
    return f"; other processes took {span} of the CPU during the runs"


# --------------------------------------------------------------------------- kinds


def render_throughput(runs: Sequence[dict[str, Any]]) -> str:
    header = [
        "command (`bench/bench.py …`)",
        "(a) bare",
        "(b) e2e",
        "(c) naive, same precision",
        "(c) naive fp32",
        "e2e/bare",
        "bare/naive",
        "e2e/naive",
        "e2e/naive fp32",
    ]
    rows = [
        [
            command_cell(run),
            rate_cell(run["bare"]),
            rate_cell(run["e2e"]),
            rate_cell(run["naive"]),
            rate_cell(run["naive_fp32"]),
            ratio_cell(run, "e2e_over_bare"),
            ratio_cell(run, "bare_over_naive"),
            ratio_cell(run, "e2e_over_naive"),
            ratio_cell(run, "e2e_over_naive_fp32"),
        ]
        for run in runs
    ]
    settings = [run["settings"] for run in runs]
    clips = joined(
        [
            f"{s['streams']} streams {TIMES} {s['seconds']:g} s of {s['clip_size'][1]}{TIMES}"
            f"{s['clip_size'][0]} H.264 at {s['clip_fps']} fps, sampled at {s['sample_fps']:g} "
            f"fps ({run['expected_frames']} frames), batch {s['batch']}"
            for s, run in zip(settings, runs, strict=True)
        ]
    )
    repeats = joined([s.get("repeats", 1) for s in settings])
    caption = (
        f"Frames/s; {clips}; {model_text(runs)}; {machine_text(runs)}{others_text(runs)}. "
        f"In brackets: the spread (min{DASH}max of the bare model's timed batches, of e2e's "
        f"{repeats} repeats, of the naive loop's streams) and the interval it allows each "
        f"ratio."
    )
    return table(header, rows) + "\n\n" + caption


def model_text(runs: Sequence[dict[str, Any]]) -> str:
    texts = []
    for run in runs:
        model = run["model"]
        count = model.get("parameters") or 0
        params = f"{count / 1e6:.1f} M parameters" if count >= 1e5 else f"{count} parameters"
        if model.get("random_weights"):
            texts.append(f"beit-base-patch16-224 architecture with random weights ({params})")
        else:
            texts.append(f"model {Path(model['path']).name} ({params})")
    return joined(texts)


def render_targets(runs: Sequence[dict[str, Any]]) -> str:
    """Each target of issue #7 the runs speak to, the figure and whether it was met."""
    rows = []
    for run in runs:
        name = f"`{run['name']}` ({engine_text(run)})"
        for key, what in (
            ("e2e_over_naive_fp32", "e2e ≥ {target}" + TIMES + " naive fp32"),
            ("e2e_over_bare", "e2e/bare ≥ {target}"),
        ):
            judged = verdict(run, key)
            if judged is None or judged.target is None:
                continue
            rows.append(
                [
                    what.format(target=f"{judged.target:g}"),
                    name,
                    f"{judged.value:.2f} [{judged.low:.2f}{DASH}{judged.high:.2f}]",
                    judged.word(),
                ]
            )
        load = run.get("load")
        if load is not None:
            rows.append(
                [
                    f"latency p99 ≤ max_wait_ms + 2 {TIMES} one batch, at "
                    f"{load['fraction_of_capacity']:g} {TIMES} capacity",
                    name,
                    f"{load['latency_ms']['p99']:.0f} ms ≤ {load['latency_target_ms']:.0f} ms"
                    if load["p99_within_target"]
                    else f"{load['latency_ms']['p99']:.0f} ms > {load['latency_target_ms']:.0f} ms",
                    "met" if load["p99_within_target"] else "not met",
                ]
            )
        soak = run.get("soak")
        if soak is not None:
            rule = _rule(soak, SOAK_TARGET_RULE)
            growth = None if rule is None else rule["growth_pct"]
            rows.append(
                [
                    f"soak RSS growth < {SOAK_TARGET_PCT:g} % ({_rule_label(soak, rule)})",
                    name,
                    DASH if growth is None else f"{growth:+.1f} %",
                    DASH if growth is None else ("met" if growth < SOAK_TARGET_PCT else "not met"),
                ]
            )
            every = soak["dropped_in_events"] == soak["dropped"]
            rows.append(
                [
                    "soak: every drop reported in events",
                    name,
                    f"{soak['dropped_in_events']} of {soak['dropped']}",
                    "met" if every else "not met",
                ]
            )
    return table(["target (issue #7)", "run", "figure", "verdict"], rows)


def render_time(runs: Sequence[dict[str, Any]]) -> str:
    """Where e2e's time goes, next to the bare model's batch."""
    rows = []
    for run in runs:
        e2e, bare = run["e2e"], run["bare"]
        classifier = e2e["classifier"]
        busy = classifier.get("busy_share")
        in_forward = (
            classifier["forward_s"] / classifier["busy_s"] if classifier.get("busy_s") else None
        )
        rows.append(
            [
                command_cell(run),
                DASH if busy is None else f"{busy:.0%}",
                DASH if in_forward is None else f"{in_forward:.0%}",
                f"{bare['preprocess_ms_per_batch']['p50']:.0f} ms",
                f"{bare['ms_per_batch']['p50']:.0f} ms",
                f"{e2e['batches']} of {e2e['mean_batch']:.1f}",
                f"{e2e['decoded_frames_per_s']:.0f}",
            ]
        )
    header = [
        "command",
        "classifier thread busy",
        "of which forward",
        f"preprocess one batch of {joined([r['bare']['batch'] for r in runs])} (p50)",
        "bare forward of one batch (p50)",
        "e2e batches (mean size)",
        "e2e decoded frames/s",
    ]
    return table(header, rows)


def render_load(runs: Sequence[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        load = run.get("load")
        if load is None:
            raise RenderError(f"{run['_path']}: no load phase (run it with --load)")
        model = load["batch_model_ms"]
        rows.append(
            [
                command_cell(run),
                f"{load['fraction_of_capacity']:g} {TIMES} {load['capacity_frames_per_s']:.2f} = "
                f"{load['offered_target_frames_per_s']:.2f}",
                f"{load['seconds']:.0f} s",
                f"{load['offered']} / {load['frames']} / {load['dropped']}",
                f"{load['latency_ms']['p50']:.0f} ms",
                f"{load['latency_ms']['p99']:.0f} ms",
                f"{run['settings']['max_wait_ms']:g} + 2 {TIMES} {model['p50']:.0f} = "
                f"{load['latency_target_ms']:.0f} ms",
                "within" if load["p99_within_target"] else "**above**",
            ]
        )
    header = [
        "command",
        f"offered frames/s ({TIMES} capacity)",
        "for",
        "offered / classified / dropped",
        "p50",
        "p99",
        f"target: max_wait_ms + 2 {TIMES} one batch (ms)",
        "p99 vs target",
    ]
    return table(header, rows) + f"\n\n{machine_text(runs)}{others_text(runs)}."


def _rule(soak: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in soak["rss_mb"].get("rules", []) if r["rule"] == name), None)


def _rule_label(soak: dict[str, Any], rule: dict[str, Any] | None) -> str:
    """``from minute 1`` (a minute's windows) or ``from 0-12 s`` (shorter soaks)."""
    if rule is None:
        return "rule not recorded"
    start, end = rule["baseline_window_s"]
    if soak["rss_mb"].get("window_s") == 60:
        return f"from minute {round(start / 60) + 1}"
    return f"from {start:.3g}{DASH}{end:.3g} s"


def render_soak(runs: Sequence[dict[str, Any]]) -> str:
    """Drops, then RSS growth under the target's rule first, then the current rule, and why."""
    blocks = []
    for run in runs:
        soak = run.get("soak")
        if soak is None:
            raise RenderError(f"{run['_path']}: no soak phase (run it with --soak-minutes)")
        rss = soak["rss_mb"]
        minutes = soak["seconds"] / 60
        lines = [
            f"- {command_cell(run)}, {run['settings']['streams']} live-paced streams offering "
            f"{soak['fraction_of_capacity']:g} {TIMES} capacity = "
            f"{soak['offered_target_frames_per_s']:.2f} frames/s for {minutes:.1f} minutes: "
            f"{soak['offered']} frames offered, {soak['frames']} classified, "
            f"{soak['dropped']} dropped, {soak['dropped_in_events']} of them reported in the "
            f"events' `dropped`; {machine_text([run])}{others_text([run])}.",
        ]
        rules = sorted(
            rss.get("rules", []), key=lambda r: (r["rule"] != SOAK_TARGET_RULE, r["rule"])
        )
        for rule in rules:
            if rule["growth_pct"] is None:
                continue
            role = (
                f"the rule the < {SOAK_TARGET_PCT:g} % target was set with"
                if rule["rule"] == SOAK_TARGET_RULE
                else "the current rule"
                if rule["rule"] == rss.get("rule")
                else "another rule"
            )
            verdict_text = "within" if rule["growth_pct"] < SOAK_TARGET_PCT else "above"
            lines.append(
                f"- RSS {_rule_label(soak, rule)} (`{rule['rule']}`, {role}): "
                f"{rule['baseline']:.0f} MB → {rule['final']:.0f} MB (median of the last "
                f"{rss['window_s']:.3g} s), {rule['growth_pct']:+.1f} %, {verdict_text} the "
                f"target. {rule['why']}"
            )
        if rss.get("window_medians"):
            medians = ", ".join(DASH if m is None else f"{m:.0f}" for m in rss["window_medians"])
            lines.append(
                f"- Median RSS of each {rss['window_s']:.3g} s: {medians} MB; largest sample "
                f"{rss['max']:.0f} MB ({rss['samples']} samples)."
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def frames(count: int) -> str:
    return f"{count} frame" + ("" if count == 1 else "s")


def render_keyframes(runs: Sequence[dict[str, Any]]) -> str:
    rows, captions = [], []
    for run in runs:
        if run.get("schema") != KEYFRAMES_SCHEMA:
            raise RenderError(f"{run['_path']}: not a scripts/keyframes_cpu.py result")
        for clip in run["clips"]:
            rows.append(
                [
                    f"{clip['width']}{TIMES}{clip['height']}, key frame every "
                    f"{clip['gop'] / clip['fps']:g} s",
                    f"{clip['all']['cpu_s']:.2f} CPU s ({frames(clip['all']['frames'])})",
                    f"{clip['keyframes']['cpu_s']:.2f} CPU s "
                    f"({frames(clip['keyframes']['frames'])})",
                    f"{clip['saving_pct']:.0f} %",
                ]
            )
        captions.append(
            f"`{shlex.join(own_arguments(run))}`: {run['seconds']:g} s of {run['fps']} fps "
            f"H.264 through the file source, sampling {run['sample_fps']:g} fps; process CPU "
            f"seconds, best of {run['repeat']}; {machine_text([run])}{others_text([run])}."
        )
    header = ["clip", "full decode", "keyframes only", "saving"]
    return table(header, rows) + "\n\n" + "\n".join(captions)


# The aim of issue #17: cameras held per gateway, against the naive loop's.
CAMERAS_AIM = 16.0


def cameras_engine(variant: str, engine: dict[str, Any]) -> str:
    """``int8 onnxruntime, key frames only, one region + change gate`` and so on."""
    if variant == "naive":
        return "OpenCV, BeitImageProcessorPil, fp32 torch, one frame at a time"
    text = f"labelcast, {engine['precision']} {engine['backend']}, "
    text += "key frames only" if engine["decode"] == "keyframes" else "full decode"
    return text + (", one region + change gate" if engine["regions"] else "")


def render_cameras(runs: Sequence[dict[str, Any]]) -> str:
    """Cameras held per variant and against the naive loop, then every run of the search."""
    summary, details, captions = [], [], []
    for run in runs:
        if run.get("schema") != CAMERAS_SCHEMA:
            raise RenderError(f"{run['_path']}: not a bench/cameras.py result")
        settings = run["settings"]
        for name, variant in run["variants"].items():
            held = variant["held"]
            at = next((r for r in variant["runs"] if r["cameras"] == held), None)
            ceiling = variant["searched"] and variant["first_failed"] is None and held > 0
            ratio = run["over_naive"].get(name)
            summary.append(
                [
                    f"`{name}`",
                    cameras_engine(name, variant["engine"]),
                    (f"≥ {held}" if ceiling else str(held)),
                    DASH
                    if ratio is None
                    else (
                        f"**{ratio:.1f}{TIMES}**" if ratio >= CAMERAS_AIM else f"{ratio:.1f}{TIMES}"
                    ),
                    DASH if at is None else f"{at['cpu']['share']:.0%}",
                    DASH if at is None else _ms(at["steady"]["latency_ms"]["p99"]),
                ]
            )
            for r in variant["runs"]:
                details.append(
                    [
                        f"`{name}`",
                        str(r["cameras"]),
                        str(r["offered"]),
                        str(r["classified"]),
                        str(r["skipped"]),
                        f"{r['dropped']} ({r['steady']['dropped']})",
                        _ms(r["steady"]["latency_ms"]["p99"]),
                        f"{r['cpu']['share']:.0%} of {r['cpu']['cores']}",
                        f"{r['rss_mb']['peak']:.0f} MB",
                        "held" if r["held"] else "not held: " + "; ".join(r["why_not_held"]),
                    ]
                )
        scene = settings["scene"]
        height, width = scene["size"]
        captions.append(
            f"`{shlex.join(own_arguments(run))}`: live-paced cameras showing a "
            f"{width}{TIMES}{height} H.264 scene at {scene['fps']} fps (a key frame every "
            f"second), sampled at {settings['sample_fps']:g} fps, {settings['seconds']:g} s a "
            f"run; held: no drop and latency p99 ≤ {settings['p99_limit_ms'] / 1000:g} s after "
            f"the first {settings['warmup_s']:g} s, and every camera in real time; CPU: the "
            f"run's process CPU time over the run, as a share of the cores it may use; "
            f"{model_text(runs)}; {machine_text([run])}{others_text([run])}."
        )
    header = [
        "variant",
        "what runs",
        "cameras held",
        f"{TIMES} naive (aim ≥ {CAMERAS_AIM:g}{TIMES})",
        "CPU at that count",
        "p99 at that count",
    ]
    run_header = [
        "variant",
        "cameras",
        "offered",
        "classified",
        "skipped",
        "dropped (after warm-up)",
        "p99 after warm-up",
        "CPU (of cores)",
        "peak RSS",
        "verdict",
    ]
    return (
        table(header, summary)
        + "\n\n"
        + "\n".join(captions)
        + "\n\nEvery run:\n\n"
        + table(run_header, details)
    )


# What each model of bench/zeroshot.py is, as the table names it.
ZEROSHOT_MODELS = {
    "beit-base": "BEiT-base classifier (microsoft/beit-base-patch16-224)",
    "clip-vit-b16": "CLIP ViT-B/16 image tower + prompt head (openai/clip-vit-base-patch16)",
    "siglip-base": "SigLIP base image tower + prompt head (google/siglip-base-patch16-224)",
}


def render_zeroshot(runs: Sequence[dict[str, Any]]) -> str:
    rows, captions = [], []
    for run in runs:
        if run.get("schema") != ZEROSHOT_SCHEMA:
            raise RenderError(f"{run['_path']}: not a bench/zeroshot.py result")
        for name, model in run["models"].items():
            forward = model["forward_ms_per_frame"]
            preprocess = model["preprocess_720p_ms"]
            rows.append(
                [
                    ZEROSHOT_MODELS.get(name, name),
                    f"{model['parameters'] / 1e6:.1f} M",
                    f"{forward['median']:.0f} ({forward['min']:.0f}{DASH}{forward['max']:.0f})",
                    f"{model['relative_to_beit_base']:.2f}{TIMES}",
                    f"{preprocess['median']:.1f}",
                ]
            )
        settings = run["settings"]
        load = run["load_average"]
        captions.append(
            f"`{run['command']}`: fp32 torch, {settings['threads']} threads, "
            f"{settings['frames']} frames per model in batches of {settings['batch']} "
            f"(median, min{DASH}max of the batches), the models taking turns batch by batch; "
            f"prompt heads of {settings['labels']} labels; {machine_text([run])}. "
            f"{run['note'][0].upper()}{run['note'][1:]} (load average "
            f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end)."
        )
    header = [
        "model (random weights, real architecture)",
        "parameters per frame",
        "forward ms/frame",
        "vs BEiT-base",
        "preprocess 720p ms/frame",
    ]
    return table(header, rows) + "\n\n" + "\n".join(captions)


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:.0f} ms"


KINDS: dict[str, Callable[[Sequence[dict[str, Any]]], str]] = {
    "throughput": render_throughput,
    "targets": render_targets,
    "time": render_time,
    "load": render_load,
    "soak": render_soak,
    "keyframes": render_keyframes,
    "cameras": render_cameras,
    "zeroshot": render_zeroshot,
}


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/render.py", description="Render BENCHMARKS.md's tables from bench/results."
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON files' folder")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document to render")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the document differs from what the JSON renders",
    )
    args = parser.parse_args(argv)
    try:
        before = args.doc.read_text(encoding="utf-8")
        rendering = render_document(before, load_results(args.results))
    except (OSError, RenderError) as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 1
    for problem in rendering.missing:
        print(f"render: {problem}", file=sys.stderr)
    if args.check:
        if rendering.text != before:
            diff = difflib.unified_diff(
                before.splitlines(keepends=True),
                rendering.text.splitlines(keepends=True),
                f"{args.doc} (as it is)",
                f"{args.doc} (rendered from {args.results})",
            )
            sys.stderr.writelines(diff)
            print(
                f"render: {args.doc} differs from what {args.results} renders; run bench/render.py",
                file=sys.stderr,
            )
            return 1
    elif rendering.text != before:
        args.doc.write_text(rendering.text, encoding="utf-8")
        print(f"render: rewrote the tables of {args.doc}", file=sys.stderr)
    return 1 if rendering.missing else 0


if __name__ == "__main__":
    sys.exit(main())
