"""Mutation testing, small and honest: do the tests of a module notice when its code changes?

Run it with ``.venv/bin/python bench/mutate.py --module src/zguard/policy/pii.py --tests
tests/unit/policy/test_pii.py [--sample 20] [--seed 1] [--all] [--timeout S] [--output F]``;
``--module``/``--tests`` may be repeated in pairs for several modules in one run. It prints ONE
JSON object on stdout; progress goes to stderr. Standard library only (``ast``).

How a mutant is applied: the repository is copied once into a temporary directory (the working
tree's tracked and untracked, not ignored, files; or with ``--rev C`` the commit ``C`` from ``git
archive``, plus the ``--overlay`` files from the working tree, so others may edit the working tree
meanwhile), the mutant is written into that copy (never into the working tree), and ``python -m
pytest -x -q -p no:cacheprovider <tests>`` runs in a subprocess from the copy's root with
``PYTHONPATH`` putting the copy's ``src`` before the editable install, ``PYTHONDONTWRITEBYTECODE=1``
(no stale ``.pyc`` between mutants of the same size) and its own process group, killed at the
per-mutant timeout. A probe plugin records, from inside that pytest process, the file every
``zguard`` module was imported from: the unmutated baseline must pass AND import every ``zguard``
module, the target included, from the copy, or the module is reported as an error and no mutant
runs; a surviving mutant whose module was not imported from the copy is flagged ``not_imported``.
Each result keeps pytest's verdict (first ``FAILED``/``ERROR`` line and summary) as evidence.

Operators: comparison flips (``<``/``<=``, ``>``/``>=``, ``==``/``!=``, ``in``/``not in``, ``is``/
``is not``), integer and float constants n+1 and n-1 (octal and hex masks keep their base),
``True``/``False``, strings and bytes replaced by a different one (``"XX" + s + "XX"``),
``and``/``or``, ``not x`` -> ``x``, ``if``/``while``/ternary/comprehension conditions negated,
``return x`` -> ``return None``, ``+``/``-`` (also ``+=``/``-=``), and one element dropped from a
list, tuple, set or dict literal. Docstrings and annotations are not mutated. Each mutant is
one source edit at the mutated node (an f-string is rewritten whole), checked to compile and to
differ from the original.

Mutants are enumerated in a fixed order; ``--sample N`` (default 20) runs a ``random.Random(seed)``
sample of them, so the same module source, seed and N give the same mutants. ``score`` is
(killed + timeouts) / mutants run. Survivors list the line, the original and mutated source and an
empty ``note`` for a reader to mark equivalent mutants: the tool cannot tell them apart.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROBE_MODULE = "zguard_mutate_probe"
PROBE_SOURCE = '''"""Written by bench/mutate.py: where every zguard module was imported from."""
import json
import os
import sys


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("MUTATE_PROBE_FILE")
    if path:
        files = {
            name: getattr(module, "__file__", None)
            for name, module in list(sys.modules.items())
            if name == "zguard" or name.startswith("zguard.")
        }
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(files, handle)
'''

_COMPARE_FLIPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BINOP_FLIPS: dict[type[ast.operator], type[ast.operator]] = {ast.Add: ast.Sub, ast.Sub: ast.Add}
_ATOMS = (ast.Constant, ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.JoinedStr, ast.List, ast.Dict)


@dataclass(frozen=True)
class Mutant:
    index: int  # the mutated node's position in ast.walk order
    operator: str
    variant: int  # which of the operator's alternatives (an operand, an element, +1/-1)
    line: int
    col: int

    @property
    def id(self) -> str:
        return f"{self.line}:{self.col}:{self.operator}:{self.variant}"


@dataclass(frozen=True)
class Applied:
    source: str
    original: str  # the source line(s) touched
    mutated: str


# --- enumeration ------------------------------------------------------------------------------


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    return {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _excluded(tree: ast.AST) -> set[int]:
    """Docstrings, annotations and `from __future__`: nodes whose mutation says nothing."""
    skip: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            skip.append(node)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            skip.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            skip.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            skip.append(node.annotation)
        elif isinstance(node, ast.ImportFrom):
            skip.append(node)
    return {id(sub) for root in skip for sub in ast.walk(root)}


def _position(node: ast.AST) -> tuple[int, int]:
    return getattr(node, "lineno", 0), getattr(node, "col_offset", 0)


def _candidates(node: ast.AST) -> Iterator[tuple[str, int]]:
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE_FLIPS:
                yield "compare", i
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            yield "bool", 0
        elif isinstance(value, int | float):
            yield "number", 1
            yield "number", -1
        elif isinstance(value, str | bytes):
            yield "string", 0
    elif isinstance(node, ast.BoolOp):
        yield "boolop", 0
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "remove_not", 0
    elif isinstance(node, ast.If | ast.While | ast.IfExp):
        if not (isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)):
            yield "negate", 0
    elif isinstance(node, ast.comprehension):
        for i, cond in enumerate(node.ifs):
            if not (isinstance(cond, ast.UnaryOp) and isinstance(cond.op, ast.Not)):
                yield "negate", i
    elif isinstance(node, ast.Return):
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield "return_none", 0
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        if type(node.op) in _BINOP_FLIPS:
            yield "arith", 0
    elif isinstance(node, ast.List | ast.Tuple | ast.Set) and isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
        for i in range(len(node.elts)):
            yield "drop_element", i
    elif isinstance(node, ast.Dict):
        for i, key in enumerate(node.keys):
            if key is not None:  # a `**mapping` entry has no position of its own
                yield "drop_element", i


def enumerate_mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    excluded = _excluded(tree)
    mutants = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in excluded:
            continue
        line, col = _position(node)
        if isinstance(node, ast.comprehension):
            line, col = _position(node.target)
        for operator, variant in _candidates(node):
            if operator == "drop_element":  # named by the element's own position
                elements = node.keys if isinstance(node, ast.Dict) else node.elts  # type: ignore[attr-defined]
                line, col = _position(elements[variant])  # type: ignore[arg-type]
            mutant = Mutant(index, operator, variant, line, col)
            try:
                apply(source, mutant)
            except _Unchanged:
                continue
            mutants.append(mutant)
    return mutants


# --- applying ---------------------------------------------------------------------------------


class _Unchanged(Exception):
    """The edit would leave the module as it was, or would not compile."""


class _Offsets:
    """AST columns are UTF-8 byte offsets; the source is text."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def __call__(self, line: int, col: int) -> int:
        text = self.lines[line - 1] if line - 1 < len(self.lines) else ""
        return self.starts[line - 1] + len(text.encode()[:col].decode())

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (
            self(node.lineno, node.col_offset),  # type: ignore[attr-defined]
            self(node.end_lineno, node.end_col_offset),  # type: ignore[attr-defined]
        )


