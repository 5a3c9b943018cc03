"""PolicyHolder: lists from files, atomic swap on reload, a broken list keeps the old policy,
file hashes for the audit trail, and start-up refusing what it cannot load."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from tests.common.factories import make_settings
from zguard.audit.memory import MemoryAuditSink
from zguard.errors import ConfigError, PromptRejected
from zguard.services.prompt_policy import RELOAD_EVENT, PolicyHolder, reload_and_audit


def holder_for(tmp_path: Path, text: str, **policy: object) -> tuple[PolicyHolder, Path]:
    path = tmp_path / "lists" / "bank.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    settings = make_settings(tmp_path / "state", policy={"banned_terms_files": [str(path)], **policy})
    return PolicyHolder.from_settings(settings), path


def test_reload_swaps_in_new_terms_and_reports_hashes(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path, "code-name: 北极星\n")
    assert holder.check("北极星计划海报").blocked
    assert not holder.check("银河计划海报").blocked
    path.write_text("code-name: 银河\n", encoding="utf-8")
    result = holder.reload()
    assert result.ok
    assert result.terms == 1
    assert result.hashes == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    assert holder.hashes == result.hashes
    assert holder.check("银河计划海报").blocked
    assert not holder.check("北极星计划海报").blocked


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("北极星\n@nonsense\n".encode(), "bank.txt:2: unknown directive"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b"!!!\n", "has no letters or digits"),
        (None, "cannot read it"),
    ],
)
def test_broken_list_keeps_the_old_policy_and_says_why(tmp_path: Path, content: bytes | None, problem: str) -> None:
    holder, path = holder_for(tmp_path, "code-name: 北极星\n")
    before = holder.policy
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    result = holder.reload()
    assert not result.ok
    assert result.error is not None
    assert problem in result.error
    assert holder.policy is before
    assert holder.check("北极星").blocked
    if content is not None:
        assert result.hashes == {str(path): hashlib.sha256(content).hexdigest()}


def test_reload_is_audited_with_hashes_and_outcome(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path, "北极星\n")
    audit = MemoryAuditSink()
    reload_and_audit(holder, audit, "SIGHUP")
    path.write_text("@oops\n", encoding="utf-8")
    reload_and_audit(holder, audit, "SIGHUP")
    done, failed = audit.of_type(RELOAD_EVENT)
    assert done.outcome == "done"
    assert done.detail[f"sha256:{path}"] == hashlib.sha256("北极星\n".encode()).hexdigest()
    assert done.detail["trigger"] == "SIGHUP"
    assert "error" not in done.detail
    assert failed.outcome == "failed"
    assert failed.detail[f"sha256:{path}"] == hashlib.sha256(b"@oops\n").hexdigest()
    assert "unknown directive" in str(failed.detail["error"])


def test_checks_during_reloads_see_a_whole_policy(tmp_path: Path) -> None:
    """Every check sees the old lists or the new ones, never a half-built automaton."""
    first = "".join(f"a{i}: 甲{i}号\n" for i in range(300))
    second = "".join(f"b{i}: 乙{i}号\n" for i in range(300))
    holder, path = holder_for(tmp_path, first)
    stop = threading.Event()
    seen: list[str | None] = []

    def checker() -> None:
        while not stop.is_set():
            verdict = holder.check("甲1号与乙1号")
            seen.append("+".join(sorted(f.category for f in verdict.findings)))

    thread = threading.Thread(target=checker)
    thread.start()
    try:
        for round_ in range(6):
            path.write_text(second if round_ % 2 == 0 else first, encoding="utf-8")
            assert holder.reload().ok
    finally:
        stop.set()
        thread.join()
    assert set(seen) <= {"a1", "b1"}
    assert len(seen) > 0


def test_enforce_names_the_category_and_the_term_only_when_revealed(tmp_path: Path) -> None:
    hidden, _ = holder_for(tmp_path, "code-name: 北极星\n")
    with pytest.raises(PromptRejected) as info:
        hidden.enforce("a poster", "北 極 星")
    error = info.value
    assert error.code == "prompt_rejected"
    assert error.status == 400
    assert error.param == "negative_prompt"
    assert error.message == "'negative_prompt' was rejected by the prompt policy: category 'code-name'"
    assert "北" not in error.message
    assert error.policy["verdict"] == "blocked"
    assert error.policy["category"] == "code-name"
    revealed, _ = holder_for(tmp_path / "r", "code-name: 北极星\n", reveal_terms=True)
    with pytest.raises(PromptRejected, match="term '北极星'"):
        revealed.enforce("北极星")
    with pytest.raises(PromptRejected) as pii:
        revealed.enforce("卡号 4111 1111 1111 1111")
    assert pii.value.message == "'prompt' was rejected by the prompt policy: category 'pii' (bank card)"
    assert "4111" not in pii.value.message


def test_start_refuses_lists_it_cannot_load_and_unknown_roles(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy\.banned_terms_files: .*missing\.txt: cannot read it"):
        PolicyHolder.from_settings(
            make_settings(tmp_path, policy={"banned_terms_files": [str(tmp_path / "missing.txt")]})
        )
    with pytest.raises(ConfigError, match=r"builtin:nope: cannot read it \(no such built-in list"):
        PolicyHolder.from_settings(make_settings(tmp_path, policy={"banned_terms_files": ["builtin:nope"]}))
    with pytest.raises(ConfigError, match=r"policy\.per_role: unknown role\(s\) red-teem"):
        PolicyHolder.from_settings(make_settings(tmp_path, policy={"per_role": {"red-teem": {"terms": "flag"}}}))


def test_a_custom_role_may_be_flagged(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        roles=[{"name": "red-team", "inherits": ["generator"]}],
        policy={"per_role": {"red-team": {"terms": "flag"}}},
    )
    holder = PolicyHolder.from_settings(settings)
    assert holder.enforce("机密", roles={"red-team"}).outcome == "flagged"
    with pytest.raises(PromptRejected):
        holder.enforce("机密", roles={"generator"})
