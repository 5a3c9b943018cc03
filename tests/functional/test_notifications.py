"""Issue 20, item 4: approval notifications by webhook and e-mail, sent from the audit trail.

Real approval flows (ApprovalService on a real SQLite state database and audit store, and the
`zguard approvals` CLI) feed the notifiers; a webhook receiver on 127.0.0.1 checks every HMAC,
fails the first calls with 503 to prove the retries and drops repeats by event id; an aiosmtpd
sink on 127.0.0.1 receives the mails. Then: 4xx is not retried and the failure is an audit event,
a restart resumes from the durable cursor, a first start does not send the history, two
replicas send each event once, `zguard serve` runs it all, the settings and secret-file
refusals, and TLS (STARTTLS with a password, implicit TLS, HTTPS, certificates checked, no
clear-text fallback).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from tests.common.audit import audit_store, sqlite_url
from tests.common.cli import ZguardCli
from tests.common.databases import BACKENDS, database_url_for
from tests.common.factories import make_settings
from tests.common.pki import Pki, make_pki
from tests.common.polling import wait_until
from tests.common.receivers import smtp_sink, webhook_receiver
from tests.common.servers import ZguardProcess
from zguard.audit import AuditEvent
from zguard.audit.chain import canonical, event_body
from zguard.audit.notifications.channels import EmailChannel, Undelivered, WebhookChannel, tls_context
from zguard.audit.notifications.message import MAX_BODY_BYTES, Notice, email_subject, webhook_body
from zguard.audit.notifications.outbox import FAILED_EVENT, Notifier
from zguard.audit.notifications.setup import build_notifiers, close_notifiers, read_password, start_notifiers
from zguard.audit.setup import AuditHealth, open_audit_store
from zguard.audit.store import AuditStore
from zguard.audit.trail import AuditTrail
from zguard.config.approvals import ApprovalSettings
from zguard.config.notifications import EmailSettings, NotificationSettings
from zguard.errors import ConfigError
from zguard.ops.file_checks import secret_files
from zguard.ops.host_checks import host_findings
from zguard.ops.notification_check import notification_findings
from zguard.services.approvals import ApprovalService, Caller, RequestForm
from zguard.services.counters import CounterStorage
from zguard.store.approvals import ApprovalStore
from zguard.store.database import create_store_engine, database_url
from zguard.store.leases import Lease

KEY = b"k" * 16 + b"0123456789abcdef0123456789"  # 42 bytes: a receiver's copy of the secret file
DIGEST = "sha256:" + "ab" * 32
FAST = {"max_backoff_s": 0.05}
FLOW_EVENTS = ["approval.requested", "approval.decided", "approval.granted"]
RITA = Caller("rita", frozenset({"generator"}), client="10.9.8.7")
ALICE = Caller("alice", frozenset({"approver"}))
FORM = RequestForm(
    model="zimage", purpose="statement visuals", business_unit="retail", data_classification="internal",
    quota_per_day=5, quota_total=50, validity_days=30, ticket="CHG-7",
)  # fmt: skip


def key_file(directory: Path, content: bytes = KEY + b"\n", mode: int = 0o600) -> Path:
    path = directory / "webhook.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


@dataclass
class Governance:
    """An approval service and the audit store its events are committed to."""

    store: AuditStore
    trail: AuditTrail
    approvals: ApprovalService
    tmp: Path

    def flow(self) -> int:
        """rita asks, alice approves: requested, decided, granted (in that order)."""
        request = self.approvals.request(RITA, FORM)
        outcome = self.approvals.decide(ALICE, request.id, "approve")
        assert outcome.grant is not None
        return outcome.grant.id

    def notifier(self, url: str, **webhook: Any) -> Notifier:
        settings = NotificationSettings.model_validate(
            {"webhook": {"url": url, "secret_file": str(key_file(self.tmp)), **FAST, **webhook}}
        )
        (notifier,) = build_notifiers(settings, self.store, self.trail)
        return notifier

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(e.body) for e in self.store.iter_events() if e.type == kind]


@pytest.fixture(params=BACKENDS)
def governance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Governance]:
    (tmp_path / "state").mkdir(mode=0o700)
    with database_url_for(request.param, tmp_path) as url, audit_store(url, tmp_path / "keys") as (store, engine):
        trail = AuditTrail(store)
        approvals = ApprovalService(
            ApprovalSettings(),
            ApprovalStore(engine),
            make_settings(tmp_path / "state").role_registry(),
            audit=trail,
            counters=CounterStorage(),
            served=lambda: ("zimage", DIGEST),
            version=lambda: 0,
        )
        try:
            yield Governance(store, trail, approvals, tmp_path)
        finally:
            trail.close()


def test_webhook_retries_503_and_receivers_get_each_event_signed_once(governance: Governance) -> None:
    with webhook_receiver(KEY, fail_first=2) as (url, receiver):
        notifier = governance.notifier(url, max_attempts=4)
        notifier.start()
        try:
            grant = governance.flow()
            wait_until(lambda: len(receiver.unique) == 3, timeout=20, what="three deliveries")
        finally:
            notifier.close()
    assert receiver.refused == []  # every call carried a valid signature and a recent timestamp
    assert receiver.calls == 5  # two 503s, then one call per event
    assert [d.body["type"] for d in receiver.deliveries] == FLOW_EVENTS
    granted = receiver.deliveries[-1]
    stored = governance.events("approval.granted")[0]
    assert granted.event_id == stored["event_id"] == granted.headers["X-Zguard-Event-Id"]
    assert (granted.body["seq"], granted.body["time"], granted.body["principal"]) == (
        stored["seq"], stored["time"], "alice",
    )  # fmt: skip
    assert granted.body["detail"]["grant"] == grant
    assert granted.body["detail"]["principal"] == "rita"
    assert granted.body["detail"]["approvers"] == "alice"
    # What never leaves: the client's address, prompts, images, the request's HTTP details.
    requested = receiver.deliveries[0].body
    assert governance.events("approval.requested")[0]["client"] == "10.9.8.7"
    assert not {"client", "prompt", "images", "generation", "http", "roles"} & set(requested)
    assert "10.9.8.7" not in json.dumps([d.body for d in receiver.deliveries])
    assert notifier.status().sent == 3
    assert governance.store.cursor("notify-webhook") == stored["seq"]
    (health,) = cast(list[dict[str, Any]], AuditHealth(governance.trail, None, [notifier]).snapshot()["notifications"])
    assert (health["channel"], health["sent"], health["failed"], health["cursor"]) == ("webhook", 3, 0, stored["seq"])
    assert health["target"] == url.partition("?")[0]


def test_a_4xx_is_not_retried_and_exhausted_retries_are_recorded(governance: Governance) -> None:
    with webhook_receiver(KEY, fail_first=1, fail_status=400) as (url, receiver):
        notifier = governance.notifier(url, max_attempts=5)
        notifier.start()
        try:
            governance.flow()
            wait_until(lambda: len(receiver.unique) == 2, timeout=20, what="the two later events")
        finally:
            notifier.close()
    assert receiver.calls == 3  # the 400 was not tried again
    (failed,) = governance.events(FAILED_EVENT)
    requested = governance.events("approval.requested")[0]
    assert failed["outcome"] == "failed"
    assert failed["detail"]["event_id"] == requested["event_id"]
    assert failed["detail"]["event_type"] == "approval.requested"
    assert failed["detail"]["attempts"] == 1
    assert failed["detail"]["reason"].endswith("HTTP 400")
    assert "tenant=bank" not in failed["detail"]["target"]  # the query may hold a receiver's token
    assert notifier.status().failed == 1

    with webhook_receiver(KEY, fail_first=99) as (url, receiver):
        notifier = governance.notifier(url, max_attempts=3)
        notifier.start()
        try:
            governance.approvals.revoke(ALICE, 1, "project ended")
            wait_until(lambda: len(governance.events(FAILED_EVENT)) == 2, timeout=20, what="the second failure")
        finally:
            notifier.close()
    assert receiver.calls == 3
    assert governance.events(FAILED_EVENT)[-1]["detail"]["attempts"] == 3
    assert governance.events(FAILED_EVENT)[-1]["detail"]["reason"].endswith("HTTP 503")


def test_a_restart_resumes_from_the_cursor_and_a_first_start_sends_no_history(governance: Governance) -> None:
    governance.flow()  # before notifications were ever on: not sent
    with webhook_receiver(KEY) as (url, receiver):
        first = governance.notifier(url)
        first.start()
        head_at_start = governance.store.head_seq()
        assert governance.store.cursor("notify-webhook") == head_at_start
        governance.approvals.revoke(ALICE, 1, "moved to another team")
        wait_until(lambda: len(receiver.unique) == 1, timeout=20, what="the revocation")
        first.close()
        governance.flow()  # while zguard is down: kept in the outbox
        assert len(receiver.deliveries) == 1
        second = governance.notifier(url)
        second.start()
        try:
            wait_until(lambda: len(receiver.unique) == 4, timeout=20, what="the events stored while stopped")
        finally:
            second.close()
    types = [d.body["type"] for d in receiver.deliveries]
    assert types == ["approval.revoked", *FLOW_EVENTS]
    assert len(receiver.deliveries) == len(receiver.unique)  # the cursor moved after each: no repeat
    assert all(d.body["seq"] > head_at_start for d in receiver.deliveries)


def approvals_cli(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[ZguardCli, list[str]]:
    """The CLI on `config`'s (new) state database with rita (generator) and alice (approver), and
    the arguments of rita's request for the served model."""
    cli = ZguardCli(config, capsys)
    cli.ok("db", "upgrade")
    cli.ok("user", "add", "rita", "--role", "generator", "--service")
    cli.ok("user", "add", "alice", "--role", "approver", "--service")
    asked = ["approvals", "request", "--as", "rita", "--model", cli.settings.model.id, "--purpose", "campaign",
             "--business-unit", "retail", "--classification", "internal", "--per-day", "5", "--total", "50",
             "--days", "30"]  # fmt: skip
    return cli, asked