def _replace_child(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for field, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, field, new)
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = new
                    return
    raise AssertionError("child not found")


def _number(value: int | float, delta: int, original_text: str) -> str:
    new = value + delta
    text = original_text.lower().lstrip("-")
    if isinstance(new, int) and text[:2] in ("0o", "0x", "0b"):
        base = {"0o": "o", "0x": "x", "0b": "b"}[text[:2]]
        return f"{'-' if new < 0 else ''}0{base}{abs(new):{base}}"
    return repr(new)


def _lines_around(text: str, start: int, end: int) -> str:
    first = text.rfind("\n", 0, start) + 1
    last = text.find("\n", end)
    return text[first : len(text) if last < 0 else last].strip()


def apply(source: str, mutant: Mutant) -> Applied:
    """The module with `mutant` applied, and the line(s) it touched before and after."""
    tree = ast.parse(source)
    parents = _parents(tree)
    node = list(ast.walk(tree))[mutant.index]
    offsets = _Offsets(source)
    if mutant.operator == "drop_element":
        return _drop_element(source, node, mutant.variant, offsets)
    target, replacement = _edit(node, mutant, source, offsets)

    # An f-string is rewritten whole: the positions of its parts are not reliable in 3.11.
    outer = target
    ancestor = parents.get(id(target))
    while ancestor is not None:
        if isinstance(ancestor, ast.JoinedStr):
            outer = ancestor
        ancestor = parents.get(id(ancestor))
    if replacement is not target:
        _replace_child(parents[id(target)], target, replacement)
        if outer is target:
            outer = replacement
    span_node = target if outer is replacement else outer
    start, end = offsets.span(span_node)
    if hasattr(outer, "_text"):
        text = outer._text
    else:
        text = ast.unparse(outer)
        if isinstance(outer, ast.expr) and not isinstance(outer, _ATOMS):
            text = f"({text})"  # e.g. `not (a or b) and c` must not become `a or b and c`
    new_source = source[:start] + text + source[end:]
    original = _lines_around(source, start, end)
    mutated = _lines_around(new_source, start, start + len(text))
    return _checked(source, new_source, original, mutated)


