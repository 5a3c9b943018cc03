"""The rules of the audit chain that a stored row depends on, each pinned on its own: the body's
version and shape, the timestamp format, latency rounding, canonical JSON, search-column text, and
which checkpoints verify (every signed field counts, every malformed one is refused, not raised).

The byte-exact known answers are tests/unit/audit/test_chain_vectors.py; these are the rules.
"""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zguard.audit import AuditEvent
from zguard.audit.chain import (
    BODY_VERSION,
    GENESIS,
    CheckpointSigner,
    canonical,
    chain_hash,
    checkpoint_message,
    checkpoint_valid,
    column_text,
    event_body,
    iso_ms,
    load_or_create_signing_key,
)
from zguard.security.keys import KeyFileError, key_id

SIGNER = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
HEAD = "ab" * 32
FIELDS = {
    "v",
    "seq",
    "event_id",
    "time",
    "time_ms",
    "type",
    "outcome",
    "code",
    "request_id",
    "listener",
    "client",
    "principal",
    "roles",
    "auth_method",
    "http",
    "model",
    "manifest",
    "generation",
    "prompt",
    "policy",
    "latency_ms",
    "images",
    "detail",
}


def body_of(event: AuditEvent, *, seq: int = 7, time_ms: int = 1_795_000_000_123) -> dict[str, Any]:
    return event_body(event, seq=seq, event_id="e" * 32, time_ms=time_ms)


# --- event body ---------------------------------------------------------------------------------


def test_the_body_is_version_1_and_carries_its_own_position_and_time() -> None:
    body = body_of(AuditEvent(type="auth.denied", outcome="denied"), seq=42, time_ms=1_795_000_000_123)
    assert BODY_VERSION == 1
    assert body["v"] == 1
    assert body["seq"] == 42
    assert body["event_id"] == "e" * 32
    assert body["time_ms"] == 1_795_000_000_123
    assert body["time"] == "2026-11-18T11:06:40.123Z"
    assert body["type"] == "auth.denied"
    assert body["outcome"] == "denied"


def test_every_field_is_present_even_when_unknown() -> None:
    body = body_of(AuditEvent(type="t", outcome="allowed"))
    assert set(body) == FIELDS
    for field in ("code", "request_id", "listener", "client", "principal", "auth_method", "model", "manifest"):
        assert body[field] is None, field
    for field in ("http", "generation", "prompt", "policy", "latency_ms"):
        assert body[field] is None, field
    assert body["roles"] == []
    assert body["images"] == []
    assert body["detail"] == {}


def test_every_field_is_copied_from_the_event() -> None:
    event = AuditEvent(
        type="generation.completed",
        outcome="done",
        code="ok",
        request_id="r1",
        listener="api",
        client="10.0.0.7",
        principal="alice",
        roles=("operator", "auditor"),
        auth_method="token",
        detail={"k": 1},
        model="m",
        manifest="f" * 64,
        generation={"steps": 8},
        prompt={"chars": 3},
        policy={"verdict": "allow"},
        latency_ms=12.5,
        images=({"format": "png"},),
        http={"status": 200},
    )
    body = body_of(event)
    assert set(body) == FIELDS
    assert {k: body[k] for k in FIELDS - {"v", "seq", "event_id", "time", "time_ms"}} == {
        "type": "generation.completed",
        "outcome": "done",
        "code": "ok",
        "request_id": "r1",
        "listener": "api",
        "client": "10.0.0.7",
        "principal": "alice",
        "roles": ["operator", "auditor"],
        "auth_method": "token",
        "http": {"status": 200},
        "model": "m",
        "manifest": "f" * 64,
        "generation": {"steps": 8},
        "prompt": {"chars": 3},
        "policy": {"verdict": "allow"},
        "latency_ms": 12.5,
        "images": [{"format": "png"}],
        "detail": {"k": 1},
    }
    # Plain types only, so the body serialises the same way everywhere.
    assert type(body["roles"]) is list
    assert type(body["http"]) is dict
    assert type(body["images"][0]) is dict


@pytest.mark.parametrize(
    ("latency_ms", "stored"),
    [(1234.56789, 1234.568), (0.0004, 0.0), (0.0005001, 0.001), (2.25, 2.25), (7, 7), (0.0, 0.0), (99.99951, 100.0)],
)
def test_latency_is_stored_to_three_decimals(latency_ms: float, stored: float) -> None:
    body = body_of(AuditEvent(type="t", outcome="done", latency_ms=latency_ms))
    assert body["latency_ms"] == stored
    assert f'"latency_ms":{json.dumps(stored)},' in canonical(body)


# --- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (999, "1970-01-01T00:00:00.999Z"),
        (1000, "1970-01-01T00:00:01.000Z"),
        (61_010, "1970-01-01T00:01:01.010Z"),
        (1_795_000_000_123, "2026-11-18T11:06:40.123Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),  # a leap day
        (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
    ],
)
def test_iso_ms_is_utc_with_exactly_three_digit_milliseconds(time_ms: int, text: str) -> None:
    assert iso_ms(time_ms) == text
    assert datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp() * 1000 == pytest.approx(
        time_ms
    )


# --- canonical JSON and the chain hash ----------------------------------------------------------


