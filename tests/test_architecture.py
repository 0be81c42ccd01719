"""The package's structure (issue #16, docs/architecture.md): one-way imports, no cycles, light
config imports, small modules, no duck typing in the pipeline, registries that match the schema.

Read from the source with ``ast`` (nothing under labelcast/ is imported for the graph), except
where a behaviour needs a real interpreter (import cost, ``labelcast schema``, the registries).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "labelcast"

# Layers, low to high (design.md, "Layout": cli/daemon -> pipeline -> config -> adapters ->
# frames, errors, util). A name ending in ".*" is a package and everything under it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground",
        (
            "labelcast.frames",
            "labelcast.errors",
            "labelcast.util.*",
            "labelcast.logs",
            "labelcast.redact",
            "labelcast.systemd",
        ),
    ),
    (
        "adapters",
        ("labelcast.sources.*", "labelcast.model.*", "labelcast.labels.*", "labelcast.sinks.*"),
    ),
    ("config", ("labelcast.config", "labelcast.config_errors", "labelcast.server")),
    ("pipeline", ("labelcast.pipeline.*",)),
    (
        "top",
        (
            "labelcast.cli",
            "labelcast.daemon",
            "labelcast.commands.*",
            "labelcast",  # labelcast/__init__.py
            "labelcast.__main__",
        ),
    ),
]
LEVEL = {name: level for level, (name, _) in enumerate(LAYERS)}

HEAVY = ("torch", "av", "paho", "aiortc", "cv2", "numpy", "transformers", "onnxruntime")
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {
    module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if "__pycache__" not in path.parts
}


def layer_of(module: str) -> str | None:
    for name, patterns in LAYERS:
        for pattern in patterns:
            if pattern.endswith(".*"):
                package = pattern[:-2]
                if module == package or module.startswith(package + "."):
                    return name
            elif module == pattern:
                return name
    return None


@dataclass(frozen=True)
class Import:
    """One import of a labelcast module, as written in ``source`` (a module name)."""

    source: str
    target: str
    line: int
    where: str  # "module" (runs on import), "function" or "TYPE_CHECKING"

    def __str__(self) -> str:
        path = MODULES[self.source].relative_to(ROOT)
        return f"{path}:{self.line} {self.source} -> {self.target} ({self.where})"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str:
    """The labelcast module ``name`` denotes: itself, or the nearest package holding it."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, up level - 1
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package.pop()
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        # `from pkg import sub` imports the submodule; `from pkg import name` the package.
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
            for alias in node.names
        ]
    return [_resolve(n) for n in names if n == "labelcast" or n.startswith("labelcast.")]


def _collect(module: str, body: list[ast.stmt], where: str, out: list[Import]) -> None:
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.extend(Import(module, t, node.lineno, where) for t in _targets(module, node))
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            _collect(module, node.body, "TYPE_CHECKING", out)
            _collect(module, node.orelse, where, out)
            continue
        inner = "function" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                # class bodies, if/try/with/for blocks at module level run on import
                _collect(module, [c for c in children if isinstance(c, ast.AST)], inner, out)


def all_imports() -> list[Import]:
    """Every import of a labelcast module in labelcast/: at module level (also inside if/try/
    with/class blocks), inside functions, and under ``if TYPE_CHECKING:``. Parent packages that
    Python runs implicitly (``labelcast/__init__.py`` for any ``labelcast.x``) are not edges."""
    found: list[Import] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        _collect(module, tree.body, "module", found)
    return found


IMPORTS = all_imports()


