"""Known-answer vectors for the watermark's keyed payload: the MAC, the 112-bit payload, the
convolutional code and the keyed tile layout (not the embedder's pixels, which are floating point).

These vectors pin a persisted format: every image already delivered carries a mark laid out
exactly like this, and `zguard trace` must still read it under the same key. A vector that no
longer matches means the format changed (a different MAC, code, pattern derivation, or numpy
random stream): that needs a new label (`zguard/watermark/v2/...`) and a decoder that still reads
v1 marks, never a quiet edit of the constants here.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import numpy.typing as npt
import pytest

from zguard.provenance.watermark import (
    CELLS,
    ID_BITS,
    MAC_BITS,
    SALTS,
    SYNC_FRACTION,
    TILE,
    Watermarker,
    WatermarkFound,
    conv_encode,
    viterbi,
)

KEY = bytes(range(32))
WATERMARK_ID = 0x0123_4567_89AB_CDEF
SALT = 5

MACS = {  # (salt, id) -> 48-bit MAC
    (0, WATERMARK_ID): 0x64D7_8B67_03A0,
    (5, WATERMARK_ID): 0x49AE_C5FA_BFC4,
    (15, WATERMARK_ID): 0x311E_E700_53DE,
    (0, 0): 0xB260_66F3_4814,
    (15, (1 << 64) - 1): 0x661C_D7C2_09FF,
}
# 64-bit id ‖ 48-bit MAC, most significant bit first: 14 bytes.
PAYLOAD_HEX = "0123456789abcdef49aec5fabfc4"
# Rate 1/2, K = 7 (171, 133 octal), terminated with 6 zeros: 2 × 118 = 236 bits, packed MSB first
# (the last byte padded with 4 zero bits).
CODED_HEX = "0003b28cb64f4e70a540417f45bcbd836d9b41473e23a207bf48f250c700"
# layout(WATERMARK_ID, SALT): signs as int8 and carried coded-bit index as little-endian int16, row-major.
LAYOUT_SIGNS_SHA256 = "a93c2f8fc55427f129f3ec4cfe69bae2241261758dc559f932d03467008d2270"
LAYOUT_CARRIED_SHA256 = "8ac3012c73f5c8efa33b835f3b4fe18c3cddfc7c80978689099a191d86d5baad"
LAYOUT_SIGNS_ROW0 = [-1, 1, -1, -1, 1, -1, 1, 1, -1, 1, 1, -1, -1, -1, -1, 1]
LAYOUT_CARRIED_ROW0 = [16, 176, 38, 59, 90, 146, -1, 27, -1, 226, 31, 178, 85, 66, 126, -1]
# The same for every salt 0..15, signs then carried per salt, into one SHA-256.
ALL_SALTS_LAYOUT_SHA256 = "fd84144d20ed750dc6fad91e47e40b95db46b0a809b3ac076a80d383698ab958"


def bits_of(data: bytes, count: int) -> npt.NDArray[np.uint8]:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:count]


def reference_mac(key: bytes, salt: int, watermark_id: int) -> int:
    message = b"zguard/watermark/v1/mac" + bytes([salt]) + watermark_id.to_bytes(8, "big")
    return int.from_bytes(hmac.new(key, message, hashlib.sha256).digest()[:6], "big")


def reference_conv_encode(bits: list[int]) -> list[int]:
    """The NASA K = 7 code written out: taps of 171 and 133 (octal) over u[t], u[t-1], ..., u[t-6]."""
    taps_a = [1, 1, 1, 1, 0, 0, 1]  # 0o171, u[t] first
    taps_b = [1, 0, 1, 1, 0, 1, 1]  # 0o133
    history = [0] * 7
    out = []
    for bit in [*bits, 0, 0, 0, 0, 0, 0]:
        history = [bit, *history[:-1]]
        out.append(sum(t * h for t, h in zip(taps_a, history, strict=True)) % 2)
        out.append(sum(t * h for t, h in zip(taps_b, history, strict=True)) % 2)
    return out


def reference_layout(
    key: bytes, salt: int, coded: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The keyed pattern written out: numpy's default generator seeded by HMAC-SHA-256(key,
    'zguard/watermark/v1/pattern' ‖ salt); ±1 chips, then a permutation whose first quarter
    synchronises and whose rest carry coded bits 0, 1, ..., 235, 0, 1, ... in turn."""
    seed = hmac.new(key, b"zguard/watermark/v1/pattern" + bytes([salt]), hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(seed, "big"))
    chips = rng.choice(np.array([-1.0, 1.0]), size=(CELLS, CELLS)).reshape(-1)
    order = rng.permutation(CELLS * CELLS)
    n_sync = CELLS * CELLS // SYNC_FRACTION
    carried = np.full(CELLS * CELLS, -1, dtype=np.int64)
    carried[order[n_sync:]] = np.arange(CELLS * CELLS - n_sync) % len(coded)
    signs = chips * np.where(carried < 0, 1.0, 1.0 - 2.0 * coded[np.maximum(carried, 0)])
    return signs.reshape(CELLS, CELLS), carried.reshape(CELLS, CELLS)


