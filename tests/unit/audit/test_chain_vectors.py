"""Known-answer vectors for the audit chain: event bodies, chain hashes and checkpoint signatures.

These vectors pin a persisted format: every stored audit row is hashed over exactly these bytes,
and archives, syslog collectors and `zguard audit verify` recompute them years later. A vector
that no longer matches means the format changed: that needs a `BODY_VERSION` bump (or a new
`SIGNATURE_CONTEXT`) and a migration for existing chains, never a quiet edit of the constants here.
"""

from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zguard.audit import AuditEvent
from zguard.audit.chain import (
    BODY_VERSION,
    CHECKPOINT_TYPE,
    GENESIS,
    SIGNATURE_CONTEXT,
    CheckpointSigner,
    canonical,
    chain_hash,
    checkpoint_message,
    checkpoint_valid,
    event_body,
    iso_ms,
)
from zguard.security.keys import KEY_ID_HEX, key_id

# A fixed Ed25519 key (Ed25519 signatures are deterministic, so the signatures below are fixed too).
PRIVATE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC_KEY_RAW = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
KEY_ID = "56475aa75463474c"

TIME_MS_1 = 1_795_000_000_123
TIME_MS_2 = 1_795_000_000_456
TIME_MS_3 = 1_795_000_001_000

# Every field set; a latency with five decimals (stored rounded to three) and Chinese text
# (stored as UTF-8, not as \\u escapes).
EVENT_1 = AuditEvent(
    type="generation.completed",
    outcome="done",
    code="ok",
    request_id="req-0001",
    listener="api",
    client="10.0.0.7",
    principal="张三",
    roles=("operator", "auditor"),
    auth_method="token",
    detail={"decisions": "auth.ok,policy.ok", "attempt": 1, "ratio": 0.5, "cached": False, "note": None},
    time=1_795_000_000.123,
    model="Z-Image-Turbo",
    manifest="ab" * 32,
    generation={"width": 1024, "height": 1024, "steps": 8, "seed": 42},
    prompt={"fingerprint": "cd" * 16, "chars": 17, "lang": "zh"},
    policy={"verdict": "allow", "matched": 0},
    latency_ms=1234.56789,
    images=({"watermark_id": "0123456789abcdef", "format": "png", "bytes": 123456},),
    http={"method": "POST", "path": "/v1/images/generations", "status": 200},
)
BODY_1 = (
    '{"auth_method":"token","client":"10.0.0.7","code":"ok",'
    '"detail":{"attempt":1,"cached":false,"decisions":"auth.ok,policy.ok","note":null,"ratio":0.5},'
    '"event_id":"00000000000000000000000000000001",'
    '"generation":{"height":1024,"seed":42,"steps":8,"width":1024},'
    '"http":{"method":"POST","path":"/v1/images/generations","status":200},'
    '"images":[{"bytes":123456,"format":"png","watermark_id":"0123456789abcdef"}],'
    '"latency_ms":1234.568,"listener":"api",'
    '"manifest":"abababababababababababababababababababababababababababababababab",'
    '"model":"Z-Image-Turbo","outcome":"done","policy":{"matched":0,"verdict":"allow"},"principal":"张三",'
    '"prompt":{"chars":17,"fingerprint":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","lang":"zh"},'
    '"request_id":"req-0001","roles":["operator","auditor"],"seq":1,"time":"2026-11-18T11:06:40.123Z",'
    '"time_ms":1795000000123,"type":"generation.completed","v":1}'
)
HASH_1 = "67281ab19fb4f1ef5c4d1988b1172786e8909064fcb9354c922c95f66f9a83b7"

# Every optional field left unset: each is still present, as null or empty.
EVENT_2 = AuditEvent(type="auth.denied", outcome="denied", time=0.0)
BODY_2 = (
    '{"auth_method":null,"client":null,"code":null,"detail":{},"event_id":"00000000000000000000000000000002",'
    '"generation":null,"http":null,"images":[],"latency_ms":null,"listener":null,"manifest":null,"model":null,'
    '"outcome":"denied","policy":null,"principal":null,"prompt":null,"request_id":null,"roles":[],"seq":2,'
    '"time":"2026-11-18T11:06:40.456Z","time_ms":1795000000456,"type":"auth.denied","v":1}'
)
HASH_2 = "f9de936accc53acf7c0b46ae3705e69b0140e76685db93cb1e292e3d9ecb0c64"

# The checkpoint over seq 2, signed at TIME_MS_3.
CHECKPOINT_MESSAGE = (
    b"zguard-audit-checkpoint-v1\n2\nf9de936accc53acf7c0b46ae3705e69b0140e76685db93cb1e292e3d9ecb0c64\n1795000001000"
)
CHECKPOINT_SIGNATURE = (
    "fef55da91ab72b7663e2e01847b810ce58fefe8e5951cfc777db6fdb5390ced6"
    "24ac985287858203920af827661783eec79086dfd499c50aefc50ed1b2769207"
)
# The checkpoint event as the store writes it (seq 3), and the chain hash after it.
BODY_3 = (
    '{"auth_method":null,"client":null,"code":null,'
    '"detail":{"covers_seq":2,"head_hash":"f9de936accc53acf7c0b46ae3705e69b0140e76685db93cb1e292e3d9ecb0c64",'
    '"key_id":"56475aa75463474c","signature":"' + CHECKPOINT_SIGNATURE + '","signed_ms":1795000001000},'
    '"event_id":"00000000000000000000000000000003","generation":null,"http":null,"images":[],'
    '"latency_ms":null,"listener":null,"manifest":null,"model":null,"outcome":"done","policy":null,'
    '"principal":"zguard","prompt":null,"request_id":null,"roles":[],"seq":3,'
    '"time":"2026-11-18T11:06:41.000Z","time_ms":1795000001000,"type":"audit.checkpoint","v":1}'
)
HASH_3 = "f65121880913fc4152ba7d5d090fd6370cc06294aa531faf76a042a0e264f205"


