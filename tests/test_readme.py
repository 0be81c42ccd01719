"""The README works as written: its Python code runs, its commands parse, its links resolve.

Given README.md as shipped, when its code blocks and links are exercised, then:

- every ```python block runs unchanged in a subprocess, exits 0 and prints one line per
  label event (``<stream> #<seq>: ...``) and no JSON, also when no label reaches
  ``labels.min_score``;
- every ``labelcast <subcommand>`` the README shows (in shell blocks or inline code) has a
  ``--help`` that exits 0 and lists each option the README passes to it;
- every relative link names a file (and heading) that exists.

How the Python blocks run: in a temporary working directory laid out like the repository.
Its ``configs/example.yaml`` is the repository's own file with only file paths substituted:
``model.id`` becomes the tests' tiny checkpoint directory and each source's ``path`` a short
test clip; stream ids, label rules and sinks (a JSON log on stdout included) stay as shipped.
The code itself is never edited. The events a block should print are those the test gets
from ``Pipeline.events()`` for the same config.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE_CONFIG = "configs/example.yaml"  # the path the README's snippets read, as written
SHELL_LANGUAGES = {"sh", "bash", "console", "shell"}
# How the README's Python API snippet prints an event: "<stream> #<seq>: <label or none>".
EVENT_LINE = re.compile(r"^(?P<stream>[A-Za-z0-9_-]+) #(?P<seq>\d+): (?P<text>.+)$")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Return the fenced code blocks of a Markdown text as (language, code)."""
    blocks: list[tuple[str, str]] = []
    language: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        fence = re.match(r"^```\s*([\w+-]*)\s*$", line)
        if language is None and fence:
            language, lines = fence.group(1).lower(), []
        elif language is not None and line.strip() == "```":
            blocks.append((language, "\n".join(lines) + "\n"))
            language = None
        elif language is not None:
            lines.append(line)
    assert language is None, "README.md: a code block is not closed"
    return blocks


def python_blocks() -> list[str]:
    return [code for language, code in fenced_blocks(README.read_text()) if language == "python"]


def prose(text: str) -> str:
    """The Markdown text without its fenced code blocks."""
    return re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.DOTALL | re.MULTILINE)


def labelcast_commands() -> dict[str, set[str]]:
    """Each ``labelcast <subcommand>`` shown in shell blocks or inline code, with its options.

    A command starts a shell line (after a ``$`` prompt, if any) or an inline code span;
    shell comments are left out.
    """
    text = README.read_text()
    lines = [
        re.sub(r"(^|\s)#.*", "", line)
        for language, code in fenced_blocks(text)
        if language in SHELL_LANGUAGES
        for line in code.splitlines()
    ]
    lines += re.findall(r"`([^`\n]+)`", prose(text))
    commands: dict[str, set[str]] = {}
    for line in lines:
        match = re.match(r"^\s*(?:\$\s+)?labelcast ([a-z][a-z-]*)(.*)$", line)
        if match:
            options = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", match.group(2))
            commands.setdefault(match.group(1), set()).update(options)
    return commands


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(markdown), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def relative_links() -> list[str]:
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose(README.read_text()))
    return sorted({t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)})


def test_the_readme_has_what_these_tests_check() -> None:
    """Given README.md, its snippets, commands and links are there to be checked."""
    assert python_blocks(), "README.md: no ```python block found"
    assert any(EXAMPLE_CONFIG in code for code in python_blocks())
    assert {"run", "check", "schema", "verify"} <= set(labelcast_commands())
    assert "docs/mqtt.md" in relative_links()


# -- the Python blocks, run as written ----------------------------------------------------------


def example_workdir(folder: Path, tiny_model: Path, clip: Path, **labels: Any) -> Path:
    """Lay out ``folder`` so that the README's relative paths resolve there (see above)."""
    config = yaml.safe_load((ROOT / EXAMPLE_CONFIG).read_text())
    config["model"]["id"] = str(tiny_model)
    assert config["sources"], "configs/example.yaml has no sources"
    for source in config["sources"]:
        assert "path" in source, f"configs/example.yaml: source {source['id']} is not a file"
        source["path"] = str(clip)
    config["labels"].update(labels)
    (folder / "configs").mkdir(parents=True)
    (folder / EXAMPLE_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script in ``cwd``, importing this checkout's labelcast."""
    script = cwd / "readme_snippet.py"
    script.write_text(code)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
    )


