"""The house rules of ../shared/ARCHITECTURE.md, checked on the source: imports run one way, no
module imports itself round a cycle, and the pure packages import no framework.

Every `import` counts, including those inside functions (a lazy import is still a dependency),
except those under `if TYPE_CHECKING:`, which exist for annotations only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "zguard"

BASE = {"errors", "state_paths", "config"}
DOMAIN = {"security", "policy", "store", "audit", "integrity", "engine", "provenance"}
# What each top-level part of zguard may import (besides itself). Upward or sideways imports fail.
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "__main__": {"cli"},
    "errors": set(),
    "state_paths": {"config"},  # for annotations only (TYPE_CHECKING)
    "security": {"errors"},
    "policy": {"errors", "security"},
    "config": {"errors", "security"},
    "store": {"errors", "config", "state_paths"},
    "integrity": {"errors", "security"},
    "engine": {"errors", "config", "security", "integrity"},
    "audit": {"errors", "config", "state_paths", "security", "store"},
    "provenance": {"errors", "config", "state_paths", "security", "audit"},
    "services": BASE | DOMAIN,
    "app": BASE | DOMAIN | {"services"},
    "ops": BASE | DOMAIN,
    "serve": BASE | DOMAIN | {"services", "app", "ops"},
    "cli": BASE | DOMAIN | {"services", "app", "ops", "serve"},
}
PURE = ("security", "policy")
FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "pydantic", "torch", "diffusers", "httpx")
ROOT_MODULES = {"__init__", "__main__", "config", "errors", "state_paths"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported name, line) for every import in `path`, resolved to absolute names."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> Iterator[tuple[str, int]]:
    """(imported name, line) for every import in `source`, a module of `package`; `from a import b`
    gives `a.b` (a module or a name in `a`)."""
    tree = ast.parse(source)
    skip = _type_checking_lines(tree)
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_package_root_holds_only_the_wings_and_three_modules() -> None:
    loose = {p.stem for p in SRC.glob("*.py")} - ROOT_MODULES
    assert loose == set(), f"move these into a package: {sorted(loose)}"
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(ALLOWED), f"add {sorted(packages - set(ALLOWED))} to ALLOWED with its arrows"


def test_imports_run_one_way() -> None:
    wrong = []
    for path in _sources():
        here = _part(_module(path))
        for target, line in imports(path):
            if not target.startswith("zguard."):
                continue
            there = _part(target)
            if there != here and there not in ALLOWED.get(here, set()):
                wrong.append(f"{path.relative_to(SRC.parent)}:{line} {here} -> {there} ({target})")
    assert wrong == []


def test_no_import_cycle() -> None:
    modules = {_module(p): p for p in _sources()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported, _line in imports(path):
            target = imported
            while target and target not in modules:  # `from zguard.x import name` names the module x
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    cycles = _strongly_connected(graph)
    assert cycles == [], f"import cycles: {cycles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_import_no_framework(package: str) -> None:
    used = [
        f"{path.relative_to(SRC.parent)}:{line} {target}"
        for path in sorted((SRC / package).rglob("*.py"))
        for target, line in imports(path)
        if target.split(".")[0] in FRAMEWORKS
    ]
    assert used == []


def test_the_checker_sees_lazy_and_relative_imports_but_not_type_checking_ones() -> None:
    """The rules are only as good as the parser: a function-level import counts, TYPE_CHECKING does not."""
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from zguard.app import api\n"
        "def f():\n    from zguard.services import auth\n    from . import rates\n    from .. import errors\n"
    )
    found = list(imports_in(source, "zguard.security"))
    assert ("zguard.services.auth", 5) in found
    assert ("zguard.security.rates", 6) in found
    assert ("zguard.errors", 7) in found
    assert all(not target.startswith("zguard.app") for target, _ in found)