def body(event: AuditEvent, seq: int, time_ms: int) -> str:
    return canonical(event_body(event, seq=seq, event_id=f"{seq:032x}", time_ms=time_ms))


def test_constants() -> None:
    assert GENESIS == "0" * 64
    assert BODY_VERSION == 1
    assert CHECKPOINT_TYPE == "audit.checkpoint"
    assert SIGNATURE_CONTEXT == b"zguard-audit-checkpoint-v1"
    assert KEY_ID_HEX == 16


def test_iso_ms_is_utc_with_three_digit_milliseconds() -> None:
    assert iso_ms(TIME_MS_1) == "2026-11-18T11:06:40.123Z"
    assert iso_ms(1_795_000_000_007) == "2026-11-18T11:06:40.007Z"
    assert iso_ms(TIME_MS_3) == "2026-11-18T11:06:41.000Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"


def test_full_event_body() -> None:
    text = body(EVENT_1, 1, TIME_MS_1)
    assert text == BODY_1
    # What the format is: compact JSON, keys sorted, UTF-8 (not \\u escapes), latency to 3 decimals.
    assert text == json.dumps(json.loads(BODY_1), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert '"principal":"张三"' in text
    assert '"latency_ms":1234.568,' in text
    assert text.encode() == BODY_1.encode("utf-8")


def test_empty_event_body_keeps_every_field() -> None:
    assert body(EVENT_2, 2, TIME_MS_2) == BODY_2
    assert json.loads(BODY_2).keys() == json.loads(BODY_1).keys()
    assert len(json.loads(BODY_1)) == 23


def test_chain_hash_is_sha256_over_prev_newline_body() -> None:
    assert chain_hash(GENESIS, BODY_1) == HASH_1
    assert chain_hash(HASH_1, BODY_2) == HASH_2
    assert hashlib.sha256(("0" * 64 + "\n" + BODY_1).encode("utf-8")).hexdigest() == HASH_1
    assert hashlib.sha256((HASH_1 + "\n" + BODY_2).encode("utf-8")).hexdigest() == HASH_2


def test_two_event_chain_from_genesis() -> None:
    head = GENESIS
    for seq, (event, time_ms) in enumerate(((EVENT_1, TIME_MS_1), (EVENT_2, TIME_MS_2)), start=1):
        head = chain_hash(head, body(event, seq, time_ms))
    assert head == HASH_2


def test_canonical_escapes_everything_when_a_lone_surrogate_is_present() -> None:
    assert canonical({"b": "é", "a": "x"}) == '{"a":"x","b":"é"}'
    assert canonical({"b": "é", "a": "x\ud800y"}) == '{"a":"x\\ud800y","b":"\\u00e9"}'


def test_canonical_writes_tuples_and_sets_as_lists() -> None:
    assert canonical({"t": (1, 2), "s": frozenset({"z"}), "m": {"k": 1.25}}) == '{"m":{"k":1.25},"s":["z"],"t":[1,2]}'


def test_key_id_is_sha256_of_the_raw_public_key_cut_to_16_hex() -> None:
    raw = PRIVATE_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw.hex() == PUBLIC_KEY_RAW
    assert key_id(PRIVATE_KEY.public_key()) == KEY_ID
    assert hashlib.sha256(bytes.fromhex(PUBLIC_KEY_RAW)).hexdigest()[:16] == KEY_ID


def test_checkpoint_message_bytes() -> None:
    message = checkpoint_message(2, HASH_2, TIME_MS_3)
    assert message == CHECKPOINT_MESSAGE
    assert message == b"\n".join([b"zguard-audit-checkpoint-v1", b"2", HASH_2.encode(), b"1795000001000"])


def test_checkpoint_detail_and_signature() -> None:
    signer = CheckpointSigner(PRIVATE_KEY)
    assert signer.key_id == KEY_ID
    detail = signer.detail(2, HASH_2, TIME_MS_3)
    assert detail == {
        "covers_seq": 2,
        "head_hash": HASH_2,
        "signed_ms": TIME_MS_3,
        "key_id": KEY_ID,
        "signature": CHECKPOINT_SIGNATURE,
    }
    assert PRIVATE_KEY.sign(CHECKPOINT_MESSAGE).hex() == CHECKPOINT_SIGNATURE
    # The literal signature verifies with the public key alone, over the literal message.
    PRIVATE_KEY.public_key().verify(bytes.fromhex(CHECKPOINT_SIGNATURE), CHECKPOINT_MESSAGE)
    assert checkpoint_valid(PRIVATE_KEY.public_key(), detail)


def test_checkpoint_event_extends_the_chain() -> None:
    signer = CheckpointSigner(PRIVATE_KEY)
    event = AuditEvent(
        type=CHECKPOINT_TYPE,
        outcome="done",
        principal="zguard",
        detail=signer.detail(2, HASH_2, TIME_MS_3),
        time=TIME_MS_3 / 1000,
    )
    text = body(event, 3, TIME_MS_3)
    assert text == BODY_3
    assert chain_hash(HASH_2, text) == HASH_3
    assert hashlib.sha256((HASH_2 + "\n" + BODY_3).encode()).hexdigest() == HASH_3
