"""Personal data in prompt text: Chinese resident ID numbers, bank card numbers, Chinese mobile
numbers and e-mail addresses.

Numbers are found on a *digit stream*, a view of the text of the same length in which:

- every digit-like character becomes its ASCII digit: decimal digits of any script (full-width
  `１３８`, Arabic-Indic, mathematical `𝟏`), circled and parenthesised digits (`①`, `⑴`, `⒈`),
  the Chinese numerals `〇零一二三四五六七八九`, `幺` (1, as read out on the phone) and the
  financial forms `壹贰叁肆伍陆柒捌玖` (traditional `貳參陸` too); `X`, `x`, `Ｘ`, `ｘ` become `X`;
- the characters the term matcher drops as invisible (format characters: zero-width, bidi
  embeddings and isolates U+202A-202E and U+2066-2069, U+180E, tags; combining marks, variation
  selectors, the Hangul fillers) are skipped wherever they are;
- spaces and tabs, line breaks, hyphens and dashes, and the marks people group numbers with
  (`.` `/` `、` `·` `・` `•` `,` `，` `_` `|` `~` `\\` and their full-width forms) are separators
  between digit groups.

Digit groups joined by a *tight* separator (one or two spaces or hyphens: `138 0013 8000`,
`4111-1111-1111-1111`) join whatever their sizes, as typed on forms (`+86 138 ...`). Groups joined
by a *loose* one (a dot, slash or comma, a single line break, three or more spaces, a spaced
hyphen: `139.1075.2846`, `4111 / 1111 / ...`) join only where every group of the window has three
or more digits, or every group has one (`1.3.9.1...`, spelt out): decimals, amounts and lists such
as `15.2、16.8` or `9:00-17:00` do not run together into a number. A blank line, or two marks in
one gap, ends a number.

Every window of whole groups is tried, so `+86 138 0013 8000` and `6222 0212 3456 7890 123` are
found while a 24-digit order number is not cut into a card. Checks keep false positives down: a
resident ID needs a province code, a real birth date and its ISO 7064 MOD 11-2 check character; a
card number needs 13-19 digits and a valid Luhn sum.

E-mail addresses are found with spaces or invisible characters around `@` and the dots
(`name @ bank . com`), and in the bracketed forms people use to dodge address harvesters
(`name [at] bank [dot] com`, `name(at)bank.com`, `（at）`), which report the `email` detector too.
"""

from __future__ import annotations

import datetime
import functools
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

RESIDENT_ID = "resident_id"
BANK_CARD = "bank_card"
MOBILE = "mobile"
EMAIL = "email"

# Chinese numerals read as digits: plain, the phone reading 幺 and the financial (anti-fraud) forms.
_CJK_DIGITS = {
    **dict.fromkeys("〇零", "0"),
    **dict.fromkeys("一壹幺", "1"),
    **dict.fromkeys("二贰貳", "2"),
    **dict.fromkeys("三叁參", "3"),
    **dict.fromkeys("四肆", "4"),
    **dict.fromkeys("五伍", "5"),
    **dict.fromkeys("六陆陸", "6"),
    **dict.fromkeys("七柒", "7"),
    **dict.fromkeys("八捌", "8"),
    **dict.fromkeys("九玖", "9"),
}
_CHECK_X = "XxＸｘ"
_INVISIBLE_LETTERS = "\u115f\u1160\u3164\uffa0\u17b4\u17b5"  # the fillers the term matcher drops too
_LINE_BREAKS = "\n\x0b\x0c\x85\u2028\u2029"  # `\r` counts as a space: `\r\n` is one break
# Not `。`: a full stop ends a sentence, and with it a number; not `*`: it masks digits (6222 **** 1234).
_GROUPING_MARKS = ".,/、·・‧•∙⋅，．／﹐﹒､｡_＿|｜~～\\＼"
_HYPHENS = "-\u2212\ufe58\ufe63\uff0d"
# Stream codes: a digit stays a digit, the check character is X, and these stand for the rest.
_SKIP = "\x01"  # invisible: as if absent
_SPACE = " "
_BREAK = "\n"
_MARK = "."  # a grouping mark
_HYPHEN = "-"  # a hyphen, dash or minus
_RUN = re.compile(r"\d+(?:[ \n.\-]+\d+)*(?:[ \n.\-]*X)?")
_TOKEN = re.compile(r"\d+|X|[ \n.\-]+")
_CARD_FIRST = "3456"  # ISO/IEC 7812 industries of payment cards: required where groups join loosely
_MIN_DIGITS = 11  # the shortest number looked for (a mobile number)
_LONGEST = 19  # digits in the longest number looked for (a card); 0086 + a mobile number is 15

