"""Model changes need a second admin (`model.change_approval_required`): `zguard model pin --as`,
`model approve`, `model changes`, the start check of `serve` and `doctor`, on a real state
database and audit trail (SQLite in tmp_path) with the demo model.

The start check runs in-process (`check_model_change`, what `serve` calls before
`server.started`); one real `zguard serve` is refused and one starts, as child processes on
loopback ports. Tokens are piped as one line of stdin, as a script would.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.common.cli import ZguardCli
from tests.common.servers import ZguardProcess
from zguard.audit import AuditEvent
from zguard.audit.model_changes import APPROVED, REFUSED, REQUESTED, UNAPPROVED, state_of
from zguard.audit.setup import StoreSink, open_audit_store
from zguard.audit.store import AuditStore
from zguard.errors import EXIT_FIX, EXIT_NO, ModelChangeUnapproved
from zguard.integrity.manifest import MANIFEST_FILE
from zguard.ops.model_checks import model_change_finding
from zguard.serve.model_change import check_loaded, check_model_change
from zguard.store.database import create_store_engine, database_url

APPROVE_FIX = "zguard model approve"


class Zguard(ZguardCli):
    """`zguard ...` on one settings file, with a token on stdin, and the trail read back."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(config, capsys)
        self.monkeypatch = monkeypatch
        self.tokens: dict[str, str] = {}

    def as_(self, name: str, *argv: str, token: str | None = None) -> tuple[int, str, str]:
        """`zguard *argv --as NAME` with NAME's token (or `token`) piped on stdin."""
        given = self.tokens[name] if token is None else token
        self.monkeypatch.setattr("sys.stdin", io.StringIO(given + "\n"))
        return self(*argv, "--as", name)

    def admin(self, name: str, role: str = "admin") -> None:
        self.ok("user", "add", name, "--role", role)
        self.tokens[name] = self.ok("token", "create", "--user", name).strip().splitlines()[-1]

    @property
    def model(self) -> Path:
        path = self.settings.model.path
        assert path is not None
        return path

    def sql(self, statement: str, **params: object) -> None:
        engine = create_store_engine(database_url(self.settings))
        try:
            with engine.begin() as conn:
                conn.execute(text(statement), params)
        finally:
            engine.dispose()

    def events(self) -> list[dict[str, object]]:
        engine = create_store_engine(database_url(self.settings))
        try:
            return [json.loads(e.body) for e in AuditStore(engine).iter_events()]
        finally:
            engine.dispose()

    def start_check(self) -> str | None:
        """What `serve` checks before it starts: the approved digest, or ModelChangeUnapproved."""
        engine = create_store_engine(database_url(self.settings))
        try:
            store = open_audit_store(self.settings, engine)
            return check_model_change(self.settings, store, StoreSink(store))
        finally:
            engine.dispose()


def digest_of(model: Path) -> str:
    digest: str = json.loads((model / MANIFEST_FILE).read_text())["digest"]
    return digest