def test_an_approve_flow_by_the_cli_is_mailed_and_posted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CLI commands commit their events to the state database; the server's notifiers send them."""
    state = tmp_path / "state"
    with smtp_sink() as sink, webhook_receiver(KEY) as (url, receiver):
        config = tmp_path / "zguard.yaml"
        config.write_text(
            f"state_dir: {state}\nintegrity:\n  allow_root: true\n"
            "notifications:\n"
            f"  webhook: {{url: '{url}', secret_file: {key_file(tmp_path)}, max_backoff_s: 0.05}}\n"
            f"  email: {{host: 127.0.0.1, port: {sink.port}, security: plain, from_address: zguard@bank.example,"
            " to: [approvers@bank.example, governance@bank.example]}\n",
            encoding="utf-8",
        )
        cli, asked = approvals_cli(config, capsys)
        settings = cli.settings
        engine = create_store_engine(database_url(settings))
        store = open_audit_store(settings, engine)
        trail = AuditTrail(store)
        notifiers = build_notifiers(settings.notifications, store, trail)
        assert [n.cursor_name for n in notifiers] == ["notify-webhook", "notify-email"]
        start_notifiers(notifiers)
        try:
            cli.ok(*asked)
            assert "grant 1 for rita" in cli.ok("approvals", "approve", "1", "--as", "alice")
            wait_until(
                lambda: len(sink.messages) == 3 and len(receiver.unique) == 3, timeout=30, what="3 mails, 3 posts"
            )
        finally:
            close_notifiers(notifiers)
            trail.close()
            store.close()
            engine.dispose()
    envelope, mail = sink.messages[-1]
    assert mail["Subject"] == "[zguard] approval.granted #1 for rita"
    assert (mail["From"], mail["To"]) == ("zguard@bank.example", "approvers@bank.example, governance@bank.example")
    assert envelope.rcpt_tos == ["approvers@bank.example", "governance@bank.example"]
    assert mail["X-Zguard-Event-Id"] == receiver.deliveries[-1].event_id
    assert mail["Message-ID"] == f"<{mail['X-Zguard-Event-Id']}@bank.example>"
    text = mail.get_payload()
    assert isinstance(text, str)
    assert "approval.granted (done)" in text
    assert "by:        alice" in text
    assert "quota_per_day: 5" in text
    assert [m["Subject"].split()[1] for _, m in sink.messages] == FLOW_EVENTS
    everything = "".join(m.as_string() for _, m in sink.messages) + json.dumps([d.body for d in receiver.deliveries])
    assert KEY.decode() not in everything