def test_canonical_is_compact_sorted_utf8_json() -> None:
    text = canonical({"b": [1, {"d": None, "c": True}], "a": "张三 é"})
    assert text == '{"a":"张三 é","b":[1,{"c":true,"d":null}]}'
    assert json.loads(text) == {"b": [1, {"d": None, "c": True}], "a": "张三 é"}


def test_canonical_writes_other_values_as_strings() -> None:
    assert canonical({"p": Path("/x/y"), "n": 3}) == '{"n":3,"p":"/x/y"}'
    assert canonical({"s": {2}, "t": (1, "a")}) == '{"s":[2],"t":[1,"a"]}'


def test_a_lone_surrogate_escapes_the_whole_body() -> None:
    text = canonical({"a": "张\ud83d"})
    assert text == '{"a":"\\u5f20\\ud83d"}'
    text.encode()  # storable as UTF-8


def test_chain_hash_depends_on_the_previous_hash_and_on_the_body() -> None:
    first = chain_hash(GENESIS, "{}")
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert chain_hash(GENESIS, "{}") == first
    assert chain_hash(first, "{}") != first
    assert chain_hash(GENESIS, "{ }") != first
    assert chain_hash(GENESIS[:-1] + "1", "{}") != first


# --- search columns -----------------------------------------------------------------------------


def test_column_text_is_cut_to_the_limit() -> None:
    assert column_text(None, 8) is None
    assert column_text("abcdefghij", 8) == "abcdefgh"
    assert column_text("abc", 8) == "abc"
    assert column_text("张三李四王五", 4) == "张三李四"
    assert column_text("", 8) == ""


def test_column_text_replaces_lone_surrogates() -> None:
    assert column_text("a\ud800b", 8) == "a\ufffdb"
    assert column_text("a\udfffb\ud83d", 8) == "a\ufffdb\ufffd"
    assert column_text("a\ud83d\ude00", 8) == "a\U0001f600"  # two halves in order are one character
    assert column_text("x" * 10 + "\ud800", 10) == "x" * 10  # cut first, then replaced


# --- checkpoints --------------------------------------------------------------------------------


def test_the_signed_message_names_its_context_and_each_field_in_order() -> None:
    assert checkpoint_message(5, HEAD, 1000) == b"zguard-audit-checkpoint-v1\n5\n" + HEAD.encode() + b"\n1000"
    assert checkpoint_message(5, HEAD, 1000) != checkpoint_message(1000, HEAD, 5)


def test_a_signed_checkpoint_verifies() -> None:
    detail = SIGNER.detail(5, HEAD, 1_795_000_000_000)
    assert set(detail) == {"covers_seq", "head_hash", "signed_ms", "key_id", "signature"}
    assert (detail["covers_seq"], detail["head_hash"], detail["signed_ms"]) == (5, HEAD, 1_795_000_000_000)
    assert detail["key_id"] == key_id(SIGNER.public_key) == SIGNER.key_id
    assert len(bytes.fromhex(detail["signature"])) == 64
    assert checkpoint_valid(SIGNER.public_key, detail) is True


@pytest.mark.parametrize(
    ("field", "value"),
    [("covers_seq", 6), ("head_hash", "cd" * 32), ("signed_ms", 1_795_000_000_001)],
)
def test_each_signed_field_counts(field: str, value: object) -> None:
    detail = SIGNER.detail(5, HEAD, 1_795_000_000_000) | {field: value}
    assert checkpoint_valid(SIGNER.public_key, detail) is False


def test_another_key_does_not_verify() -> None:
    detail = SIGNER.detail(5, HEAD, 1_795_000_000_000)
    assert checkpoint_valid(Ed25519PrivateKey.generate().public_key(), detail) is False


def test_the_key_id_is_not_signed() -> None:
    # key_id only names the key to look up; changing it changes nothing that verification checks
    detail = SIGNER.detail(5, HEAD, 1_795_000_000_000) | {"key_id": "0" * 16}
    assert checkpoint_valid(SIGNER.public_key, detail) is True


@pytest.mark.parametrize(
    "broken",
    [
        {"covers_seq": None},  # KeyError: removed below
        {"head_hash": None},
        {"signed_ms": None},
        {"signature": None},
        {"covers_seq": "five"},  # ValueError
        {"signed_ms": "soon"},
        {"signature": "zz"},  # not hex
        {"signature": "00" * 64},  # hex, wrong signature
        {"signature": ""},
        {"covers_seq": [5]},  # TypeError
        {"signed_ms": {"ms": 1}},
    ],
)
def test_a_malformed_checkpoint_is_invalid_not_an_error(broken: dict[str, Any]) -> None:
    detail: dict[str, Any] = dict(SIGNER.detail(5, HEAD, 1_795_000_000_000))
    for field, value in broken.items():
        if value is None:
            del detail[field]
        else:
            detail[field] = value
    assert checkpoint_valid(SIGNER.public_key, detail) is False


# --- the signing key file -----------------------------------------------------------------------


def test_the_signing_key_is_created_0600_and_loaded_back(tmp_path: Path) -> None:
    path = tmp_path / "audit-signing.pem"
    signer = load_or_create_signing_key(path)
    assert isinstance(signer, CheckpointSigner)
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    again = load_or_create_signing_key(path)
    assert again.key_id == signer.key_id
    detail = signer.detail(1, HEAD, 2)
    assert checkpoint_valid(again.public_key, detail)


def test_a_shared_signing_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit-signing.pem"
    load_or_create_signing_key(path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_signing_key(path)