def test_constants() -> None:
    assert (TILE, CELLS, SALTS, SYNC_FRACTION) == (128, 64, 16, 4)
    assert (ID_BITS, MAC_BITS) == (64, 48)


@pytest.mark.parametrize(("salt", "watermark_id"), list(MACS))
def test_mac_is_truncated_hmac_sha256_over_label_salt_and_id(salt: int, watermark_id: int) -> None:
    mac = Watermarker(KEY).mac(salt, watermark_id)
    assert mac == MACS[salt, watermark_id]
    assert mac == reference_mac(KEY, salt, watermark_id)


def test_hex_id_is_16_lower_hex_digits() -> None:
    assert WatermarkFound(WATERMARK_ID, SALT, (1.0, 1.0), 9.0).hex_id == "0123456789abcdef"
    assert WatermarkFound(1, 0, (1.0, 1.0), 9.0).hex_id == "0000000000000001"


def test_payload_is_id_then_mac_msb_first() -> None:
    payload = bytes.fromhex(PAYLOAD_HEX)
    assert payload == WATERMARK_ID.to_bytes(8, "big") + MACS[SALT, WATERMARK_ID].to_bytes(6, "big")
    assert len(payload) * 8 == ID_BITS + MAC_BITS == 112


def test_convolutional_code() -> None:
    payload = bits_of(bytes.fromhex(PAYLOAD_HEX), 112)
    coded = conv_encode(payload)
    assert len(coded) == 236
    assert np.packbits(coded).tobytes().hex() == CODED_HEX
    assert coded.tolist() == reference_conv_encode(payload.tolist())
    assert viterbi(1.0 - 2.0 * coded.astype(np.float64)).tolist() == payload.tolist()


def test_layout_of_one_salt() -> None:
    signs, carried = Watermarker(KEY).layout(WATERMARK_ID, SALT)
    assert signs.shape == carried.shape == (CELLS, CELLS)
    assert set(np.unique(signs).tolist()) == {-1.0, 1.0}
    assert int((carried == -1).sum()) == CELLS * CELLS // SYNC_FRACTION
    assert signs[0, :16].astype(int).tolist() == LAYOUT_SIGNS_ROW0
    assert carried[0, :16].tolist() == LAYOUT_CARRIED_ROW0
    assert hashlib.sha256(signs.astype(np.int8).tobytes()).hexdigest() == LAYOUT_SIGNS_SHA256
    assert hashlib.sha256(carried.astype("<i2").tobytes()).hexdigest() == LAYOUT_CARRIED_SHA256


def test_layout_matches_the_written_out_derivation() -> None:
    coded = np.unpackbits(np.frombuffer(bytes.fromhex(CODED_HEX), dtype=np.uint8))[:236]
    signs, carried = Watermarker(KEY).layout(WATERMARK_ID, SALT)
    ref_signs, ref_carried = reference_layout(KEY, SALT, coded)
    assert np.array_equal(signs, ref_signs)
    assert np.array_equal(carried, ref_carried)


def test_layout_of_every_salt() -> None:
    watermarker = Watermarker(KEY)
    digest = hashlib.sha256()
    for salt in range(SALTS):
        signs, carried = watermarker.layout(WATERMARK_ID, salt)
        digest.update(signs.astype(np.int8).tobytes())
        digest.update(carried.astype("<i2").tobytes())
    assert digest.hexdigest() == ALL_SALTS_LAYOUT_SHA256