def reference_events(cwd: Path) -> list[dict[str, Any]]:
    """The events of the config in ``cwd``, from the library's own iterator."""
    from labelcast import Pipeline, load_config

    config = load_config(cwd / EXAMPLE_CONFIG, ["sinks=[]"])
    events = [event.to_dict() for event in Pipeline(config).events()]
    assert events, "the example config gave no events"
    return events


def is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return line.lstrip().startswith(("{", "["))


@pytest.mark.parametrize(
    "min_score",
    [None, 1.0],
    ids=["as-shipped", "no-label-reaches-min_score"],
)
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_block_runs_as_written(
    index: int,
    min_score: float | None,
    tiny_model: Path,
    clips: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Given the example config (paths substituted), when a README Python block runs
    unchanged, then it exits 0 and prints one line per event, and no JSON."""
    labels = {} if min_score is None else {"min_score": min_score}
    cwd = example_workdir(tmp_path, tiny_model, clips["short"], **labels)
    events = reference_events(cwd)
    if min_score == 1.0:  # the case this variant is for
        assert all(event["labels"] == [] for event in events)
    names = set(json.loads((tiny_model / "config.json").read_text())["id2label"].values())

    result = run_python(python_blocks()[index], cwd)

    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    mixed = [line for line in lines if is_json(line)]
    assert not mixed, f"JSON on stdout among the snippet's lines: {mixed[0][:300]}"
    printed = [m for m in map(EVENT_LINE.match, lines) if m]
    # One line per event: each event of the run, as many times as the block runs the pipeline.
    expected = Counter((event["stream"], event["seq"]) for event in events)
    seen = Counter((m["stream"], int(m["seq"])) for m in printed)
    runs = len(printed) // len(events)
    assert runs >= 1, result.stdout
    assert seen == Counter({key: count * runs for key, count in expected.items()}), result.stdout
    by_key = {(event["stream"], event["seq"]): event for event in events}
    for match in printed:
        event = by_key[match["stream"], int(match["seq"])]
        shown = {name for name in names if name in match["text"]}
        if event["labels"]:  # the best label of the same frame (scores may differ a little)
            assert shown & {label["label"] for label in event["labels"]}, match.string
        else:
            assert not shown, f"a label printed for an event without labels: {match.string}"


# -- the commands it shows -----------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(labelcast_commands()))
def test_labelcast_command_parses(command: str) -> None:
    """Given a subcommand the README shows, its --help works and lists the options shown."""
    options = labelcast_commands()[command]

    result = subprocess.run(
        [sys.executable, "-m", "labelcast", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    listed = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", result.stdout))
    assert options <= listed, f"labelcast {command}: README shows {sorted(options - listed)}"


def test_readme_installs_the_packages_scripts_test_sh_installs() -> None:
    """Given scripts/test.sh, the README's apt-get line for running without root names the
    same Debian packages, and its table lists each."""
    script = (ROOT / "scripts" / "test.sh").read_text()
    installed = set(re.findall(r"need\+=\(([\w.+-]+)\)", script))
    assert "mosquitto" in installed and "chromium" in installed
    text = README.read_text()
    shell = "\n".join(code for language, code in fenced_blocks(text) if language in SHELL_LANGUAGES)
    lines = re.findall(r"apt-get install ([^\n]*)", shell.replace("\\\n", " "))
    assert len(lines) == 1, "README.md: expected one apt-get install line"
    words = lines[0].split()
    assert {word for word in words if not word.startswith("-")} == installed
    assert all(f"`{package}`" in prose(text) for package in installed)


# -- its links ------------------------------------------------------------------------------------


@pytest.mark.parametrize("link", relative_links())
def test_relative_link_resolves(link: str) -> None:
    """Given a relative link in README.md, its file exists, and so does its heading."""
    target, _, anchor = link.partition("#")
    path = README.parent / target if target else README
    assert path.is_file(), f"README.md links to {link}: no such file"
    if anchor and path.suffix == ".md":
        assert anchor in heading_anchors(path.read_text()), f"README.md: {link}: no such heading"