def _drop_element(source: str, node: ast.AST, i: int, offsets: _Offsets) -> Applied:
    """Delete element `i` of a literal as text: the element, and its comma, and nothing else."""
    elts: list[ast.expr] = node.keys if isinstance(node, ast.Dict) else node.elts  # type: ignore[assignment,attr-defined]
    if (i + 1 < len(elts) and elts[i + 1] is None) or (i + 1 == len(elts) and i > 0 and elts[i - 1] is None):
        raise _Unchanged  # next to a `**mapping` entry, whose start the AST does not give
    start, end = offsets.span(elts[i])
    element = source[start : offsets.span(node.values[i])[1] if isinstance(node, ast.Dict) else end]
    if isinstance(node, ast.Dict):
        end = offsets.span(node.values[i])[1]
    if i + 1 < len(elts):
        end = offsets.span(elts[i + 1])[0]  # the element, its comma and the space up to the next
    elif i > 0:
        previous = node.values[i - 1] if isinstance(node, ast.Dict) else elts[i - 1]
        start = offsets.span(previous)[1]  # the last element: from the previous one's end
    elif isinstance(node, ast.Tuple) and source[end : end + 1] == ",":
        end += 1  # `(x,)` -> `()`
    new_source = source[:start] + source[end:]
    if node.lineno == node.end_lineno:  # type: ignore[attr-defined]
        original, mutated = _lines_around(source, start, end), _lines_around(new_source, start, start)
    else:  # one element of a literal over several lines: name it
        original, mutated = _lines_around(source, *offsets.span(elts[i])), f"(element removed: {element})"
    return _checked(source, new_source, original, mutated)


def _edit(node: ast.AST, mutant: Mutant, source: str, offsets: _Offsets) -> tuple[ast.AST, ast.AST]:
    """Mutate `node` in place, or name the node to replace (`target`) and what replaces it."""
    target: ast.AST = node  # the node whose source text is rewritten
    replacement: ast.AST = node
    if mutant.operator == "compare":
        assert isinstance(node, ast.Compare)
        node.ops[mutant.variant] = _COMPARE_FLIPS[type(node.ops[mutant.variant])]()
    elif mutant.operator == "bool":
        assert isinstance(node, ast.Constant)
        replacement = ast.Constant(not node.value)
    elif mutant.operator == "number":
        assert isinstance(node, ast.Constant)
        assert isinstance(node.value, int | float)
        start, end = offsets.span(node)
        replacement = ast.Constant(node.value + mutant.variant)
        replacement.lineno, replacement.col_offset = node.lineno, node.col_offset
        replacement._text = _number(node.value, mutant.variant, source[start:end])  # type: ignore[attr-defined]
    elif mutant.operator == "string":
        assert isinstance(node, ast.Constant)
        value = node.value
        assert isinstance(value, str | bytes)
        replacement = ast.Constant(b"XX" + value + b"XX" if isinstance(value, bytes) else "XX" + value + "XX")
    elif mutant.operator == "boolop":
        assert isinstance(node, ast.BoolOp)
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif mutant.operator == "remove_not":
        assert isinstance(node, ast.UnaryOp)
        replacement = node.operand
    elif mutant.operator == "negate":
        target = node.ifs[mutant.variant] if isinstance(node, ast.comprehension) else node.test  # type: ignore[attr-defined]
        replacement = ast.UnaryOp(ast.Not(), copy.deepcopy(target))
    elif mutant.operator == "return_none":
        assert isinstance(node, ast.Return)
        assert node.value is not None
        target, replacement = node.value, ast.Constant(None)
    elif mutant.operator == "arith":
        assert isinstance(node, ast.BinOp | ast.AugAssign)
        node.op = _BINOP_FLIPS[type(node.op)]()
    else:
        raise ValueError(mutant.operator)
    return target, replacement


def _checked(source: str, new_source: str, original: str, mutated: str) -> Applied:
    if new_source == source:
        raise _Unchanged
    try:
        if ast.dump(ast.parse(new_source)) == ast.dump(ast.parse(source)):
            raise _Unchanged
        compile(new_source, "<mutant>", "exec")
    except SyntaxError:
        raise _Unchanged from None
    return Applied(new_source, original, mutated)


# --- running ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # killed, survived, timeout, error
    rc: int | None
    seconds: float
    imported_from: dict[str, str | None]
    evidence: str  # pytest's verdict: the first FAILED/ERROR line and the summary


