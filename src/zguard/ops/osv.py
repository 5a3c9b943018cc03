"""Dependency vulnerabilities from an offline OSV database: which installed packages it names.

Bank servers are air-gapped, so the operator supplies the advisories: a directory of OSV JSON
files or a zip of them (osv.dev's `PyPI/all.zip` export). Only `PyPI` entries are read. A
version is affected when it is listed in `versions` or falls in an `ECOSYSTEM`/`SEMVER` range
(`introduced` .. `fixed`, or .. `last_affected` inclusive), compared as PEP 440 versions.

Fail closed: a package whose version, or whose advisory's range, cannot be read is reported as
*unchecked*, never as clean. Matching is pure; only `load_database` and `installed` do I/O.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from zguard.errors import OperatorError

ECOSYSTEM = "PyPI"
RANGE_TYPES = frozenset({"ECOSYSTEM", "SEMVER"})
# OSV/GHSA severity words to zguard's scale; an advisory without one counts as high (fail closed).
SEVERITY_WORDS: Mapping[str, str] = {
    "low": "low",
    "moderate": "medium",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
}
UNKNOWN_SEVERITY = "high"


class VulnDbError(OperatorError):
    """The database cannot be read at all; `message` names the path and the fix."""

    code = "vuln_db_unusable"
    fix = "point --vuln-db at osv.dev's PyPI export (a zip or a directory of JSON files) copied onto this host"


@dataclass(frozen=True)
class Advisory:
    id: str
    package: str  # canonical name
    severity: str
    summary: str
    versions: frozenset[str]
    ranges: tuple[tuple[tuple[str, str], ...], ...]  # each range's (event kind, version) list
    fixed: tuple[str, ...]


@dataclass(frozen=True)
class Match:
    package: str
    version: str
    advisory: Advisory


@dataclass
class DependencyReport:
    checked: int = 0
    matches: list[Match] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)  # "name version" -> why


def _severity(entry: Mapping[str, Any], affected: Mapping[str, Any]) -> str:
    for source in (
        entry.get("database_specific"),
        affected.get("ecosystem_specific"),
        affected.get("database_specific"),
    ):
        if isinstance(source, Mapping) and isinstance(source.get("severity"), str):
            word = SEVERITY_WORDS.get(source["severity"].lower())
            if word is not None:
                return word
    return UNKNOWN_SEVERITY


def advisories(entry: Mapping[str, Any]) -> Iterator[Advisory]:
    """The PyPI advisories in one OSV entry (one per affected package); withdrawn ones skipped."""
    if entry.get("withdrawn"):
        return
    for affected in entry.get("affected") or ():
        package = affected.get("package") or {}
        if package.get("ecosystem") != ECOSYSTEM or not package.get("name"):
            continue
        ranges = tuple(
            tuple((kind, str(value)) for event in r.get("events", ()) for kind, value in event.items())
            for r in affected.get("ranges") or ()
            if r.get("type") in RANGE_TYPES
        )
        yield Advisory(
            id=str(entry.get("id", "?")),
            package=canonicalize_name(package["name"]),
            severity=_severity(entry, affected),
            summary=str(entry.get("summary") or "")[:200],
            versions=frozenset(str(v) for v in affected.get("versions") or ()),
            ranges=ranges,
            fixed=tuple(value for r in ranges for kind, value in r if kind == "fixed"),
        )


def _in_range(version: Version, events: tuple[tuple[str, str], ...]) -> bool:
    """OSV's range walk: events in version order; raises InvalidVersion for an unreadable bound."""

    def key(event: tuple[str, str]) -> Version:
        return Version("0") if event[1] == "0" else Version(event[1])

    affected = False
    for kind, bound in sorted(events, key=key):
        at = key((kind, bound))
        if kind == "introduced" and version >= at:
            affected = True
        elif (kind == "fixed" and version >= at) or (kind == "last_affected" and version > at):
            affected = False
    return affected


def is_affected(version: str, advisory: Advisory) -> bool:
    if version in advisory.versions:
        return True
    parsed = Version(version)
    return any(_in_range(parsed, events) for events in advisory.ranges)


def check(installed: Iterable[tuple[str, str]], database: Mapping[str, list[Advisory]]) -> DependencyReport:
    """Match installed (name, version) pairs against advisories indexed by canonical name."""
    report = DependencyReport()
    for name, version in sorted(set(installed)):
        canonical = canonicalize_name(name)
        try:
            report.matches += [
                Match(canonical, version, a) for a in database.get(canonical, ()) if is_affected(version, a)
            ]
        except InvalidVersion as exc:
            report.unchecked[f"{canonical} {version}"] = f"version not comparable ({exc})"
            continue
        report.checked += 1
    return report


def installed() -> list[tuple[str, str]]:
    """(name, version) of every distribution in this Python environment."""
    found = []
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if name:
            found.append((str(name), str(dist.version)))
    return found


def _documents(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.is_dir():
        for file in sorted(path.rglob("*.json")):
            yield str(file), file.read_bytes()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".json"):
                    yield f"{path}:{member}", archive.read(member)
    else:
        raise VulnDbError(f"--vuln-db {path}: not a directory of OSV JSON files or a zip of them")


def load_database(path: Path) -> tuple[dict[str, list[Advisory]], int]:
    """PyPI advisories by canonical package name, and how many entries were read."""
    if not path.exists():
        raise VulnDbError(f"--vuln-db {path}: no such file or directory")
    database: dict[str, list[Advisory]] = {}
    count = 0
    try:
        for where, data in _documents(path):
            try:
                entry = json.loads(data)
            except ValueError:
                raise VulnDbError(f"--vuln-db: {where} is not JSON; supply an OSV export") from None
            for advisory in advisories(entry) if isinstance(entry, dict) else ():
                database.setdefault(advisory.package, []).append(advisory)
                count += 1
    except (OSError, zipfile.BadZipFile) as exc:
        raise VulnDbError(f"--vuln-db {path}: cannot be read ({type(exc).__name__})") from None
    return database, count
