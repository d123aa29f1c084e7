"""The package's shape: no import circle among ``ptool_ops`` modules (imports inside
functions and under ``TYPE_CHECKING`` count too), and every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ptool_ops"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The ptool_ops module ``name`` refers to (a submodule, else its package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """The ptool_ops modules ``module`` imports, anywhere in its body."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [_resolve(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # "from pkg import mod" imports the module pkg.mod; "from mod import name", mod
            targets = [
                f"{source}.{alias.name}"
                if f"{source}.{alias.name}" in MODULES
                else _resolve(source)
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t and t.startswith("ptool_ops") and t != module)
    return found


def graph() -> dict[str, set[str]]:
    return {module: imports_of(module) for module in MODULES}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_imports_inside_functions_and_type_checking() -> None:
    edges = graph()
    # inside a function: the CLI imports the library lazily
    assert "ptool_ops.status" in edges["ptool_ops.cli.status"]
    # under TYPE_CHECKING: a capability names the Environment it receives
    assert "ptool_ops.environment" in edges["ptool_ops.backup.create"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_among_ptool_ops_modules() -> None:
    found = circles(graph())
    edges = graph()
    described = []
    for component in found:
        members = set(component)
        ties = [f"{a} -> {b}" for a in component for b in sorted(edges[a] & members)]
        described.append(" | ".join(ties))
    assert not found, "import circles: " + "; ".join(described)


def _import_alone(module: str) -> tuple[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return module, result.stderr.strip().splitlines()[-1] if result.returncode else ""


@pytest.mark.parametrize("chunk", [0, 1])
def test_every_module_imports_on_its_own(chunk: int) -> None:
    modules = [m for n, m in enumerate(sorted(MODULES)) if n % 2 == chunk]
    with ThreadPoolExecutor(4) as pool:
        failures = [f"{m}: {err}" for m, err in pool.map(_import_alone, modules) if err]
    assert not failures, failures
