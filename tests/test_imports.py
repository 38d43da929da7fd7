import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clipblip"
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "open_clip", "timm", "torchvision", "ftfy")


def heavy_modules_after(imports: str) -> list[str]:
    code = (
        f"import sys, {imports}\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in result.stdout.strip().split(",") if m]


def test_engine_imports_no_torch_or_transformers():
    heavy = heavy_modules_after("clipblip.engine, clipblip.manifest, clipblip.errors")
    assert not [m for m in heavy if m.split(".")[0] != "onnxruntime"], f"clipblip.engine imported: {heavy}"


def test_the_family_registry_imports_nothing_heavy():
    """The CLI and the torch-free engine read clipblip.families: no torch, transformers, onnx or onnxruntime."""
    assert heavy_modules_after("clipblip.families") == []


def test_the_check_would_see_torch():
    code = "import sys, torch; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


# --- every module imports on its own; no module-level import cycle -----------------------------------

def package_modules() -> dict[str, Path]:
    """Every module of clipblip by dotted name (found on disk, so nothing is imported here)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = package_modules()


def import_first(module: str) -> tuple[str, int, str]:
    if module.endswith(".__main__"):  # runs the CLI: import it the way `python -m` does
        command = [sys.executable, "-m", module.rsplit(".", 1)[0], "--help"]
    else:
        command = [sys.executable, "-c", f"import {module}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    last_line = (result.stderr.strip().splitlines() or [""])[-1]
    return module, result.returncode, last_line


@pytest.mark.slow  # ~75 fresh interpreters, most importing torch: 30-35 s on 2 cores; the AST check below is fast
def test_every_module_imports_first_in_a_fresh_interpreter():
    """Whichever module a program imports first works: no import order hides a cycle or a missing import."""
    assert "clipblip.export.clip" in MODULES and "clipblip.families" in MODULES
    with ThreadPoolExecutor(max_workers=3) as pool:
        failed = [f"{module}: {error}" for module, rc, error in pool.map(import_first, sorted(MODULES)) if rc != 0]
    assert not failed, "modules that fail when imported first:\n" + "\n".join(failed)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(module: str, path: Path, in_functions: bool = False) -> set[str]:
    """The clipblip modules ``module`` imports when it is imported (not TYPE_CHECKING; inside functions
    too if ``in_functions``).

    ``from .x import y`` gives ``pkg.x`` (or ``pkg.x.y`` where that is a module); ``from . import x``
    gives ``pkg.x`` where that is a module, else ``pkg`` itself. A submodule's implicit import of
    its parent packages is not an edge (Python imports them before any submodule, always).
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def known(name: str) -> str | None:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        return name or None

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not in_functions:
                continue
            if isinstance(node, ast.If) and is_type_checking(node):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(m for alias in node.names if (m := known(alias.name)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != PACKAGE.name:
                    continue
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else known(base))
            visit(ast.iter_child_nodes(node))

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)).body)
    found.discard(None)
    found.discard(module)
    return found


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


IMPORT_GRAPH = {module: module_level_imports(module, path) for module, path in MODULES.items()}


def test_the_import_graph_sees_the_imports():
    assert "clipblip.export.checkpoint" in IMPORT_GRAPH["clipblip.export.clip"]
    assert "clipblip.families" in IMPORT_GRAPH["clipblip.export.clip"]  # `from .. import families`
    assert "clipblip.export.sources" in IMPORT_GRAPH["clipblip.export"]
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None


def test_the_export_package_has_no_module_level_import_cycle():
    graph = {m: {n for n in deps if n.startswith("clipblip.export")} for m, deps in IMPORT_GRAPH.items()
             if m.startswith("clipblip.export")}
    assert import_cycle(graph) is None, f"import cycle: {' -> '.join(import_cycle(graph))}"


def test_no_export_module_imports_one_that_imports_it_back_even_inside_a_function():
    """A function-level import that closes a cycle breaks the day someone moves it to the top."""
    graph = {m: {n for n in module_level_imports(m, path, in_functions=True) if n.startswith("clipblip.export")}
             for m, path in MODULES.items() if m.startswith("clipblip.export")}
    assert import_cycle(graph) is None, f"import cycle: {' -> '.join(import_cycle(graph))}"


def test_the_family_registry_and_the_checkpoint_loader_are_leaves():
    assert IMPORT_GRAPH["clipblip.families"] == set()
    assert IMPORT_GRAPH["clipblip.export.checkpoint"] <= {"clipblip.errors", "clipblip.families"}


def test_the_package_has_no_module_level_import_cycle():
    cycle = import_cycle(IMPORT_GRAPH)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"

