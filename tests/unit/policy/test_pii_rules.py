"""The exact rules behind the personal-data detectors, pinned one by one.

Each expected value is computed here independently of `zguard.policy.pii`: the ISO 7064 MOD 11-2
weights from their definition (2^k mod 11), the province codes from GB/T 2260, Luhn from its
textbook form. A changed weight, a province code lost or added, or a shifted length bound fails.
"""

from __future__ import annotations

import datetime

import pytest

from zguard.policy import pii
from zguard.policy.pii import BANK_CARD, EMAIL, MOBILE, RESIDENT_ID, find_pii, luhn_valid, resident_id_valid
from zguard.security.detectors import DEFAULT_ACTIONS, DETECTORS, TERMS

TODAY = datetime.date(2025, 6, 1)

# GB/T 2260 first two digits: the 31 mainland provinces, autonomous regions and municipalities,
# Taiwan (71), Hong Kong (81), Macau (82) and 83 (residence permits for Hong Kong, Macau, Taiwan).
PROVINCES = {
    *range(11, 16),
    *range(21, 24),
    *range(31, 38),
    *range(41, 47),
    *range(50, 55),
    *range(61, 66),
    71,
    81,
    82,
    83,
}

# Every digit of this body is non-zero, so a change to any one of the 17 weights changes the sum.
BODY = "11" + "2345" + "19881127" + "123"


def weight(position: int) -> int:
    """ISO 7064 MOD 11-2: the character at `position` (0-based, 17 before the check) weighs 2^(17-position) mod 11."""
    return pow(2, 17 - position, 11)


def check_character(first17: str) -> str:
    """The character that makes the weighted sum of all 18 (check weight 1, X = 10) equal 1 mod 11."""
    value = (12 - sum(int(d) * weight(i) for i, d in enumerate(first17)) % 11) % 11
    return "X" if value == 10 else str(value)


def resident_id(first17: str) -> str:
    return first17 + check_character(first17)


def luhn_check_digit(payload: str) -> str:
    """Textbook Luhn: double every second digit from the right of the full number, digits summed."""
    total = 0
    for index, char in enumerate(reversed(payload)):
        doubled = int(char) * 2 if index % 2 == 0 else int(char)  # the check digit will take index 0
        total += sum(int(c) for c in str(doubled))
    return str((10 - total % 10) % 10)


def card(length: int) -> str:
    """A Luhn-valid number of `length` digits starting with 9: no province, no mobile prefix."""
    payload = ("9876543210" * 2)[: length - 1]
    return payload + luhn_check_digit(payload)


def detected(text: str) -> list[tuple[str, str]]:
    return [(m.detector, text[m.start : m.end]) for m in find_pii(text, lambda: TODAY)]


# --- detector names ---------------------------------------------------------------------------


def test_detector_names_are_the_ones_policy_actions_are_set_for() -> None:
    """`policy.actions` in the settings and the audit record name detectors by these strings."""
    assert (RESIDENT_ID, BANK_CARD, MOBILE, EMAIL) == ("resident_id", "bank_card", "mobile", "email")
    assert (TERMS, RESIDENT_ID, BANK_CARD, MOBILE, EMAIL) == DETECTORS
    assert set(DEFAULT_ACTIONS) == set(DETECTORS)
    text = f"id {resident_id(BODY)} card {card(16)} phone 13800138000 mail a@b.cn"
    assert [m.detector for m in find_pii(text, lambda: TODAY)] == ["resident_id", "bank_card", "mobile", "email"]


# --- resident ID: check character ---------------------------------------------------------------


def test_the_weights_are_the_iso_7064_ones() -> None:
    assert [weight(i) for i in range(17)] == [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


def test_an_id_whose_every_digit_counts_is_accepted_with_its_check_character_only() -> None:
    valid = resident_id(BODY)
    assert resident_id_valid(valid, TODAY)
    for other in "0123456789X":
        if other != valid[17]:
            assert not resident_id_valid(BODY + other, TODAY), other


@pytest.mark.parametrize("position", range(17))
def test_each_weight_counts(position: int) -> None:
    """Only digit `position` differs from BODY; the check character moves by that digit times its weight."""
    for digit in "123456789":
        first17 = BODY[:position] + digit + BODY[position + 1 :]
        number = resident_id(first17)
        if int(number[:2]) not in PROVINCES:
            continue
        try:
            born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
        except ValueError:
            continue
        if not datetime.date(1900, 1, 1) <= born <= TODAY:
            continue
        assert resident_id_valid(number, TODAY), number
        # The check character of the unchanged body no longer fits once the digit changed.
        if digit != BODY[position]:
            assert not resident_id_valid(first17 + check_character(BODY), TODAY), number


def test_every_check_character_occurs_and_only_the_right_one_is_accepted() -> None:
    seen = set()
    for sequence in range(200):
        first17 = "110105" + "19491231" + f"{sequence:03d}"
        right = check_character(first17)
        seen.add(right)
        for candidate in "0123456789X":
            assert resident_id_valid(first17 + candidate, TODAY) == (candidate == right), first17 + candidate
    assert seen == set("0123456789X")


def test_the_check_x_is_accepted_in_either_case_and_found_in_either_case() -> None:
    number = resident_id("11010519491231002")
    assert number.endswith("X")
    assert resident_id_valid(number, TODAY)
    assert resident_id_valid(number.lower(), TODAY)
    assert detected(f"号码{number.lower()}。") == [(RESIDENT_ID, number.lower())]
    assert detected(f"号码{number[:17]} x") == [(RESIDENT_ID, f"{number[:17]} x")]


def test_shape_of_a_resident_id() -> None:
    number = resident_id(BODY)
    assert not resident_id_valid(number[:17], TODAY)  # 17 characters
    assert not resident_id_valid(number + "1", TODAY)  # 19 characters
    assert not resident_id_valid(BODY[:16] + "X" + "1", TODAY)  # a letter before the check
    assert not resident_id_valid(BODY[:16] + "XX", TODAY)
    assert not resident_id_valid(BODY + "Y", TODAY)
    assert not resident_id_valid("", TODAY)


# --- resident ID: province --------------------------------------------------------------------


def test_the_province_list_is_gb_t_2260() -> None:
    assert len(PROVINCES) == 35
    assert pii._PROVINCES == PROVINCES


@pytest.mark.parametrize("code", range(100))
def test_every_two_digit_prefix_is_accepted_exactly_when_it_is_a_province(code: int) -> None:
    number = resident_id(f"{code:02d}0105" + "19491231" + "002")
    assert resident_id_valid(number, TODAY) == (code in PROVINCES)
    assert (detected(f"证件{number}") == [(RESIDENT_ID, number)]) == (code in PROVINCES)


# --- resident ID: birth date ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("born", "valid"),
    [
        ("19000101", True),  # the first day accepted
        ("18991231", False),
        ("19000100", False),
        ("19000001", False),
        ("20000229", True),  # a leap day
        ("19000229", False),  # 1900 was no leap year
        ("19491232", False),
        ("19491301", False),
        (TODAY.strftime("%Y%m%d"), True),  # born today
        ((TODAY + datetime.timedelta(days=1)).strftime("%Y%m%d"), False),
    ],
)
def test_birth_date_between_1900_and_today(born: str, valid: bool) -> None:
    number = resident_id("110105" + born + "002")
    assert resident_id_valid(number, TODAY) == valid


