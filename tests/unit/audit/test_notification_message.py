"""zguard.audit.notifications.message: what a notification says, and its signature. Pure, no I/O."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from zguard.audit import AuditEvent
from zguard.audit.chain import canonical, event_body
from zguard.audit.notifications.message import (
    SENT_FIELDS,
    SUBJECT_MAX_CHARS,
    Notice,
    email_subject,
    email_text,
    signature,
    signed_headers,
    webhook_body,
)
from zguard.config.notifications import DEFAULT_EVENTS, event_selected

KEY = b"0123456789abcdef" * 3


def notice(**event: object) -> Notice:
    fields: dict[str, object] = {"type": "approval.granted", "outcome": "done", "principal": "alice", **event}
    stored = event_body(AuditEvent(**fields), seq=12, event_id="ev-12", time_ms=1_764_871_200_123)  # type: ignore[arg-type]
    return Notice.from_body(canonical(stored))


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(KEY, b"1764871200." + body, hashlib.sha256).hexdigest()
    assert signature(KEY, 1_764_871_200, body) == "sha256=" + expected
    assert signature(KEY, 1_764_871_201, body) != signature(KEY, 1_764_871_200, body)  # the time is signed
    headers = signed_headers(KEY, 1_764_871_200, notice(), body)
    assert headers["X-Zguard-Event-Id"] == "ev-12"
    assert headers["X-Zguard-Timestamp"] == "1764871200"


def test_the_body_keeps_only_the_sent_fields() -> None:
    n = notice(
        client="10.1.2.3",
        request_id="req-1",
        prompt={"hmac": "abc"},
        images=({"watermark": "w"},),
        http={"path": "/x"},
        detail={"grant": 7, "principal": "rita"},
    )
    body = json.loads(webhook_body(n))
    assert set(body) == {"v", *SENT_FIELDS}
    assert body["detail"] == {"grant": 7, "principal": "rita"}
    assert (body["seq"], body["event_id"], body["time"]) == (12, "ev-12", "2025-12-04T18:00:00.123Z")
    assert b"10.1.2.3" not in webhook_body(n)


@pytest.mark.parametrize(
    ("event", "subject"),
    [
        ({"detail": {"grant": 12, "request": 3, "principal": "rita"}}, "[zguard] approval.granted #12 for rita"),
        ({"type": "approval.requested", "detail": {"request": 3, "requester": "rita"}}, "[zguard] approval.requested #3 for rita"),
        ({"type": "approval.refused", "outcome": "denied", "code": "self_approval", "detail": {"request": 3}},
         "[zguard] approval.refused #3 (self_approval)"),
        ({"type": "model.change_approved", "detail": {"digest": "sha256:ab"}}, "[zguard] model.change_approved for sha256:ab"),
        ({"type": "approval.campaign_opened", "detail": {"campaign": 2}}, "[zguard] approval.campaign_opened #2"),
    ],
)  # fmt: skip
def test_subjects(event: dict[str, object], subject: str) -> None:
    assert email_subject(notice(**event)) == subject


def test_client_text_cannot_add_a_header_or_a_line() -> None:
    n = notice(detail={"grant": 1, "principal": "rita\r\nBcc: x@example.com" + "y" * 500})
    subject = email_subject(n)
    assert "\n" not in subject
    assert "\r" not in subject
    assert len(subject) <= SUBJECT_MAX_CHARS
    text = email_text(n)
    assert "\nBcc:" not in text
    assert "principal: rita??Bcc: x@example.com" in text
    assert "ev-12 (seq 12)" in text


def test_event_selection() -> None:
    assert event_selected(DEFAULT_EVENTS, "approval.granted")
    assert event_selected(DEFAULT_EVENTS, "model.change_approved")
    assert not event_selected(DEFAULT_EVENTS, "generation.completed")
    assert not event_selected(DEFAULT_EVENTS, "notification.failed")
    assert event_selected(["approval.*"], "approval.revoked")
    assert not event_selected(["approval.*"], "approvals.revoked")
    assert not event_selected(["approval.*"], "approval")
