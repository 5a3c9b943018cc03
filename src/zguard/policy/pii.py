"""Personal data in prompt text: Chinese resident ID numbers, bank card numbers, Chinese mobile
numbers and e-mail addresses.

Numbers are found as runs of digit groups joined by the separators people type (spaces, hyphens,
dashes, zero-width characters; at most two in a row), in any script's digits (full-width
`１３８` included). Every window of whole groups is tried, so `+86 138 0013 8000` and
`6222 0212 3456 7890 123` are found while a 24-digit order number is not cut into a card.
Checks keep false positives down: a resident ID needs a province code, a real birth date and its
ISO 7064 MOD 11-2 check character; a card number needs 13-19 digits and a valid Luhn sum.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

RESIDENT_ID = "resident_id"
BANK_CARD = "bank_card"
MOBILE = "mobile"
EMAIL = "email"

_SEPARATORS = (
    "[ \t\u00a0\u00ad\u2000-\u200f\u2010-\u2015\u202f\u205f\u2060-\u2064\u2212\u3000\ufeff\ufe58\ufe63\uff0d-]"
)
_RUN = re.compile(rf"\d+(?:{_SEPARATORS}{{1,2}}\d+)*(?:{_SEPARATORS}{{0,2}}[Xx])?")
_GROUP = re.compile(r"\d+|[Xx]")
_ALNUM = r"0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"
_EMAIL = re.compile(
    rf"[{_ALNUM}._%+\-]+[@\uff20][{_ALNUM}\-]+(?:[.\uff0e\u3002][{_ALNUM}\-]+)*"
    r"[.\uff0e\u3002][A-Za-z\uff21-\uff3a\uff41-\uff5a]{2,}"
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# First two digits of a resident ID: the province, autonomous region, municipality or SAR.
_PROVINCES = frozenset(
    {
        11,
        12,
        13,
        14,
        15,
        21,
        22,
        23,
        31,
        32,
        33,
        34,
        35,
        36,
        37,
        41,
        42,
        43,
        44,
        45,
        46,
        50,
        51,
        52,
        53,
        54,
        61,
        62,
        63,
        64,
        65,
        71,
        81,
        82,
        83,
    }
)
_MOBILE = re.compile(r"(?:0086|86)?1[3-9]\d{9}")
_LONGEST = 19  # digits in the longest number looked for (a card); 0086 + a mobile number is 15


@dataclass(frozen=True)
class PiiMatch:
    detector: str
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def resident_id_valid(text: str, today: datetime.date) -> bool:
    """18 characters: province, real birth date (1900 to today), ISO 7064 MOD 11-2 check."""
    if len(text) != 18 or not text[:17].isdigit() or int(text[:2]) not in _PROVINCES:
        return False
    try:
        born = datetime.date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= today:
        return False
    check = _ID_CHECK[sum(int(d) * w for d, w in zip(text[:17], _ID_WEIGHTS, strict=True)) % 11]
    return text[17].upper() == check


def _ascii_digits(group: str) -> str:
    return group.upper() if group in ("x", "X") else "".join(str(unicodedata.decimal(c)) for c in group)


def _classify(number: str, today: datetime.date) -> str | None:
    if resident_id_valid(number, today):
        return RESIDENT_ID
    if not number.isdigit():
        return None
    if _MOBILE.fullmatch(number):
        return MOBILE
    if 13 <= len(number) <= 19 and luhn_valid(number):
        return BANK_CARD
    return None


def _numbers(text: str, today: datetime.date) -> Iterator[PiiMatch]:
    for run in _RUN.finditer(text):
        if len(run.group()) < 11:
            continue
        groups = [
            (m.start() + run.start(), m.end() + run.start(), _ascii_digits(m.group()))
            for m in _GROUP.finditer(run.group())
        ]
        first = 0
        while first < len(groups):
            found = None
            number = ""
            for last in range(first, len(groups)):
                number += groups[last][2]
                if len(number) > _LONGEST:
                    break
                if detector := _classify(number, today):
                    found = (detector, last)  # keep going: the longest window wins
            if found is None:
                first += 1
                continue
            detector, last = found
            yield PiiMatch(detector, groups[first][0], groups[last][1])
            first = last + 1


def find_pii(text: str, today: Callable[[], datetime.date] = datetime.date.today) -> list[PiiMatch]:
    """Every resident ID, card number, mobile number and e-mail address in `text`, by position."""
    found = list(_numbers(text, today()))
    if "@" in text or "\uff20" in text:
        found.extend(PiiMatch(EMAIL, m.start(), m.end()) for m in _EMAIL.finditer(text))
    return sorted(found, key=lambda match: match.start)
