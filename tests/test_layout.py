"""The package's shape: no import circles, `import bdia` stays light, the old paths warn and forward,
every embedded model and family is found through the backend registry."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import bdia

SRC = Path(bdia.__file__).resolve().parent.parent


def _modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every module under ``src``."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    """The package modules ``name`` imports, at module level or inside functions alike (a lazy import
    still makes a circle for a reader, and can make one at run time)."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_cycles(src: Path) -> list[list[str]]:
    """The strongly connected components of more than one module in the import graph (Tarjan)."""
    modules = _modules(src)
    graph = {m: _imports(m, p, pkg, modules) for m, (p, pkg) in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


# The deprecated shim forwards to every new home by name only (importlib), so it is outside the graph.
def test_no_import_cycles_in_src():
    cycles = [c for c in import_cycles(SRC) if not any(m.startswith("bdia.pipelines") for m in c)]
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    pkg = tmp_path / "bdia"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import bdia.a\n")
    (pkg / "d.py").write_text("from . import c\n")
    assert import_cycles(tmp_path) == [["bdia.a", "bdia.c", "bdia.sub.b"]]


def test_import_bdia_stays_light():
    code = (
        "import sys, bdia; bdia.BDIA; "
        "heavy = [m for m in ('diffusers', 'transformers', 'PIL', 'matplotlib', 'safetensors') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "old, new",
    [
        ("bdia.pipelines.scheduler", "bdia.schedulers.ddim"),
        ("bdia.pipelines.editor", "bdia.editing.editor"),
        ("bdia.pipelines.batch", "bdia.datasets.batch"),
        ("bdia.pipelines.saved", "bdia.io.saved"),
    ],
)
def test_old_module_paths_warn_and_forward(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_old_names_warn_and_forward():
    import bdia.pipelines as old
    from bdia.editing import Editor
    from bdia.schedulers import BDIAScheduler

    for name, obj in (("Editor", Editor), ("BDIAScheduler", BDIAScheduler)):
        with pytest.warns(DeprecationWarning, match=name):
            assert getattr(old, name) is obj
    with pytest.raises(AttributeError, match="no_such_name"):
        old.no_such_name  # noqa: B018


def test_new_paths_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from bdia.cli import main  # noqa: F401
        from bdia.datasets import invert_files  # noqa: F401
        from bdia.editing import Editor  # noqa: F401
        from bdia.io import atomic_path  # noqa: F401
        from bdia.schedulers import BDIAFlowScheduler, BDIAScheduler  # noqa: F401


def test_backend_registry_knows_every_family():
    from bdia.editing.backends import backend_class, embedded_models
    from bdia.editing.backends.base import FAMILY_NAMES, Backend

    assert embedded_models() == ["digits", "scenes"]
    for family in ("digits", "scenes", "sd", "sd3", "flux"):
        cls = backend_class(family)
        assert issubclass(cls, Backend) and cls.family == family and family in FAMILY_NAMES
    with pytest.raises(ValueError, match="no backend for model family 'nope'; known: digits, flux, scenes, sd, sd3"):
        backend_class("nope")


def test_every_cli_command_lives_in_its_own_module():
    from bdia.cli import COMMAND_MODULES, build_parser

    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001 (argparse has no public list)
    modules = {m.rpartition(".")[2] for m in COMMAND_MODULES}
    assert commands == modules
