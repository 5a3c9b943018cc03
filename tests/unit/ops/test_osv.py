"""OSV matching: ranges, explicit versions, severities, names; unreadable versions are unchecked."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from zguard.ops import osv


def entry(*ranges: list[dict[str, str]], versions: tuple[str, ...] = (), severity: str | None = "HIGH", name: str = "Some_Pkg") -> dict[str, Any]:  # fmt: skip
    affected: dict[str, Any] = {
        "package": {"ecosystem": "PyPI", "name": name},
        "ranges": [{"type": "ECOSYSTEM", "events": events} for events in ranges],
        "versions": list(versions),
    }
    body: dict[str, Any] = {"id": "GHSA-x", "summary": "bad", "affected": [affected]}
    if severity:
        body["database_specific"] = {"severity": severity}
    return body


def affected(version: str, body: dict[str, Any]) -> bool:
    (advisory,) = osv.advisories(body)
    return osv.is_affected(version, advisory)


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.9", False), ("1.0", True), ("1.5", True), ("2.0", False), ("2.5", False), ("3.0", True), ("3.1", True),
     ("3.2", False), ("1.0rc1", False)],
)  # fmt: skip
def test_ranges_introduced_fixed_last_affected(version: str, expected: bool) -> None:
    body = entry([{"introduced": "1.0"}, {"fixed": "2.0"}], [{"introduced": "3.0"}, {"last_affected": "3.1"}])
    assert affected(version, body) is expected


def test_introduced_zero_and_explicit_versions() -> None:
    assert affected("0.0.1", entry([{"introduced": "0"}, {"fixed": "1"}]))
    assert affected("7.7", entry(versions=("7.7",)))
    assert not affected("7.8", entry(versions=("7.7",)))


def test_only_pypi_and_not_withdrawn() -> None:
    other = entry([{"introduced": "0"}])
    other["affected"][0]["package"]["ecosystem"] = "npm"
    assert list(osv.advisories(other)) == []
    withdrawn = entry([{"introduced": "0"}]) | {"withdrawn": "2024-01-01T00:00:00Z"}
    assert list(osv.advisories(withdrawn)) == []


@pytest.mark.parametrize(("word", "severity"), [("MODERATE", "medium"), ("CRITICAL", "critical"), (None, "high")])
def test_severity_words_and_unknown_is_high(word: str | None, severity: str) -> None:
    (advisory,) = osv.advisories(entry([{"introduced": "0"}], severity=word))
    assert advisory.severity == severity


def test_check_matches_canonical_names_and_reports_unreadable_versions() -> None:
    db = {"some-pkg": list(osv.advisories(entry([{"introduced": "0"}, {"fixed": "2"}])))}
    report = osv.check([("some.PKG", "1.0"), ("Some-Pkg", "not a version"), ("other", "1")], db)
    assert [(m.package, m.version) for m in report.matches] == [("some-pkg", "1.0")]
    assert list(report.unchecked) == ["some-pkg not a version"]
    assert report.checked == 2


def test_bad_range_bound_leaves_the_package_unchecked() -> None:
    db = {"some-pkg": list(osv.advisories(entry([{"introduced": "0"}, {"fixed": "fix-it"}])))}
    report = osv.check([("some-pkg", "1.0")], db)
    assert report.matches == []
    assert "some-pkg 1.0" in report.unchecked


def test_load_directory_and_zip(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text(json.dumps(entry([{"introduced": "0"}])))
    with zipfile.ZipFile(tmp_path / "all.zip", "w") as archive:
        archive.writestr("GHSA-x.json", json.dumps(entry([{"introduced": "0"}])))
    for path in (tmp_path / "d", tmp_path / "all.zip"):
        database, count = osv.load_database(path)
        assert count == 1
        assert list(database) == ["some-pkg"]
    with pytest.raises(osv.VulnDbError, match="no such file"):
        osv.load_database(tmp_path / "missing")
    (tmp_path / "d" / "b.json").write_text("{not json")
    with pytest.raises(osv.VulnDbError, match="not JSON"):
        osv.load_database(tmp_path / "d")