def test_the_import_walk_sees_the_package() -> None:
    # Given the tree, when walked, then the known arrows are there (the walk is not blind)
    edges = {(i.source, i.target, i.where) for i in IMPORTS}
    assert ("labelcast.daemon", "labelcast.pipeline.runner", "module") in edges
    assert ("labelcast", "labelcast.pipeline.runner", "TYPE_CHECKING") in edges
    assert ("labelcast", "labelcast.pipeline.runner", "function") in edges
    assert ("labelcast.config", "labelcast.sources", "module") in edges
    assert len(MODULES) > 50


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_imports_point_one_way() -> None:
    # Given every import (module level, in functions and under TYPE_CHECKING: a lazy import
    # is still an arrow), then none points to a higher layer than its module's own
    upward = []
    for imp in IMPORTS:
        source, target = layer_of(imp.source), layer_of(imp.target)
        assert source is not None and target is not None, imp
        if LEVEL[target] > LEVEL[source]:
            upward.append(f"{imp}: {source} imports {target}")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_adapters_never_import_the_pipeline() -> None:
    wrong = [
        str(imp)
        for imp in IMPORTS
        if layer_of(imp.source) == "adapters" and layer_of(imp.target) == "pipeline"
    ]
    assert not wrong, "adapters importing the pipeline:\n" + "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` as [a, b, ..., a], or None (iterative DFS, three colours)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for start in sorted(graph):
        if colour[start] != white:
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        colour[start] = grey
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = black
                stack.pop()
            elif colour[nxt] == grey:
                return [*path[path.index(nxt) :], nxt]
            elif colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def module_level_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if imp.where == "module" and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    return graph


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_at_module_level() -> None:
    # Imports that run on import only: TYPE_CHECKING blocks and function bodies do not count
    cycle = find_cycle(module_level_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _loaded_after(statement: str) -> list[str]:
    code = (
        f"import sys\n{statement}\n"
        f"heavy = {HEAVY!r}\n"
        "import json\n"
        "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize(
    "module", ["labelcast.config", "labelcast", "labelcast.sources", "labelcast.sinks"]
)
def test_config_and_registries_import_no_heavy_dependency(module: str) -> None:
    # Given a fresh interpreter, when it imports the module, then no heavy library is loaded
    assert _loaded_after(f"import {module}") == [], f"import {module} loads heavy modules"


def test_the_heavy_module_check_can_fail() -> None:
    assert _loaded_after("import json") == []
    assert _loaded_after("import json as numpy, sys; sys.modules['numpy.x'] = numpy") == ["numpy"]


def test_schema_answers_quickly() -> None:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "labelcast", "schema"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert "sources" in json.loads(result.stdout)["properties"]
    assert elapsed < 2.0, f"labelcast schema took {elapsed:.2f} s"


def test_no_module_over_450_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in MODULES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# Calls that are not duck typing on a source, sink or backend, by exact (stripped) line:
ALLOWED = {
    # Prometheus collection reads the pipeline's own counter dataclasses by field name.
    ("metrics.py", "getattr"): [
        "families[key].add_metric([name, stream], getattr(stats, attribute))",
        "sink_events.add_metric([name, sink, outcome], getattr(counters, outcome))",
    ],
    # A sink worker dispatches on the type of a queued value (frames.py values), not the sink.
    ("fanout.py", "isinstance"): [
        "if isinstance(item, StreamStatus):",
        "elif isinstance(item, _Change):",
        "elif isinstance(item, UnsampledFrame):",
    ],
}
DUCK = ("getattr", "hasattr", "isinstance", "attrgetter")


def test_pipeline_has_no_duck_typing() -> None:
    # Given pipeline/*.py, every getattr/hasattr/isinstance/attrgetter call is an allowed line
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted((PACKAGE / "pipeline").glob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in DUCK:
                found.setdefault((path.name, name), []).append(lines[node.lineno - 1].strip())
    unexpected = {
        f"labelcast/pipeline/{file}: {line}"
        for (file, name), lines in found.items()
        for line in lines
        if line not in ALLOWED.get((file, name), [])
    }
    assert not unexpected, "duck typing in the pipeline:\n" + "\n".join(sorted(unexpected))
    # and the exemptions are still needed (an unused one would hide a future call)
    assert found == ALLOWED


def _kinds(configs: typing.Iterable[type[BaseModel]]) -> list[str]:
    kinds = []
    for config in configs:
        (kind,) = typing.get_args(config.model_fields["type"].annotation)
        kinds.append(kind)
    return kinds


def _schema_kinds(schema: dict[str, typing.Any], field: str) -> tuple[set[str], list[str]]:
    items = schema["properties"][field]["items"]
    mapping = set(items["discriminator"]["mapping"])
    consts = []
    for option in items["oneOf"]:
        definition = schema["$defs"][option["$ref"].rpartition("/")[2]]
        tag = definition["properties"]["type"]
        consts.extend([tag["const"]] if "const" in tag else tag["enum"])
    return mapping, consts


def test_registries_resolve_every_kind_and_match_the_schema() -> None:
    from labelcast.config import config_schema
    from labelcast.sinks import SINK_CONFIGS, sink_class
    from labelcast.sources import SOURCE_CONFIGS, source_class

    source_kinds, sink_kinds = _kinds(SOURCE_CONFIGS), _kinds(SINK_CONFIGS)
    assert source_kinds and sink_kinds
    assert len(set(source_kinds)) == len(source_kinds)
    assert len(set(sink_kinds)) == len(sink_kinds)
    for kind in source_kinds:
        assert callable(source_class(kind)), kind
    for kind in sink_kinds:
        assert callable(sink_class(kind)), kind
    with pytest.raises(KeyError):
        source_class("no-such-kind")
    with pytest.raises(KeyError):
        sink_class("no-such-kind")

    schema = config_schema()
    assert _schema_kinds(schema, "sources") == (set(source_kinds), source_kinds)
    assert _schema_kinds(schema, "sinks") == (set(sink_kinds), sink_kinds)