@pytest.fixture
def zguard(
    tmp_path: Path, demo_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Zguard:
    """Admins alice (from `init`) and bob, a generator carol; the demo model at model.path, not yet pinned by anyone."""
    model = Path(shutil.copytree(demo_model_dir, tmp_path / "model"))
    config = tmp_path / "zguard.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nmodel:\n  path: {model}\n  change_approval_required: true\n"
        "integrity:\n  allow_root: true\n",
        encoding="utf-8",
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    cli = Zguard(config, capsys, monkeypatch)
    cli.tokens["alice"] = cli.ok("init", "--admin", "alice").strip().splitlines()[-1]
    cli.admin("bob")
    cli.admin("carol", role="generator")
    return cli


def test_four_eyes_from_pin_to_a_started_server(zguard: Zguard, tmp_path: Path) -> None:
    out = zguard.as_("alice", "model", "pin", str(zguard.model))[1]
    digest = digest_of(zguard.model)
    assert f"manifest digest {digest}" in out
    assert "model.change_requested by alice" in out

    env = {"ZGUARD_MODEL__PATH": str(zguard.model), "ZGUARD_MODEL__CHANGE_APPROVAL_REQUIRED": "true"}
    refused_until_approved(zguard, tmp_path / "state", env)
    wrong_approvers_refused(zguard)
    approved_and_served(zguard, tmp_path / "state", env, digest)
    all_on_the_record(zguard, digest)


def refused_until_approved(zguard: Zguard, state_dir: Path, env: dict[str, str]) -> None:
    """Not approved: the start check refuses with the code and the fix; so does a real `zguard serve`."""
    with pytest.raises(ModelChangeUnapproved) as refused:
        zguard.start_check()
    assert refused.value.code == "model_change_unapproved"
    assert refused.value.exit_code == EXIT_FIX
    assert "pinned by alice" in refused.value.message
    assert f"{APPROVE_FIX} {zguard.model} --as OTHER_ADMIN" in (refused.value.fix or "")
    with ZguardProcess(state_dir, env=env) as proc:
        assert proc.proc is not None
        assert proc.proc.wait(60) == EXIT_FIX
        log = proc.log()
    assert "has no approval by another admin" in log
    assert f"fix: `{APPROVE_FIX} {zguard.model} --as OTHER_ADMIN`" in log
    assert "Traceback" not in log
    finding = model_change_finding(zguard.settings)
    assert finding is not None
    assert (finding.severity, finding.check) == ("fail", "model_change_approved")
    assert "model_change_unapproved" in finding.message


def wrong_approvers_refused(zguard: Zguard) -> None:
    """The same admin cannot approve; nor can a non-admin, nor an admin with someone else's token."""
    code, _, err = zguard.as_("alice", "model", "approve", str(zguard.model))
    assert code == EXIT_FIX
    assert "cannot approve it: a model change needs a second admin" in err
    code, _, err = zguard.as_("carol", "model", "approve", str(zguard.model))
    assert code == EXIT_FIX
    assert "does not hold the role admin" in err
    code, _, err = zguard.as_("bob", "model", "approve", str(zguard.model), token=zguard.tokens["alice"])
    assert code == EXIT_FIX
    assert "not one of the API tokens of 'bob'" in err
    with pytest.raises(ModelChangeUnapproved):
        zguard.start_check()


def approved_and_served(zguard: Zguard, state_dir: Path, env: dict[str, str], digest: str) -> None:
    """Another admin approves: the start check passes, doctor agrees, and a real server starts."""
    code, out, err = zguard.as_("bob", "model", "approve", str(zguard.model))
    assert code == 0, err
    assert f"approved manifest {digest}" in out
    assert "requested by alice" in out
    assert "approved by bob" in out
    assert zguard.start_check() == digest
    finding = model_change_finding(zguard.settings)
    assert finding is not None
    assert finding.severity == "pass"
    assert "pinned by alice, approved by bob" in finding.message
    code, _, err = zguard.as_("bob", "model", "approve", str(zguard.model))
    assert code == EXIT_FIX
    assert "was approved by 'bob'" in err
    with ZguardProcess(state_dir, env=env) as proc:
        proc.wait_ready(60)
        assert proc.stop() == 0
        log = proc.log()
    assert f"model change approved: manifest {digest} pinned by alice, approved by bob" in log


def all_on_the_record(zguard: Zguard, digest: str) -> None:
    """Everything is on the record, refusals included, and the trail is intact."""
    events = zguard.events()
    kinds = [(e["type"], e["principal"], e["code"]) for e in events if str(e["type"]).startswith("model.change_")]
    assert kinds[0] == (REQUESTED, "alice", None)
    assert (UNAPPROVED, "zguard", "model_change_unapproved") in kinds
    refusals = [e["code"] for e in events if e["type"] == REFUSED]
    assert refusals == [
        "model_change_self_approval",
        "model_change_refused",
        "model_change_refused",
        "model_change_already_approved",
    ]
    approval = next(e for e in events if e["type"] == APPROVED)
    detail = approval["detail"]
    assert isinstance(detail, dict)
    assert (approval["principal"], detail["requester"], detail["digest"]) == ("bob", "alice", digest)
    assert str(detail["os_account"]).startswith("cli:")
    out = zguard.ok("model", "changes")
    assert "awaiting approval" not in out
    assert "approves #" in out
    listed = [json.loads(line) for line in zguard.ok("model", "changes", "--json").splitlines()]
    assert [(r["type"], r["principal"], r["approved"]) for r in listed] == [
        (REQUESTED, "alice", True),
        (APPROVED, "bob", None),
    ]
    assert zguard.ok("audit", "verify").startswith("audit trail intact")


def test_a_changed_model_needs_a_new_approval(zguard: Zguard) -> None:
    zguard.as_("alice", "model", "pin", str(zguard.model))
    first = digest_of(zguard.model)
    assert zguard.as_("bob", "model", "approve", str(zguard.model))[0] == 0
    assert zguard.start_check() == first

    index = zguard.model / "model_index.json"
    index.write_text(index.read_text() + "\n", encoding="utf-8")  # one byte more: other files, another digest
    code, _, err = zguard.as_("bob", "model", "approve", str(zguard.model))
    assert code == EXIT_NO  # the files no longer match the approved manifest: approve checks them first
    assert "model_index.json" in err
    zguard.as_("bob", "model", "pin", str(zguard.model))  # this time bob pins
    second = digest_of(zguard.model)
    assert second != first
    with pytest.raises(ModelChangeUnapproved, match="pinned by bob"):
        zguard.start_check()
    assert zguard.as_("bob", "model", "approve", str(zguard.model))[0] == EXIT_FIX  # bob requested this one
    assert zguard.as_("alice", "model", "approve", str(zguard.model))[0] == 0
    assert zguard.start_check() == second

    # Content-addressed: the first manifest's approval still names those files and only those.
    engine = create_store_engine(database_url(zguard.settings))
    try:
        store = AuditStore(engine)
        assert state_of(store, first).approved
        assert not state_of(store, "0" * 64).approved
    finally:
        engine.dispose()


def test_a_tampered_approval_is_caught(zguard: Zguard) -> None:
    zguard.as_("alice", "model", "pin", str(zguard.model))
    assert zguard.as_("bob", "model", "approve", str(zguard.model))[0] == 0
    assert zguard.start_check() is not None
    assert zguard.ok("audit", "verify").startswith("audit trail intact")
    (approval,) = (e for e in zguard.events() if e["type"] == APPROVED)

    # An approval edited in the database (the approver's name): no longer believed, and `audit verify` names it.
    zguard.sql(
        "UPDATE audit_events SET body = replace(body, :name, :forged) WHERE seq = :seq",
        name='"bob"',
        forged='"bobby"',
        seq=approval["seq"],
    )
    code, out, _ = zguard("audit", "verify")
    assert code == EXIT_NO
    assert f"NOT intact: edited at event {approval['seq']}" in out
    with pytest.raises(ModelChangeUnapproved):
        zguard.start_check()
    assert "EVENT ALTERED" in zguard.ok("model", "changes")


def test_an_approval_must_come_from_another_admin_and_name_its_request(zguard: Zguard) -> None:
    """Events that look like approvals, intact in the chain, but break the rule, do not count."""
    zguard.as_("alice", "model", "pin", str(zguard.model))
    digest = digest_of(zguard.model)
    (request,) = (e for e in zguard.events() if e["type"] == REQUESTED)
    engine = create_store_engine(database_url(zguard.settings))
    try:
        store = open_audit_store(zguard.settings, engine)
        request_seq = request["seq"]
        assert isinstance(request_seq, int)
        for principal, requester, seq in [
            ("alice", "alice", request_seq),  # the requester approving
            ("bob", "mallory", request_seq),  # naming another requester than the request's
            ("bob", "alice", 999),  # naming no request
        ]:
            event = AuditEvent(
                type=APPROVED,
                outcome="done",
                principal=principal,
                detail={"digest": digest, "requester": requester, "request_seq": seq},
            )
            StoreSink(store).emit(event)
        assert not state_of(store, digest).approved
    finally:
        engine.dispose()
    with pytest.raises(ModelChangeUnapproved):
        zguard.start_check()


def test_the_setting_off_or_the_demo_model_needs_no_approval(zguard: Zguard) -> None:
    off = zguard.settings.model_copy(
        update={"model": zguard.settings.model.model_copy(update={"change_approval_required": False})}
    )
    engine = create_store_engine(database_url(zguard.settings))
    try:
        store = AuditStore(engine)
        assert check_model_change(off, store, StoreSink(store)) is None
        demo = zguard.settings.model_copy(update={"model": zguard.settings.model.model_copy(update={"path": None})})
        assert check_model_change(demo, store, StoreSink(store)) is None
    finally:
        engine.dispose()
    assert model_change_finding(off) is None


def test_the_load_refuses_a_manifest_swapped_after_the_check() -> None:
    check_loaded(None, "b" * 64)  # no approval required
    check_loaded("a" * 64, "a" * 64)
    with pytest.raises(ModelChangeUnapproved, match="not the approved"):
        check_loaded("a" * 64, "b" * 64)
