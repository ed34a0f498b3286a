"""Import structure: no cycles between facemodel's modules, ``import facemodel`` stays light
(no dataset builder, training, evaluation or SciPy), and ``facemodel --help`` loads none of
the torch-heavy training or evaluation modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facemodel"
REPO = PACKAGE.parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(name: str, path: Path, known: set[str], *, lazy: bool = False) -> set[str]:
    """Modules of the package that ``name`` imports when it is loaded: imports at module level
    (also inside module-level if/try blocks); with ``lazy`` also those inside functions."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)  # submodules imported by name
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)  # annotations only: never imported at run time
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body)
                for extra in ("orelse", "finalbody"):
                    visit(getattr(node, extra, []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
            elif isinstance(node, ast.ClassDef) or (lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
                visit(node.body)
            elif lazy and isinstance(node, (ast.For, ast.While)):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)

    def inside(pkg: str) -> bool:  # a package ``name`` belongs to is already being imported
        return name == pkg or name.startswith(pkg + ".")

    deps = set()
    for mod in found:
        parts = mod.split(".")
        # importing a.b.c runs the __init__ of a and a.b first
        for i in range(1, len(parts) + 1):
            m = ".".join(parts[:i])
            if m in known and not inside(m):
                deps.add(m)
    return deps


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-lazy-imports"])
def test_no_import_cycles_between_modules(lazy):
    """Module level: the import order is well defined. With the lazy imports inside functions
    too: no two modules depend on each other at all (hub and model did)."""
    mods = _modules()
    graph = {name: _top_level_imports(name, path, set(mods), lazy=lazy) for name, path in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                dfs(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert "facemodel.model" in graph["facemodel.hub"] or "facemodel.hub" in graph["facemodel.model"]  # the walk sees edges


def test_the_cycle_check_finds_a_cycle(tmp_path):
    """The walk itself: a two-module cycle written to disk is found."""
    pkg = tmp_path / "facemodel"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from . import a\nx = 1\n")
    known = {"facemodel", "facemodel.a", "facemodel.b"}
    assert _top_level_imports("facemodel.a", pkg / "a.py", known) == {"facemodel.b"}
    assert _top_level_imports("facemodel.b", pkg / "b.py", known) == {"facemodel.a"}
    (pkg / "b.py").write_text("x = 1\n\ndef f():\n    from .a import y\n")
    assert _top_level_imports("facemodel.b", pkg / "b.py", known) == set()
    assert _top_level_imports("facemodel.b", pkg / "b.py", known, lazy=True) == {"facemodel.a"}


def _loaded_after(code: str) -> list[str]:
    runner = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", runner], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_facemodel_stays_light():
    loaded = _loaded_after("import facemodel\nfacemodel.FaceModel")
    heavy = [m for m in loaded if m == "facemodel.data.builder" or m.startswith(("facemodel.training", "facemodel.evaluation"))]
    assert not heavy, heavy
    assert not [m for m in loaded if m.startswith("facemodel.data")], "the SDK does not need the data layer"
    assert "scipy" not in loaded
    assert "facemodel.model" in loaded  # the runner did import the package


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"]])
def test_cli_help_imports_no_training_or_evaluation_machinery(argv):
    code = ("import runpy, sys\nsys.argv = ['facemodel'] + %r\n" % argv
            + "try:\n    runpy.run_module('facemodel', run_name='__main__', alter_sys=True)\n"
            + "except SystemExit as e:\n    assert e.code in (0, None), e.code\n")  # fmt: skip
    loaded = _loaded_after(code)
    allowed = {"facemodel.training", "facemodel.training.cli", "facemodel.training.config",
               "facemodel.evaluation", "facemodel.evaluation.cli"}  # fmt: skip
    heavy = [m for m in loaded if m.startswith(("facemodel.training", "facemodel.evaluation")) and m not in allowed]
    assert not heavy, heavy
    assert "facemodel.cli" in loaded and "facemodel.data.builder" not in loaded and "scipy" not in loaded
