"""What a notification says: the webhook body and its signature, the e-mail's subject and text. Pure.

The body keeps an allow-list of the stored event's fields (`SENT_FIELDS`): what was decided,
about which request or grant, by whom and when. Never the prompt, images, generation or HTTP
details, or the client's address: those stay in the audit trail. A body over `MAX_BODY_BYTES`
keeps its envelope and says `"detail_truncated": true` instead of the detail.

Signature (what a receiver checks, docs/governance.md):

    X-Zguard-Timestamp: <UNIX seconds>
    X-Zguard-Signature: sha256=<hex HMAC-SHA256(key, timestamp + "." + body)>

so a captured body cannot be replayed under another timestamp, and a receiver that refuses old
timestamps (e.g. over five minutes) refuses a replay.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

SENT_FIELDS: Final = ("event_id", "seq", "time", "type", "outcome", "code", "principal", "model", "manifest", "detail")
MAX_BODY_BYTES: Final = 16 * 1024
SUBJECT_MAX_CHARS: Final = 200
TEXT_VALUE_MAX_CHARS: Final = 500
SIGNATURE_HEADER: Final = "X-Zguard-Signature"
TIMESTAMP_HEADER: Final = "X-Zguard-Timestamp"
EVENT_ID_HEADER: Final = "X-Zguard-Event-Id"
BODY_VERSION: Final = 1
# What names the request or grant an event is about, and whom it concerns, in the subject.
_NUMBER_KEYS: Final = ("grant", "request", "campaign")
_CONCERNS_KEYS: Final = ("requester", "principal", "digest", "model_digest")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


@dataclass(frozen=True)
class Notice:
    """One event as the channels send it: `fields` are the sent fields of its stored body."""

    seq: int
    event_id: str
    type: str
    fields: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: str) -> Notice:
        """From a stored event's canonical JSON body (`zguard.audit.chain.event_body`)."""
        stored = json.loads(body)
        fields = {name: stored.get(name) for name in SENT_FIELDS}
        return cls(seq=int(stored["seq"]), event_id=str(stored["event_id"]), type=str(stored["type"]), fields=fields)

    @property
    def detail(self) -> Mapping[str, Any]:
        detail = self.fields.get("detail")
        return detail if isinstance(detail, Mapping) else {}


def webhook_body(notice: Notice) -> bytes:
    """The POSTed JSON: `v` and the sent fields; at most MAX_BODY_BYTES."""
    payload: dict[str, Any] = {"v": BODY_VERSION, **notice.fields}
    body = _json(payload)
    if len(body) > MAX_BODY_BYTES:
        payload["detail"] = {}
        payload["detail_truncated"] = True
        body = _json(payload)
    return body


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signature(key: bytes, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 under `key` of the timestamp, a dot and the body."""
    mac = hmac.new(key, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(key: bytes, timestamp: int, notice: Notice, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(key, timestamp, body),
        EVENT_ID_HEADER: notice.event_id,
    }


def _plain(value: object, limit: int) -> str:
    """One line of text: control and line-breaking characters replaced, cut to `limit`."""
    text = _UNSAFE.sub("?", str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def email_subject(notice: Notice) -> str:
    """`[zguard] approval.granted #12 for alice`: the event, the request/grant number, whom it concerns."""
    detail = notice.detail
    parts = ["[zguard]", notice.type]
    number = next((detail[key] for key in _NUMBER_KEYS if detail.get(key) not in (None, "")), None)
    if number is not None:
        parts.append(f"#{number}")
    concerns = next((detail[key] for key in _CONCERNS_KEYS if detail.get(key) not in (None, "")), None)
    if concerns is not None:
        parts.append(f"for {concerns}")
    if notice.fields.get("outcome") == "denied" and notice.fields.get("code"):
        parts.append(f"({notice.fields['code']})")
    return _plain(" ".join(str(part) for part in parts), SUBJECT_MAX_CHARS)


def email_text(notice: Notice) -> str:
    """The plain-text body: the envelope, then each detail key on its own line, sorted."""
    fields = notice.fields
    lines = [
        f"{notice.type} ({fields.get('outcome')})",
        "",
        f"time:      {fields.get('time')}",
        f"by:        {fields.get('principal') or '-'}",
    ]
    if fields.get("code"):
        lines.append(f"code:      {fields['code']}")
    if fields.get("model"):
        lines.append(f"model:     {fields['model']}")
    lines.append("")
    for key in sorted(notice.detail):
        value = notice.detail[key]
        if value is not None:
            lines.append(f"{_plain(key, 64)}: {_plain(value, TEXT_VALUE_MAX_CHARS)}")
    lines += [
        "",
        f"audit event {notice.event_id} (seq {notice.seq})",
        "Sent by zguard from its audit trail; the trail is the record, this message a copy.",
    ]
    return "\n".join(_plain(line, 1000) for line in lines) + "\n"
