"""Personal-data detectors: valid and invalid check digits, separators, scripts, non-matches."""

from __future__ import annotations

import datetime

import pytest

from zguard.policy.pii import BANK_CARD, EMAIL, MOBILE, RESIDENT_ID, find_pii, luhn_valid, resident_id_valid

TODAY = datetime.date(2025, 6, 1)
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def with_id_check(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character, computed independently of the detector."""
    remainder = sum(int(d) * w for d, w in zip(first17, WEIGHTS, strict=True)) % 11
    return first17 + "10X98765432"[remainder]


def with_luhn(prefix: str) -> str:
    total = 0
    for index, char in enumerate(reversed(prefix)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return prefix + str((10 - total % 10) % 10)


ID = with_id_check("11010519491231002")  # ends in X
ID2 = with_id_check("44030419900307123")
CARD16 = with_luhn("622202123456789")
CARD19 = with_luhn("621700000012345678")


def detected(text: str) -> list[tuple[str, str]]:
    return [(m.detector, text[m.start : m.end]) for m in find_pii(text, lambda: TODAY)]


def test_known_checksums() -> None:
    assert ID == "11010519491231002X"
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert resident_id_valid(ID, TODAY)
    assert resident_id_valid(ID.lower(), TODAY)  # a lower-case x is accepted


@pytest.mark.parametrize(
    "number",
    [
        ID[:-1] + "5",  # wrong check character
        "99" + ID[2:],  # no such province
        with_id_check("11010519490231002"),  # 31 February 1949
        with_id_check("11010518991231002"),  # born before 1900
        with_id_check("11010520300101002"),  # born in the future
    ],
)
def test_invalid_resident_ids(number: str) -> None:
    assert not resident_id_valid(number, TODAY)
    assert detected(f"身份证号{number}") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"身份证号{ID}，请核对", [(RESIDENT_ID, ID)]),
        (f"ID {ID[:6]} {ID[6:14]} {ID[14:]}", [(RESIDENT_ID, f"{ID[:6]} {ID[6:14]} {ID[14:]}")]),
        (f"证件{ID2}", [(RESIDENT_ID, ID2)]),
        (f"卡号{CARD16}", [(BANK_CARD, CARD16)]),
        ("card 4111 1111 1111 1111 exp 12/28", [(BANK_CARD, "4111 1111 1111 1111")]),
        ("card 4111-1111-1111-1111", [(BANK_CARD, "4111-1111-1111-1111")]),
        ("４１１１ １１１１ １１１１ １１１１", [(BANK_CARD, "４１１１ １１１１ １１１１ １１１１")]),
        ("4111\u200b1111\u200b1111\u200b1111", [(BANK_CARD, "4111\u200b1111\u200b1111\u200b1111")]),
        (f"{CARD19[:6]} {CARD19[6:]}", [(BANK_CARD, f"{CARD19[:6]} {CARD19[6:]}")]),
        ("电话13800138000", [(MOBILE, "13800138000")]),
        ("call +86 138 0013 8000", [(MOBILE, "86 138 0013 8000")]),
        ("0086-139-1234-5678", [(MOBILE, "0086-139-1234-5678")]),
        ("1 3 8 0 0 1 3 8 0 0 0", [(MOBILE, "1 3 8 0 0 1 3 8 0 0 0")]),
        ("联系service@bank.com.cn获取", [(EMAIL, "service@bank.com.cn")]),
        ("write to a.b+c@mail.example.org.", [(EMAIL, "a.b+c@mail.example.org")]),
        ("ｓｅｒｖｉｃｅ＠ｂａｎｋ．ｃｏｍ", [(EMAIL, "ｓｅｒｖｉｃｅ＠ｂａｎｋ．ｃｏｍ")]),
        (f"两张卡 {CARD16} 和 4111111111111111", [(BANK_CARD, CARD16), (BANK_CARD, "4111111111111111")]),
    ],
)
def test_detects(text: str, expected: list[tuple[str, str]]) -> None:
    assert detected(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "12345678901",  # 11 digits but no mobile prefix
        "12800138000",  # 12x is no mobile range
        "订单号 123456789012345678901234",  # 24 digits: no window of whole groups is a card
        "6222 **** **** 1234",  # a masked card number
        "客服热线95588，4006 123 456",
        "2024年第3季度营收增长12.5%，1024x1024",
        "@bank_official on social media",
        "logo@2x",
        "",
    ],
)
def test_does_not_detect(text: str) -> None:
    assert detected(text) == []