# --- settings and secret files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"webhook": {"url": "http://hooks.bank.example/z", "secret_file": "/k"}}, "must use https"),
        ({"webhook": {"url": "ftp://hooks.bank.example/z", "secret_file": "/k"}}, "must be an https:// URL"),
        ({"webhook": {"url": "https://u:p@hooks.bank.example/z", "secret_file": "/k"}}, "must not carry credentials"),
        ({"webhook": {"url": "https://hooks.bank.example/z"}}, "needs notifications.webhook.secret_file"),
        (
            {
                "email": {
                    "host": "smtp.bank.example",
                    "security": "plain",
                    "from_address": "z@bank.example",
                    "to": ["a@bank.example"],
                }
            },
            "plain is allowed only to a loopback host",
        ),
        ({"email": {"host": "smtp.bank.example", "to": ["a@bank.example"]}}, "needs notifications.email.from_address"),
        (
            {
                "email": {
                    "host": "smtp.bank.example",
                    "from_address": "z@bank.example",
                    "to": ["a@bank.example"],
                    "username": "zguard",
                }
            },
            "both username and password_file",
        ),
        ({"email": {"to": ["not an address"]}}, "is not an address"),
        ({"events": ["notification.failed"]}, "could loop"),
        ({"events": ["approval.*", "Approval granted"]}, "is not an event type"),
    ],
)
def test_settings_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NotificationSettings.model_validate(section)