_ALNUM = r"0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"
_SPACES = r"[ \t\u00a0\u3000]{0,3}"
_AT = rf"{_SPACES}[@\uff20]{_SPACES}"
_DOT = r"(?:[.\uff0e\u3002]|[ \t\u00a0\u3000]{1,3}[.\uff0e\u3002][ \t\u00a0\u3000]{1,3})"
_TLD = r"[A-Za-z\uff21-\uff3a\uff41-\uff5a]{2,}"
_EMAIL = re.compile(rf"[{_ALNUM}._%+\-]+{_AT}[{_ALNUM}\-]+(?:{_DOT}[{_ALNUM}\-]+)*{_DOT}{_TLD}")
_OPEN, _CLOSE = r"[\[(（【<{]", r"[\])）】>}]"
_BRACKETED = re.compile(
    rf"[{_ALNUM}._%+\-]+{_SPACES}{_OPEN}{_SPACES}at{_SPACES}{_CLOSE}{_SPACES}[{_ALNUM}\-]+"
    rf"(?:{_SPACES}(?:{_OPEN}{_SPACES}dot{_SPACES}{_CLOSE}|{_DOT}){_SPACES}[{_ALNUM}\-]+)*"
    rf"{_SPACES}(?:{_OPEN}{_SPACES}dot{_SPACES}{_CLOSE}|{_DOT}){_SPACES}{_TLD}",
    re.IGNORECASE,
)
_BRACKETED_AT = re.compile(rf"{_OPEN}{_SPACES}at{_SPACES}{_CLOSE}", re.IGNORECASE)
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


def _stream_code(char: str) -> str | None:
    """What `char` is in the digit stream; None: itself (it ends any number)."""
    if char in _CJK_DIGITS:
        return _CJK_DIGITS[char]
    if char in _CHECK_X:
        return "X"
    digit = unicodedata.digit(char, None)
    if digit is not None:
        return str(digit) if char != str(digit) else None
    if char in _LINE_BREAKS:
        return _BREAK if char != _BREAK else None
    if char in _GROUPING_MARKS:
        return _MARK if char != _MARK else None
    if char in _HYPHENS or unicodedata.category(char) == "Pd":
        return _HYPHEN if char != _HYPHEN else None
    if unicodedata.category(char) in ("Cf", "Mn", "Me") or char in _INVISIBLE_LETTERS:
        return _SKIP
    if unicodedata.category(char) == "Zs" or char in "\t\r":
        return _SPACE if char != _SPACE else None
    return None


@functools.cache
def _stream_table() -> dict[int, str]:
    """`str.translate` table of the digit stream; built on first use (a walk over Unicode)."""
    table: dict[int, str] = {ord(_SKIP): "\x00"}  # a stray control character must not pass as invisible
    planes = (range(0x30000), range(0xE0000, 0xE0200))
    for cp in (cp for plane in planes for cp in plane):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if (code := _stream_code(chr(cp))) is not None:
            table[cp] = code
    return table


def _class(code_points: list[int]) -> str:
    """A regular-expression class of sorted `code_points`, written as ranges (a class of single
    characters is slow to test)."""
    ranges: list[str] = []
    start = previous = code_points[0]
    for cp in [*code_points[1:], -1]:
        if cp != previous + 1:
            ranges.append(re.escape(chr(start)) + (f"-{re.escape(chr(previous))}" if previous != start else ""))
            start = cp
        previous = cp
    return f"[{''.join(ranges)}]"


@functools.cache
def _candidates() -> re.Pattern[str]:
    """Stretches of the raw text that may hold a number: a digit-like character, then any digits,
    separators and invisible characters. Only these are translated into the stream, so a prompt
    costs one pass of this pattern plus the few stretches long enough to be a number."""
    table = _stream_table()
    digits = sorted({*range(0x30, 0x3A), *(cp for cp, code in table.items() if code.isdigit())})
    rest = sorted({*digits, *map(ord, " \n.-X,/"), *(cp for cp, code in table.items() if cp != ord(_SKIP))})
    # The first character is tested at every position: `\d` (decimal digits of every script, a
    # table lookup) plus the few other digit-like characters, which are all in the BMP.
    others = [cp for cp in digits if cp < 0x10000 and unicodedata.decimal(chr(cp), None) is None]
    first = f"(?:\\d|{_class(others)})"
    return re.compile(f"{first}{_class(rest)}{{{_MIN_DIGITS - 1},}}")


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


