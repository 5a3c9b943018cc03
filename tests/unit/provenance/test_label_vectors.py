"""Known-answer vectors for the GB 45438-2025 implicit label: pixel hash, signed input, signature,
XMP packet and where the packet goes in PNG and JPEG bytes.

These vectors pin a wire format: every delivered image carries a label made exactly like this,
and `zguard trace` (or anyone holding the public key) must still verify it. A vector that no
longer matches means the format changed: that needs a new `SIGNATURE_CONTEXT` and `zg1:` tag (a
version bump) and a verifier that still accepts v1 labels, never a quiet edit of the constants here.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import struct
import zlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from zguard.provenance import labels
from zguard.provenance.labels import (
    AI_GENERATED,
    FIELDS,
    NAMESPACE,
    SIGNATURE_CONTEXT,
    embed_xmp,
    key_id,
    make_label,
    pixel_hash,
    read_label,
    verify,
    xmp_packet,
)
from zguard.security import keys

PRIVATE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_ID = "56475aa75463474c"

PIXELS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (1, 2, 3)]  # a 2×2 RGB image, row-major
PIXEL_HASH = "6555fb5e594f5a6c36a934028118049c9031d241c27063b60fe2b2c8312e6f78"

SIGNED_BODY = (
    '{"ContentProducer":"某银行 zguard","ContentPropagator":"p","Label":"1","ProduceID":"req-0001",'
    '"PropagateID":"q","ReservedCode2":""}'
)
SIGNED_MESSAGE = (  # the Chinese producer as raw UTF-8, not \\u escapes
    b"zguard/aigc-label/v1\n"
    b'{"ContentProducer":"\xe6\x9f\x90\xe9\x93\xb6\xe8\xa1\x8c zguard","ContentPropagator":"p","Label":"1",'
    b'"ProduceID":"req-0001","PropagateID":"q","ReservedCode2":""}\n'
    b"6555fb5e594f5a6c36a934028118049c9031d241c27063b60fe2b2c8312e6f78"
)
SIGNATURE_B64 = "GMPPMiw7stHIfFeeNyBJEH4bKOXZl4tJUym6GwdrlcrefZ-nR4EjAVg-uSmjkFzaefKJm_fGJx3N23tNabBeCw"
LABEL = {
    "Label": "1",
    "ContentProducer": "某银行 zguard",
    "ProduceID": "req-0001",
    "ReservedCode1": f"zg1:{KEY_ID}:{SIGNATURE_B64}",
    "ContentPropagator": "p",
    "PropagateID": "q",
    "ReservedCode2": "",
}
XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:TC260="http://www.tc260.org.cn/ns/AIGC/1.0/" TC260:AIGC="'
    "{&quot;Label&quot;:&quot;1&quot;,&quot;ContentProducer&quot;:&quot;某银行 zguard&quot;,"
    "&quot;ProduceID&quot;:&quot;req-0001&quot;,"
    f"&quot;ReservedCode1&quot;:&quot;zg1:{KEY_ID}:{SIGNATURE_B64}&quot;,"
    "&quot;ContentPropagator&quot;:&quot;p&quot;,&quot;PropagateID&quot;:&quot;q&quot;,"
    '&quot;ReservedCode2&quot;:&quot;&quot;}"/>'
    "</rdf:RDF></x:xmpmeta>"
    '<?xpacket end="w"?>'
).encode()
XMP_SHA256 = "f43f00d09f3ddbd283baf07e6fa7464bece24d71325eee00da2629ad0797f2a2"
LABELLED_PNG_SHA256 = "7661f77a33098f9146920b88cfaa4afeb77fa3e56c7a7bcf81e1d3a34e8c4a1a"
LABELLED_JPEG_SHA256 = "5af147b46853a4d3cbdd500da5669775f139c9e1f051f46a63a99ac42f7c2e29"


def image() -> Image.Image:
    picture = Image.new("RGB", (2, 2))
    picture.putdata(PIXELS)
    return picture


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


# Hand-built containers (no encoder involved): the label's insertion is plain byte surgery.
BARE_PNG = (
    b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)) + png_chunk(b"IEND", b"")
)
JFIF_APP0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
BARE_JPEG = b"\xff\xd8" + JFIF_APP0 + b"\xff\xd9"


def test_constants() -> None:
    assert SIGNATURE_CONTEXT == b"zguard/aigc-label/v1"
    assert NAMESPACE == "http://www.tc260.org.cn/ns/AIGC/1.0/"
    assert AI_GENERATED == "1"
    assert FIELDS == (
        "Label",
        "ContentProducer",
        "ProduceID",
        "ReservedCode1",
        "ContentPropagator",
        "PropagateID",
        "ReservedCode2",
    )


def test_pixel_hash_is_sha256_over_size_line_and_rgb_bytes() -> None:
    assert pixel_hash(image()) == PIXEL_HASH
    raw = bytes(channel for pixel in PIXELS for channel in pixel)
    assert hashlib.sha256(b"RGB 2x2\n" + raw).hexdigest() == PIXEL_HASH
    assert pixel_hash(image().convert("RGBA")) == PIXEL_HASH  # alpha is not hashed


def test_key_id_matches_the_shared_key_id() -> None:
    assert key_id(PRIVATE_KEY.public_key()) == KEY_ID == keys.key_id(PRIVATE_KEY.public_key())


def test_signed_input_is_context_fields_pixels() -> None:
    signed = {k: LABEL[k] for k in FIELDS if k != "ReservedCode1"}
    assert json.dumps(signed, ensure_ascii=False, sort_keys=True, separators=(",", ":")) == SIGNED_BODY
    assert b"\n".join((SIGNATURE_CONTEXT, SIGNED_BODY.encode("utf-8"), PIXEL_HASH.encode())) == SIGNED_MESSAGE
    assert labels._message(LABEL, PIXEL_HASH) == SIGNED_MESSAGE


def test_make_label_and_signature() -> None:
    label = make_label(
        PRIVATE_KEY, PIXEL_HASH, producer="某银行 zguard", produce_id="req-0001", propagator="p", propagate_id="q"
    )
    assert label == LABEL
    assert list(label) == list(FIELDS)
    signature = PRIVATE_KEY.sign(SIGNED_MESSAGE)
    assert base64.urlsafe_b64encode(signature).decode().rstrip("=") == SIGNATURE_B64
    PRIVATE_KEY.public_key().verify(base64.urlsafe_b64decode(SIGNATURE_B64 + "=="), SIGNED_MESSAGE)


def test_xmp_packet() -> None:
    packet = xmp_packet(LABEL)
    assert packet == XMP
    assert hashlib.sha256(packet).hexdigest() == XMP_SHA256
    value = html.escape(json.dumps(LABEL, ensure_ascii=False, separators=(",", ":")), quote=True)
    assert f'TC260:AIGC="{value}"'.encode() in packet


def test_png_gets_an_itxt_chunk_right_after_ihdr() -> None:
    labelled = embed_xmp(BARE_PNG, "png", XMP)
    ihdr_end = 8 + 8 + 13 + 4
    itxt = png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + XMP)
    assert labelled == BARE_PNG[:ihdr_end] + itxt + BARE_PNG[ihdr_end:]
    assert hashlib.sha256(labelled).hexdigest() == LABELLED_PNG_SHA256


def test_jpeg_gets_an_app1_segment_after_jfif() -> None:
    labelled = embed_xmp(BARE_JPEG, "jpeg", XMP)
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + XMP
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert labelled == b"\xff\xd8" + JFIF_APP0 + app1 + b"\xff\xd9"
    assert hashlib.sha256(labelled).hexdigest() == LABELLED_JPEG_SHA256


def test_a_label_made_earlier_still_verifies() -> None:
    buffer = io.BytesIO()
    image().save(buffer, format="PNG")
    blob = embed_xmp(buffer.getvalue(), "png", XMP)
    opened = Image.open(io.BytesIO(blob))
    assert read_label(opened) == LABEL
    check = verify(opened, PRIVATE_KEY.public_key())
    assert check.valid, check.reason