def test_settings_accepted_and_off_by_default(tmp_path: Path) -> None:
    assert make_settings(tmp_path).notifications == NotificationSettings()
    assert NotificationSettings().webhook.url is None
    assert NotificationSettings().email.host is None
    loopback = NotificationSettings.model_validate(
        {"webhook": {"url": "http://127.0.0.1:8080/hook", "secret_file": "/k"}, "events": ["approval.*"]}
    )
    assert loopback.events == ["approval.*"]
    with audit_store(sqlite_url(tmp_path), tmp_path / "keys") as (store, _):
        assert build_notifiers(NotificationSettings(), store, AuditTrail(store)) == []


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (KEY + b"\n", 0o644, "readable by group or others"),
        (KEY, 0o640, "readable by group or others"),
        (b"x" * 31 + b"\n", 0o600, "fewer than 32"),
        (None, 0o600, "cannot read the webhook key"),
    ],
)
def test_webhook_secret_file_refused(tmp_path: Path, content: bytes | None, mode: int, message: str) -> None:
    path = key_file(tmp_path, content or b"", mode)
    if content is None:
        os.unlink(path)
    settings = NotificationSettings.model_validate(
        {"webhook": {"url": "https://hooks.bank.example/z", "secret_file": str(path)}}
    )
    with audit_store(sqlite_url(tmp_path), tmp_path / "keys") as (store, _), pytest.raises(ConfigError) as refused:
        build_notifiers(settings, store, AuditTrail(store))
    assert refused.value.problems[0].startswith("notifications.webhook.secret_file: ")
    assert message in refused.value.problems[0]
    assert "fix:" in refused.value.problems[0]


def test_smtp_password_file_must_be_private(tmp_path: Path) -> None:
    password = tmp_path / "smtp.pass"
    password.write_text("s3cret\n", encoding="utf-8")
    password.chmod(0o644)
    settings = NotificationSettings.model_validate(
        {"email": {"host": "smtp.bank.example", "from_address": "z@bank.example", "to": ["a@bank.example"],
                   "username": "zguard", "password_file": str(password)}}
    )  # fmt: skip
    with (
        audit_store(sqlite_url(tmp_path), tmp_path / "keys") as (store, _),
        pytest.raises(ConfigError, match=r"notifications\.email\.password_file: .* chmod 600"),
    ):
        build_notifiers(settings, store, AuditTrail(store))


def test_an_oversized_detail_is_cut_and_the_subject_stays_one_line() -> None:
    body = json.dumps({"seq": 7, "event_id": "e-7", "type": "approval.requested", "outcome": "done",
                       "principal": "rita", "prompt": {"hmac": "x"}, "client": "10.0.0.1",
                       "detail": {"request": 3, "requester": "rita\r\nBcc: evil@example.com", "purpose": "p" * 40_000}})  # fmt: skip
    notice = Notice.from_body(body)
    sent = webhook_body(notice)
    assert len(sent) <= MAX_BODY_BYTES
    assert json.loads(sent)["detail_truncated"] is True
    assert "prompt" not in json.loads(sent)
    subject = email_subject(notice)
    assert subject.startswith("[zguard] approval.requested #3 for rita")
    assert "\r" not in subject
    assert "\n" not in subject


