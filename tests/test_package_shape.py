"""The package's shape: imports point down the pipeline's layers, no cycles, declared dependencies.

Reads the source with ``ast`` (module-level and function-level imports alike), so a cycle cannot
hide behind an import inside a function.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "clipprobe"

# The pipeline's layers, lowest first: a module may import its own layer or a lower one
# (docs/architecture.md, "Layers"). report/ sits below tracking/: it builds tables and plots from a
# results frame and never reads MLflow; tracking/ reads the frame back (and uses report's provenance).
LAYERS: list[tuple[str, ...]] = [
    ("clipprobe", "clipprobe.core", "clipprobe.world"),
    ("clipprobe.concepts",),
    ("clipprobe.backbones",),
    ("clipprobe.activations",),
    ("clipprobe.probes",),
    ("clipprobe.sweep", "clipprobe.tuning", "clipprobe.neurons", "clipprobe.similarity"),
    ("clipprobe.report",),
    ("clipprobe.tracking",),
    ("clipprobe.executors",),
    ("clipprobe.steps",),
    ("clipprobe.cli",),
]

# Cycles tolerated for now, edge by edge (none: keep it that way).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every ``import`` in the file: imported name -> {'top', 'function'} (where it stands)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, set[str]] = defaultdict(set)
    top = {id(n) for n in tree.body}

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            here = where if id(child) not in top else "top"
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found[alias.name].add(here)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for alias in child.names:  # `from clipprobe.report import tables` imports a module
                    sub = f"{child.module}.{alias.name}"
                    found[sub if sub in modules else child.module].add(here)
            visit(child, "function" if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else here)

    visit(tree, "top")
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {imported for imported in _imports(path, modules) if imported in modules and imported != name}
    return graph


def layer_of(module: str) -> int:
    """Index of the module's layer in LAYERS (longest matching prefix)."""
    best, best_len = -1, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return best


def find_cycles(graph: dict[str, set[str]], ignore: set[tuple[str, str]] = frozenset()) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if (v, w) in ignore:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_find_cycles_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def x():\n    from pkg.a import y\n")
    modules = {"pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    graph = {m: {i for i in _imports(p, modules) if i in modules} for m, p in modules.items()}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycles(graph) == [["pkg.a", "pkg.b"]]
    assert find_cycles(graph, {("pkg.b", "pkg.a")}) == []


def test_the_probe_and_backbone_cycles_are_gone() -> None:
    graph = _graph()
    assert "clipprobe.probes.estimators" not in graph["clipprobe.probes.kinds"]
    assert not any(t.startswith("clipprobe.tracking") for t in graph["clipprobe.backbones.loader"])


def test_no_import_cycles() -> None:
    cycles = find_cycles(_graph(), KNOWN_CYCLE_EDGES)
    assert cycles == [], f"import cycles: {cycles}"


def test_imports_point_down_the_layers() -> None:
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in sorted(_graph().items()) for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_layer_of_rejects_an_unknown_module_and_takes_the_longest_prefix() -> None:
    assert layer_of("clipprobe.tracking.fits") == 7
    assert layer_of("clipprobe.sweep.config") == 5 and layer_of("clipprobe.sweep.plan") == 5
    with pytest.raises(AssertionError, match="clipprobe_x is in no layer"):
        layer_of("clipprobe_x")


def _declared() -> set[str]:
    """The package's dependencies and its extras (ray, postgres), not the test tools."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [req for name, reqs in project.get("optional-dependencies", {}).items() if name != "test" for req in reqs]
    return {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")
            for req in [*project["dependencies"], *extras]}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    modules = _modules()
    stdlib = set(sys.stdlib_module_names)
    to_dist = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = {}
    for name, path in modules.items():
        for imported in _imports(path, modules):
            top = imported.split(".")[0]
            if top in stdlib or top == "clipprobe" or top == "__future__":
                continue
            dists = {d.lower().replace("_", "-") for d in to_dist.get(top, [top])}
            if not dists & declared:
                missing.setdefault(f"{top} ({'/'.join(sorted(dists))})", []).append(name)
    assert missing == {}, f"imported but not in pyproject's dependencies: {missing}"


def test_every_module_lives_in_the_package_of_its_step() -> None:
    """No flat modules at the package top: the folders show the pipeline (docs/architecture.md)."""
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]


def test_no_test_file_imports_another() -> None:
    """Shared fixtures and cases live in helper modules (tests/*.py not named test_*), so running one test file
    never collects or depends on another's tests."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.name} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert offenders == [], offenders


# What a command module may import: the CLI itself, the steps, and the steps' typed configs (parse -> config ->
# steps.<step>.run -> library; docs/architecture.md, "Commands").
CONFIG_MODULES = {"clipprobe", "clipprobe.neurons.config", "clipprobe.report.config", "clipprobe.sweep.config",
                  "clipprobe.tuning.config", "clipprobe.concepts.config", "clipprobe.world.config",
                  "clipprobe.backbones.config"}
# Commands still calling the library themselves (issue 25 moved them one at a time); keep it empty.
COMMANDS_NOT_YET_THIN: set[str] = set()
COMMAND_LINES = 40  # a command function, decorators excluded, is about this long at most


def test_thin_commands_import_only_steps_configs_and_the_cli() -> None:
    from clipprobe.cli import COMMANDS

    modules = _modules()

    thin = sorted(set(COMMANDS.values()) - COMMANDS_NOT_YET_THIN)
    assert "compare" in thin
    for command in thin:
        path = modules[f"clipprobe.cli.{command}"]
        wrong = sorted(name for name in _imports(path, modules) if name.startswith("clipprobe")
                       and not name.startswith(("clipprobe.cli", "clipprobe.steps")) and name not in CONFIG_MODULES)
        assert wrong == [], f"clipprobe.cli.{command} imports {wrong}: go through steps.{command} instead"
        (func,) = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == command]
        length = func.end_lineno - func.lineno + 1
        assert length <= COMMAND_LINES, f"clipprobe.cli.{command}.{command} is {length} lines"