def test_the_birth_date_fields_are_read_from_their_own_positions() -> None:
    # Year 1990, month 03, day 07: any other reading of the digits is no date or a different one.
    number = resident_id("440304" + "19900307" + "123")
    assert resident_id_valid(number, datetime.date(1990, 3, 7))
    assert not resident_id_valid(number, datetime.date(1990, 3, 6))


# --- Luhn -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    ["79927398713", "4111111111111111", "5555555555554444", "378282246310005", "6011111111111117", "0", "18", "42"],
)
def test_known_luhn_numbers(number: str) -> None:
    assert luhn_valid(number)
    for position in range(len(number)):
        for digit in "0123456789":
            if digit != number[position]:
                changed = number[:position] + digit + number[position + 1 :]
                assert not luhn_valid(changed), changed


@pytest.mark.parametrize("digit", "0123456789")
def test_luhn_doubles_every_second_digit_from_the_right(digit: str) -> None:
    for prefix in ("", "7", "31"):
        payload = prefix + digit
        assert luhn_valid(payload + luhn_check_digit(payload))
        payload = prefix + digit + "0"
        assert luhn_valid(payload + luhn_check_digit(payload))


# --- bank card length -------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(11, 21))
def test_a_card_number_has_13_to_19_digits(length: int) -> None:
    number = card(length)
    assert len(number) == length
    assert luhn_valid(number)
    expected = [(BANK_CARD, number)] if 13 <= length <= 19 else []
    assert detected(f"卡号{number}") == expected


def test_the_classifier_itself_bounds_a_card_at_19_digits() -> None:
    # find_pii never tries a window over 19 digits, so this pins the classifier's own rule.
    assert pii._classify(card(19), TODAY) == BANK_CARD
    assert pii._classify(card(20), TODAY) is None
    assert pii._classify(card(13), TODAY) == BANK_CARD
    assert pii._classify(card(12), TODAY) is None
    assert pii._classify(card(13)[:-1] + "X", TODAY) is None


def test_a_card_is_found_in_groups_with_at_most_two_separators_between() -> None:
    number = card(16)
    groups = [number[i : i + 4] for i in range(0, 16, 4)]
    assert detected("  ".join(groups)) == [(BANK_CARD, "  ".join(groups))]
    assert detected(" - ".join(groups)) == []  # three separators: four short numbers
    assert detected("\u3000".join(groups)) == [(BANK_CARD, "\u3000".join(groups))]


# --- mobile numbers and ordering ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10012345678", []),  # 10x and 12x are no mobile ranges
        ("12012345678", []),
        ("13000000000", [(MOBILE, "13000000000")]),
        ("13800000000", [(MOBILE, "13800000000")]),
        ("19912345678", [(MOBILE, "19912345678")]),
        ("8619912345678", [(MOBILE, "8619912345678")]),
        ("1380013800", []),  # ten digits
    ],
)
def test_mobile_numbers(text: str, expected: list[tuple[str, str]]) -> None:
    assert detected(text) == expected


def test_matches_come_back_in_text_order_and_each_is_found_once() -> None:
    number = resident_id(BODY)
    text = f"mail a@b.cn, card {card(16)}, id {number}, phone 13800138000, again x@y.org"
    assert detected(text) == [
        (EMAIL, "a@b.cn"),
        (BANK_CARD, card(16)),
        (RESIDENT_ID, number),
        (MOBILE, "13800138000"),
        (EMAIL, "x@y.org"),
    ]


def test_two_numbers_next_to_each_other_are_two_matches() -> None:
    first, second = card(16), card(13)
    assert detected(f"{first} {second}") == [(BANK_CARD, first), (BANK_CARD, second)]