def test_doctor_and_serve_check_the_notification_secrets_as_secret_files(tmp_path: Path) -> None:
    """The host checks `serve`, `doctor` and `scan` share fail a webhook key other accounts can read."""
    key = key_file(tmp_path, mode=0o644)
    settings = make_settings(
        tmp_path / "state",
        notifications={"webhook": {"url": "https://hooks.bank.example/z", "secret_file": str(key)}},
    )
    assert secret_files(settings)["notifications.webhook.secret_file"] == key
    private = [f for f in host_findings(settings) if f.check == "secret_file_private" and str(key) in f.message]
    assert [f.severity for f in private] == ["fail"]
    assert "notifications.webhook.secret_file" in private[0].message
    key.chmod(0o600)
    private = [f for f in host_findings(settings) if f.check == "secret_file_private" and str(key) in f.message]
    assert [f.severity for f in private] == ["pass"]


@pytest.mark.slow
def test_serve_sends_what_the_cli_approves_and_resumes_after_a_restart(
    tmp_path: Path, demo_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zguard serve` runs the notifiers: events the CLI commits reach the webhook, also those
    committed while the server was down, each once."""
    state = tmp_path / "state"
    config = tmp_path / "zguard.yaml"
    with webhook_receiver(KEY) as (url, receiver):
        config.write_text(
            f"state_dir: {state}\nintegrity:\n  allow_root: true\nmodel:\n  path: {demo_model_dir}\n  warmup: false\n"
            f"notifications:\n  webhook: {{url: '{url}', secret_file: {key_file(tmp_path)}, max_backoff_s: 0.05}}\n",
            encoding="utf-8",
        )
        cli, asked = approvals_cli(config, capsys)
        env = {"ZGUARD_CONFIG": str(config)}
        with ZguardProcess(state, env=env) as server:
            server.wait_ready()
            cli.ok(*asked)
            wait_until(lambda: len(receiver.unique) == 1, timeout=30, what=lambda: f"the request:\n{server.log()}")
            assert server.stop() == 0
        cli.ok("approvals", "approve", "1", "--as", "alice")  # while no server runs
        with ZguardProcess(state, env=env) as server:
            server.wait_ready()
            wait_until(lambda: len(receiver.unique) == 3, timeout=30, what=lambda: f"the decision:\n{server.log()}")
            assert server.stop() == 0
    assert [d.body["type"] for d in receiver.deliveries] == FLOW_EVENTS
    assert receiver.refused == []


def test_two_replicas_on_one_store_send_each_event_once_and_hand_over(governance: Governance) -> None:
    """Each replica runs the notifier; the lease lets one send, and the other takes over from the
    durable cursor when the holder stops."""
    engine = governance.store.engine
    with webhook_receiver(KEY) as (url, receiver):
        settings = NotificationSettings.model_validate(
            {"webhook": {"url": url, "secret_file": str(key_file(governance.tmp)), **FAST}}
        )
        replicas = {
            name: build_notifiers(
                settings,
                governance.store,
                governance.trail,
                lease_for=lambda lease, name=name: Lease(engine, lease, name, lease_s=3.0),  # type: ignore[misc]
            )[0]
            for name in ("gpu-01-5000", "gpu-02-5000")
        }
        for notifier in replicas.values():
            notifier.start()
        try:
            governance.flow()
            wait_until(lambda: len(receiver.unique) == 3, timeout=20, what="the flow's three events")
            held = Lease(engine, "notify-webhook", "observer", lease_s=3.0).holder_now()
            assert held is not None
            holder = held[0]
            replicas.pop(holder).close()  # a clean stop gives the lease up at once
            governance.approvals.revoke(ALICE, 1, "left the bank")
            wait_until(lambda: len(receiver.unique) == 4, timeout=20, what="the revocation, by the other replica")
        finally:
            for notifier in replicas.values():
                notifier.close()
    assert [d.body["type"] for d in receiver.deliveries] == [*FLOW_EVENTS, "approval.revoked"]  # each once
    assert {s.sent for s in (n.status() for n in replicas.values())} == {1}


# --- e-mail over TLS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def a_notice() -> Notice:
    body = event_body(
        AuditEvent(
            type="approval.granted", outcome="done", principal="alice", detail={"grant": 4, "principal": "rita"}
        ),
        seq=9,
        event_id="ev-9",
        time_ms=1_796_407_200_000,
    )
    return Notice.from_body(canonical(body))


def mail_settings(port: int, security: str, **more: Any) -> EmailSettings:
    return EmailSettings.model_validate(
        {"host": "127.0.0.1", "port": port, "security": security, "from_address": "zguard@bank.example",
         "to": ["approvers@bank.example"], **more}
    )  # fmt: skip


def test_mail_over_starttls_signs_in_with_the_password_file(pki: Pki, tmp_path: Path) -> None:
    password = tmp_path / "smtp.pass"
    password.write_text("relay-secret\n", encoding="utf-8")
    password.chmod(0o600)
    with smtp_sink("starttls", pki, login=("zguard", "relay-secret")) as sink:
        settings = mail_settings(
            sink.port, "starttls", ca_file=str(pki.ca), username="zguard", password_file=str(password)
        )
        EmailChannel(settings, read_password(password)).send(a_notice())
        with pytest.raises(Undelivered) as refused:
            EmailChannel(settings, "not-the-password").send(a_notice())
    assert sink.encrypted == [True]
    assert sink.messages[0][1]["Subject"] == "[zguard] approval.granted #4 for rita"
    assert "relay-secret" not in sink.messages[0][1].as_string()
    assert refused.value.message.endswith("SMTP 535")  # a final refusal: not tried again
    assert not refused.value.retry


def test_mail_over_implicit_tls(pki: Pki) -> None:
    with smtp_sink("tls", pki) as sink:
        EmailChannel(mail_settings(sink.port, "tls", ca_file=str(pki.ca)), None).send(a_notice())
    assert sink.encrypted == [True]
    assert sink.messages[0][1]["X-Zguard-Event-Id"] == "ev-9"


def test_starttls_never_falls_back_to_clear_text_and_checks_the_certificate(pki: Pki) -> None:
    with smtp_sink("plain") as sink:  # a relay (or someone in the way) that offers no STARTTLS
        with pytest.raises(Undelivered, match="does not offer STARTTLS") as refused:
            EmailChannel(mail_settings(sink.port, "starttls", ca_file=str(pki.ca)), None).send(a_notice())
        assert not refused.value.retry
        assert sink.messages == []
    with smtp_sink("starttls", pki) as sink:  # a certificate the configured CA did not sign
        with pytest.raises(Undelivered, match="SSLCertVerificationError"):
            EmailChannel(mail_settings(sink.port, "starttls", ca_file=str(pki.other_ca)), None).send(a_notice())
        assert sink.messages == []


def test_the_webhook_over_https_checks_the_receivers_certificate(pki: Pki) -> None:
    with webhook_receiver(KEY, pki) as (url, receiver):
        WebhookChannel(url, KEY, timeout_s=5, max_backoff_s=1, context=tls_context(pki.ca)).send(a_notice())
        with pytest.raises(Undelivered, match="SSLCertVerificationError") as refused:
            WebhookChannel(url, KEY, timeout_s=5, max_backoff_s=1, context=tls_context(pki.other_ca)).send(a_notice())
    assert [d.event_id for d in receiver.deliveries] == ["ev-9"]
    assert receiver.refused == []
    assert refused.value.retry  # a connection-level failure: tried again, then recorded


def test_doctor_reads_the_secret_files_as_serve_will(tmp_path: Path) -> None:
    short = key_file(tmp_path, b"too short\n")
    settings = make_settings(
        tmp_path / "state",
        notifications={"webhook": {"url": "https://hooks.bank.example/z", "secret_file": str(short)}},
    )
    (finding,) = notification_findings(settings)
    assert (finding.check, finding.severity) == ("notifications", "fail")
    assert "notifications.webhook.secret_file" in finding.message
    assert "holds 9 bytes of key, fewer than 32" in finding.message
    assert finding.fix is not None
    assert finding.fix.startswith(f"openssl rand -hex 32 > {short}")
    key_file(tmp_path)
    assert [f.severity for f in notification_findings(settings)] == ["pass"]
    assert notification_findings(make_settings(tmp_path / "state")) == []