def _chains(run: str) -> Iterator[list[tuple[int, int, str, bool]]]:
    """The digit groups of one run, (start, end, digits, joined to the previous one tightly), cut
    where a gap ends the number."""
    chain: list[tuple[int, int, str, bool]] = []
    tight = True
    for token in _TOKEN.finditer(run):
        text = token.group()
        if text[0] in " \n.-":
            joined = _gap_kind(text)
            if joined is None:
                if chain:
                    yield chain
                chain = []
                tight = True
            else:
                tight = joined
            continue
        chain.append((token.start(), token.end(), text, tight))
        tight = True
    if chain:
        yield chain


def _gap_kind(gap: str) -> bool | None:
    """True: a tight gap (one or two spaces or hyphens); False: a loose one (a grouping mark, a
    single line break, a spaced hyphen, three or more spaces); None: it ends the number."""
    breaks, marks = gap.count(_BREAK), gap.count(_MARK) + gap.count(_HYPHEN)
    if len(gap) <= 2 and not breaks and _MARK not in gap and (marks < 2 or gap == _HYPHEN * 2):
        return not (marks and _SPACE in gap)
    if breaks > 1 or marks > 1:
        return None
    return False


def _windows(chain: list[tuple[int, int, str, bool]], today: datetime.date) -> Iterator[tuple[str, int, int]]:
    first = 0
    while first < len(chain):
        found = None
        number = ""
        loose = False
        sizes: set[int] = set()
        for last in range(first, len(chain)):
            group = chain[last][2]
            number += group
            if len(number) > _LONGEST:
                break
            if last > first and not chain[last][3]:
                loose = True
            if group != "X":
                sizes.add(min(len(group), 3))
            if loose and sizes not in ({1}, {3}):
                continue  # a decimal or a list, not a number spelt out or written in groups
            detector = _classify(number, today)
            if detector == BANK_CARD and loose and number[0] not in _CARD_FIRST:
                detector = None  # `95588，4006 123 456`: two hotlines, not a card
            if detector:
                found = (detector, last)  # keep going: the longest window wins
        if found is None:
            first += 1
            continue
        detector, last = found
        yield detector, chain[first][0], chain[last][1]
        first = last + 1


def _numbers(text: str, today: datetime.date) -> Iterator[PiiMatch]:
    table = _stream_table()
    for candidate in _candidates().finditer(text):
        stream = candidate.group().translate(table)
        offset = candidate.start()
        where: list[int] | None = None
        if _SKIP in stream:  # invisible characters: match without them, map positions back
            where = [index for index, char in enumerate(stream) if char != _SKIP]
            stream = stream.replace(_SKIP, "")
        for run in _RUN.finditer(stream):
            if len(run.group()) < _MIN_DIGITS:
                continue
            for chain in _chains(run.group()):
                for detector, first, after in _windows(chain, today):
                    start, end = first + run.start(), after + run.start()
                    if where is not None:
                        start, end = where[start], where[end - 1] + 1
                    yield PiiMatch(detector, start + offset, end + offset)


def _emails(text: str) -> Iterator[PiiMatch]:
    if "@" not in text and "\uff20" not in text and _BRACKETED_AT.search(text) is None:
        return
    stream = text.translate(_stream_table())
    if _SKIP in stream:  # `name\u200b@bank.com`: match without the invisible characters
        where = [index for index, char in enumerate(stream) if char != _SKIP]
        view = "".join(text[index] for index in where)
    else:
        where, view = list(range(len(text))), text
    seen: list[tuple[int, int]] = []
    for pattern in (_EMAIL, _BRACKETED):
        for match in pattern.finditer(view):
            start, end = where[match.start()], where[match.end() - 1] + 1
            if not any(a <= start < b or start <= a < end for a, b in seen):
                seen.append((start, end))
                yield PiiMatch(EMAIL, start, end)


def find_pii(text: str, today: Callable[[], datetime.date] = datetime.date.today) -> list[PiiMatch]:
    """Every resident ID, card number, mobile number and e-mail address in `text`, by position."""
    found = list(_numbers(text, today()))
    found.extend(_emails(text))
    return sorted(found, key=lambda match: match.start)
