"""Personal data on the digit stream: separators, invisible characters, numerals of other scripts,
e-mail spacing and bracketed forms (issue 16), and the decimals, lists and hotlines that must not
run together into a number."""

from __future__ import annotations

import datetime

import pytest

from zguard.policy.pii import BANK_CARD, EMAIL, MOBILE, RESIDENT_ID, find_pii

TODAY = datetime.date(2025, 6, 1)
ID = "11010519491231002X"


def detected(text: str) -> list[tuple[str, str]]:
    return [(m.detector, text[m.start : m.end]) for m in find_pii(text, lambda: TODAY)]


@pytest.mark.parametrize(
    "separator",
    [
        ".",
        "/",
        "、",
        "·",
        "，",
        ",",
        "．",
        "／",
        "・",
        "•",
        "_",
        "|",
        "~",
        "～",
        "\\",
        "   ",
        "\n",
        " - ",
        " / ",
        "\r\n",
    ],
)
def test_numbers_written_in_groups_with_any_grouping_mark(separator: str) -> None:
    mobile = separator.join(["139", "1075", "2846"])
    card = separator.join(["4111", "1111", "1111", "1111"])
    resident = separator.join([ID[:6], ID[6:14], ID[14:]])
    assert detected(f"电话{mobile}") == [(MOBILE, mobile)]
    assert detected(f"卡号 {card} 有效") == [(BANK_CARD, card)]
    assert detected(f"证件 {resident}") == [(RESIDENT_ID, resident)]


@pytest.mark.parametrize(
    "invisible",
    ["\u200b", "\u2066", "\u2067", "\u2068", "\u2069", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u180e",
     "\ufe0f", "\ufe00", "\U000e0041", "\U000e0100", "\u2060", "\u00ad", "\u0301", "\u3164"],
)  # fmt: skip
def test_invisible_characters_between_digits_are_skipped(invisible: str) -> None:
    mobile = invisible.join("13910752846")
    assert detected(f"call {mobile} now") == [(MOBILE, mobile)]
    card = f"4111{invisible}{invisible}{invisible}1111 1111{invisible}1111"
    assert detected(card) == [(BANK_CARD, card)]


@pytest.mark.parametrize(
    "spelt",
    [
        "一三九一零七五二八四六",
        "一三九一〇七五二八四六",
        "幺三九幺洞七五二八四六".replace("洞", "零"),
        "壹叁玖壹零柒伍贰捌肆陆",
        "壹參玖壹零柒伍貳捌肆陸",
        "①③⑨①⓪⑦⑤②⑧④⑥",
        "⑴⑶⑼⑴0⑺⑸⑵⑻⑷⑹",
        "１３９１０７５２８４６",
        "١٣٩١٠٧٥٢٨٤٦",
        "𝟏𝟑𝟗𝟏𝟎𝟕𝟓𝟐𝟖𝟒𝟔",
        "一三九 一零七五 二八四六",
        "139一零七五2846",
    ],
)
def test_digits_of_any_script_and_chinese_numerals(spelt: str) -> None:
    assert detected(f"手机{spelt}。") == [(MOBILE, spelt)]


@pytest.mark.parametrize("check", ["X", "x", "Ｘ", "ｘ"])
def test_the_check_character_in_any_width(check: str) -> None:
    number = ID[:17] + check
    assert detected(f"身份证{number}") == [(RESIDENT_ID, number)]
    spaced = f"{ID[:6]} {ID[6:14]} {ID[14:17]} {check}"
    assert detected(spaced) == [(RESIDENT_ID, spaced)]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("mail name @ bank.com today", "name @ bank.com"),
        ("mail name@ bank . com", "name@ bank . com"),
        ("mail name\u200b@\u200bbank.com", "name\u200b@\u200bbank.com"),
        ("mail name@bank\u2060.\u2060com", "name@bank\u2060.\u2060com"),
        ("联系 name ＠ bank ． cn", "name ＠ bank ． cn"),
        ("write name [at] bank [dot] com", "name [at] bank [dot] com"),
        ("write name(at)bank.com", "name(at)bank.com"),
        ("write name (AT) bank (DOT) com", "name (AT) bank (DOT) com"),
        ("写信 name（at）bank.com.cn", "name（at）bank.com.cn"),
        ("write name【at】bank【dot】cn", "name【at】bank【dot】cn"),
    ],
)
def test_email_with_spaces_invisibles_and_bracketed_forms(text: str, address: str) -> None:
    assert detected(text) == [(EMAIL, address)]


@pytest.mark.parametrize(
    "text",
    [
        "客服热线95588，4006 123 456",  # two hotlines: loosely joined, not a payment card's first digit
        "2020、2021、2022、2023年营业收入",
        "年化收益率15.2、16.8、17.1、18.0、13.5",
        "营业时间 9:00-17:00, 利率 2.15%, 2.35%, 3.6%",
        "金额 1,000,000.00 元，10,000 元起购",
        "一二三四五六七八九十",
        "一年一度，一心一意，一三五开放",
        "编号 139\n\n1075\n\n2846",  # a blank line ends a number
        "139..1075..2846",  # two marks in one gap
        "follow us @bank_official. Thanks",
        "please reply at your convenience (at) the branch",
        "日期 2024.06.01，时间 12.30.45",
    ],
)
def test_decimals_lists_and_prose_are_no_personal_data(text: str) -> None:
    assert detected(text) == []


def test_grouped_numbers_need_even_groups_when_joined_loosely() -> None:
    """`1.3.9...` (spelt out) and `139.1075.2846` (grouped) join; `13.9107.52846` is a list."""
    assert detected("1.3.9.1.0.7.5.2.8.4.6") == [(MOBILE, "1.3.9.1.0.7.5.2.8.4.6")]
    assert detected("13.9107.52846") == []
    assert detected("13 9107 52846") == [(MOBILE, "13 9107 52846")]  # tight gaps join any groups, as before