def _evidence(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    failed = next((line for line in lines if line.startswith(("FAILED ", "ERROR "))), "")
    failed = failed or next((line for line in lines if line.startswith("E ")), "")
    last = lines[-1] if lines else ""
    return " | ".join(dict.fromkeys(filter(None, [failed[:240], last[:160]])))


class Sandbox:
    """A snapshot of the repository in a temporary directory, the probe plugin beside it.

    `rev=None` copies the working tree (tracked and untracked files git does not ignore), so tests
    written but not committed take part; `rev` exports that commit with `git archive` instead, a
    fixed tree while others edit the working tree, and `overlay` then copies the named working-tree
    files on top of it (new test files). The tests run from the snapshot's root, so `tests.common`
    and the pytest configuration are the snapshot's too.
    """

    def __init__(self, rev: str | None, overlay: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="zguard-mutate-"))
        self.tree = self.root / "tree"
        self.tree.mkdir()
        if rev is None:
            listed = subprocess.run(
                ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                cwd=REPO,
                check=True,
                capture_output=True,
            ).stdout.decode()
            for name in filter(None, listed.split("\0")):
                if (REPO / name).is_file():
                    (self.tree / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / name, self.tree / name)
            self.commit = "working tree"
        else:
            self.commit = subprocess.run(
                ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
                cwd=REPO,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            archive = subprocess.run(["git", "archive", self.commit], cwd=REPO, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(self.tree)], input=archive, check=True)
        for name in overlay:
            (self.tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, self.tree / name)
        (self.root / "plugins").mkdir()
        (self.root / "plugins" / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE, encoding="utf-8")

    def run(self, tests: list[str], timeout: float) -> Outcome:
        probe = self.root / "probe.json"
        log = self.root / "pytest.log"
        probe.unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.tree / "src"), str(self.root / "plugins"), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["MUTATE_PROBE_FILE"] = str(probe)
        env.pop("COVERAGE_PROCESS_START", None)
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", PROBE_MODULE, *tests]
        started = time.monotonic()
        with log.open("wb") as output:
            process = subprocess.Popen(
                cmd, cwd=self.tree, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc: int | None = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                if process.poll() is None:  # timed out, or this script was interrupted
                    os.killpg(process.pid, signal.SIGKILL)  # the group this run started, its children included
                    process.wait()
        seconds = round(time.monotonic() - started, 2)
        imported = json.loads(probe.read_text(encoding="utf-8")) if probe.exists() else {}
        evidence = _evidence(log.read_text(encoding="utf-8", errors="replace"))
        if rc is None:
            status = "timeout"
        elif rc == 0:
            status = "survived"
        elif rc == 5:  # no tests collected: the command, not the mutant
            status = "error"
        else:  # 1 failed, 2 interrupted (collection error), 3/4 a conftest or plugin broken by the mutant
            status = "killed"
        return Outcome(status, rc, seconds, imported, evidence)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _module_name(module: str) -> str:
    relative = Path(module).relative_to("src").with_suffix("")
    return ".".join(relative.parts)


def run_module(
    sandbox: Sandbox, module: str, tests: list[str], *, sample: int | None, seed: int, timeout: float | None
) -> dict[str, Any]:
    copy_path = sandbox.tree / module
    source = copy_path.read_text(encoding="utf-8")
    name = _module_name(module)
    report: dict[str, Any] = {
        "module": module,
        "tests": tests,
        "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
    }
    print(f"[{name}] baseline: {' '.join(tests)}", file=sys.stderr)
    base = sandbox.run(tests, timeout=timeout or 600)
    files = {k: v or "" for k, v in base.imported_from.items()}
    foreign = sorted(k for k, v in files.items() if v and not v.startswith(str(sandbox.tree / "src")))
    report["baseline"] = {
        "status": "passed" if base.status == "survived" else base.status,
        "rc": base.rc,
        "seconds": base.seconds,
        "evidence": base.evidence,
        "zguard_file": files.get("zguard", ""),
        "module_file": files.get(name, ""),
        "zguard_modules_imported": len(files),
        "imported_outside_the_copy": foreign,
    }
    if base.status != "survived" or foreign or files.get(name) != str(copy_path):
        report["error"] = "baseline did not pass, or did not import zguard and the module from the copy"
        report["baseline"]["log_tail"] = (sandbox.root / "pytest.log").read_text(errors="replace").splitlines()[-40:]
        print(f"[{name}] {report['error']}: {base.evidence}", file=sys.stderr)
        return report
    per_mutant_timeout = timeout or max(30.0, 3 * base.seconds + 10)
    report["timeout_s"] = per_mutant_timeout

    mutants = enumerate_mutants(source)
    chosen = _sample(mutants, sample, seed)
    report["mutants_total"] = len(mutants)
    report["operators_total"] = {
        op: sum(m.operator == op for m in mutants) for op in sorted({m.operator for m in mutants})
    }

    started = time.monotonic()
    results: list[dict[str, Any]] = []
    try:
        for n, mutant in enumerate(chosen, 1):
            applied = apply(source, mutant)
            copy_path.write_text(applied.source, encoding="utf-8")
            outcome = sandbox.run(tests, per_mutant_timeout)
            entry: dict[str, Any] = {
                "id": mutant.id,
                "line": mutant.line,
                "operator": mutant.operator,
                "status": outcome.status,
                "rc": outcome.rc,
                "seconds": outcome.seconds,
                "original": applied.original,
                "mutated": applied.mutated,
                "evidence": outcome.evidence,
            }
            if outcome.status == "survived" and outcome.imported_from.get(name) != str(copy_path):
                entry["not_imported"] = True
            results.append(entry)
            print(
                f"[{name}] {n}/{len(chosen)} {outcome.status:8} line {mutant.line}: {applied.mutated}", file=sys.stderr
            )
    finally:
        copy_path.write_text(source, encoding="utf-8")

    counts = {s: sum(r["status"] == s for r in results) for s in ("killed", "survived", "timeout", "error")}
    ran = len(results) - counts["error"]
    report.update(
        mutants=len(results),
        killed=counts["killed"],
        survived=counts["survived"],
        timeouts=counts["timeout"],
        errors=counts["error"],
        score=round((counts["killed"] + counts["timeout"]) / ran, 3) if ran else None,
        seconds=round(time.monotonic() - started, 1),
        survivors=[
            {k: r[k] for k in ("id", "line", "operator", "original", "mutated")} | {"note": ""}
            for r in results
            if r["status"] == "survived"
        ],
        results=[
            {k: r[k] for k in ("id", "line", "operator", "status", "rc", "seconds", "evidence")}
            | ({"not_imported": True} if r.get("not_imported") else {})
            for r in results
        ],
    )
    return report


def _sample(mutants: list[Mutant], sample: int | None, seed: int) -> list[Mutant]:
    chosen = mutants if sample is None or sample >= len(mutants) else random.Random(seed).sample(mutants, sample)  # noqa: S311 - a reproducible sample, not a secret
    return sorted(chosen, key=lambda m: (m.line, m.col, m.index, m.operator, m.variant))


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: the running pytest group is killed, the copy removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", required=True, help="a source file under src/ (repeatable)")
    parser.add_argument(
        "--tests", action="append", nargs="+", required=True, help="the test files for the preceding --module"
    )
    parser.add_argument("--sample", type=int, default=20, help="mutants per module (seeded random sample)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--all", action="store_true", help="every mutant, no sampling")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per mutant (default 3x baseline + 10)")
    parser.add_argument("--rev", default=None, help="mutate this commit (git archive) instead of the working tree")
    parser.add_argument(
        "--overlay", nargs="*", default=[], help="with --rev: working-tree files copied over the commit (new tests)"
    )
    parser.add_argument("--list", action="store_true", help="list the sampled mutants without running")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if len(args.module) != len(args.tests):
        parser.error("give one --tests list per --module")
    modules = [str(Path(m).resolve().relative_to(REPO)) if Path(m).is_absolute() else m for m in args.module]
    for module in modules:
        if not module.startswith("src/") or not module.endswith(".py"):
            parser.error(f"{module}: not a module under src/")
    sample = None if args.all else args.sample

    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    sandbox = Sandbox(args.rev, args.overlay)
    try:
        if args.list:
            listing = []
            for module in modules:
                source = (sandbox.tree / module).read_text(encoding="utf-8")
                mutants = enumerate_mutants(source)
                listing.append(
                    {
                        "module": module,
                        "mutants_total": len(mutants),
                        "sample": [
                            {"id": m.id, "mutated": apply(source, m).mutated}
                            for m in _sample(mutants, sample, args.seed)
                        ],
                    }
                )
            print(json.dumps(listing, indent=2, ensure_ascii=False))
            return
        reports = [
            run_module(sandbox, module, tests, sample=sample, seed=args.seed, timeout=args.timeout)
            for module, tests in zip(modules, args.tests, strict=True)
        ]
    finally:
        sandbox.close()
    report = {
        "tool": "bench/mutate.py",
        "python": sys.version.split()[0],
        "commit": sandbox.commit,
        "overlay": args.overlay,
        "seed": args.seed,
        "sample": sample,
        "seconds": round(time.monotonic() - started, 1),
        "modules": reports,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
