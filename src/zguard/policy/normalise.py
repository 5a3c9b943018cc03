"""Text normalisation shared by banned terms and prompts, with a map back to the original text.

Each character is folded on its own, so the result never depends on its neighbours and every
output character can point back at the input character it came from:

1. NFKC: full-width, circled, mathematical and compatibility forms become their plain letter
   (`ｊｉｍｉ` → `jimi`, `㊙` → `秘`).
2. Accents and other combining marks are dropped (`jī mì` → `ji mi`), look-alike Cyrillic, Greek
   and IPA letters become the Latin letter they imitate, and case is folded.
3. Only letters and digits are kept (a symbol that NFKC spells in Latin letters, such as `™` or
   `℡`, is a symbol and dropped): whitespace, punctuation, symbols, format characters
   (zero-width space and joiners, soft hyphen, BOM, bidi controls), private-use and unassigned
   code points and the invisible Hangul fillers are dropped, so `机 密`, `机.密` and `机\\u200b密`
   all read `机密`.
4. Traditional Chinese becomes simplified (OpenCC `t2s`, character by character), and so do the
   Japanese shinjitai forms (単 伝 経 権 厳, through OpenCC `jp2t` first) of characters outside GB
   2312 that `t2s` leaves alone, and the CJK look-alikes of zguard.policy.confusables (戸 → 戶 → 户).
   Folding happens only in this matching copy; the model gets the prompt as written.

`Normaliser.normalise` is the fast path (regular expressions and a lookup table, no per-character
Python for BMP text); `Normaliser.positions` maps an index in its result back to the original
text, also in C for text without ligatures or emoji. `Normaliser.with_positions` is the plain
one-character-at-a-time reference both are tested against.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable

from zguard.policy.confusables import CONFUSABLES

# Letters that render as nothing: Hangul fillers and the Khmer inherent vowels.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u17b4\u17b5")
# Blocks of CJK unified ideographs in the BMP: NFKC and case folding leave them alone, so only
# t2s can change them; they are converted in one OpenCC call instead of one call each.
_CJK_BMP = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF))
# Strides, in kept characters, of the walk `Normaliser.originals` takes: few calls per index.
_STRIDES = (256, 64, 16, 4, 1)
_WALK_LIMIT = 24  # past this many indices the full map (`positions`, all in C) is cheaper than the walk
_TABLE_LIMIT = 300_000  # folds cached per normaliser; an attacker cycling through code points cannot grow it further


def _is_cjk(char: str) -> bool:
    return unicodedata.category(char) == "Lo" and "CJK" in unicodedata.name(char, "")


def _kept(char: str) -> bool:
    return unicodedata.category(char)[0] in "LN" and char not in _INVISIBLE_LETTERS


def _confusable(text: str) -> str:
    return "".join(CONFUSABLES.get(char, char) for char in text)


def fold_char(char: str, t2s: Callable[[str], str]) -> str:
    """What one character becomes: zero, one or a few letters and digits."""
    if unicodedata.category(char)[0] == "S" and unicodedata.normalize("NFKC", char).isascii():
        return ""  # a symbol NFKC spells in letters (™ → TM, ℡ → TEL, ㎏ → kg) is still a symbol: 内部™代号
    text = _confusable(unicodedata.normalize("NFD", unicodedata.normalize("NFKC", _confusable(char))))
    text = _confusable(unicodedata.normalize("NFD", text.casefold()))
    text = unicodedata.normalize("NFC", "".join(c for c in text if _kept(c)))
    if any(_is_cjk(c) for c in text):
        text = t2s(text)
    return text


def _char_class(code_points: list[int]) -> str:
    """A regular-expression class of `code_points` (sorted), written as ranges."""
    parts = []
    start = previous = code_points[0]
    for cp in [*code_points[1:], -1]:
        if cp == previous + 1:
            previous = cp
            continue
        parts.append(
            re.escape(chr(start)) if start == previous else f"{re.escape(chr(start))}-{re.escape(chr(previous))}"
        )
        start = previous = cp
    return "".join(parts)


class _FoldTable(dict[str, str]):
    """Character → fold, computed on first use."""

    def __init__(self, t2s: Callable[[str], str]) -> None:
        super().__init__()
        self._t2s = t2s

    def __missing__(self, char: str) -> str:
        folded = fold_char(char, self._t2s)
        if len(self) < _TABLE_LIMIT:
            self[char] = folded
        return folded


class Normaliser:
    """Folds text as the module docstring describes. Building one takes about a quarter of a
    second (every BMP character is folded once, to compile the fast path); share it."""

    def __init__(self, t2s: Callable[[str], str]) -> None:
        self._table = _FoldTable(t2s)
        dropped: list[int] = []
        changed: list[int] = []
        longer: list[int] = []  # characters that fold to two or more: they shift positions
        cjk = {cp for low, high in _CJK_BMP for cp in range(low, high + 1)}
        ideographs = [chr(cp) for cp in sorted(cjk) if unicodedata.category(chr(cp)) == "Lo"]
        sources = [_confusable(char) for char in ideographs]  # 戸 → 戶 before 戶 → 户
        converted = t2s("\n".join(sources)).split("\n")
        if len(converted) != len(ideographs):  # pragma: no cover - OpenCC kept the separators so far
            converted = [t2s(char) for char in sources]
        for char, simple in zip(ideographs, converted, strict=True):
            self._table[char] = simple
            if simple != char:
                changed.append(ord(char))
        for cp in range(0x10000):
            if cp in cjk or 0xD800 <= cp <= 0xDFFF:
                continue
            char = chr(cp)
            folded = self._table[char]
            if not folded:
                dropped.append(cp)
            elif folded != char:
                changed.append(cp)
                if len(folded) > 1:
                    longer.append(cp)
        # Surrogates cannot reach here (requests are validated first) but must not pass unseen.
        dropped.extend(range(0xD800, 0xE000))
        dropped.sort()
        changed.sort()
        dropped_class = _char_class(dropped)
        # Every astral character takes the table path: one range keeps the class a bitmap lookup.
        changed_class = f"{_char_class(changed)}\U00010000-\U0010ffff"
        self._dropped = re.compile(f"[{dropped_class}]+")
        self._changed = re.compile(f"[{changed_class}]")
        self._dropped_split = re.compile(f"([{dropped_class}]+)")
        self._shifting = re.compile(f"[{_char_class(longer)}\U00010000-\U0010ffff]")
        self._skip_dropped = re.compile(f"[{dropped_class}]*")
        self._strides = [(n, re.compile(f"(?:[{dropped_class}]*[^{dropped_class}]){{{n}}}")) for n in _STRIDES]
        self._ascii = {cp: self._table[chr(cp)] or None for cp in range(128) if self._table[chr(cp)] != chr(cp)}

    def fold(self, char: str) -> str:
        return self._table[char]

    def normalise(self, text: str) -> str:
        if text.isascii():
            return text.translate(self._ascii)
        lookup = self._table.__getitem__
        return self._changed.sub(lambda match: lookup(match.group()), self._dropped.sub("", text))

    def positions(self, text: str) -> PositionMap:
        """Where each character of `normalise(text)` came from in `text`."""
        if self._shifting.search(text) is None:
            # Every character kept folds to exactly one: the normalised text is the stretches between
            # dropped runs, each shifted by what was dropped before it. All of it runs in C.
            lengths = list(map(len, self._dropped_split.split(text)))  # kept, dropped, kept, ...
            starts = [0, *itertools.accumulate(lengths)]
            kept = lengths[0::2]
            return PositionMap([0, *itertools.accumulate(kept)][:-1], starts[0::2], kept)
        # A ligature, an emoji or another character folding to zero or several: one entry each.
        folded = list(map(len, map(self._table.__getitem__, text)))
        return PositionMap([0, *itertools.accumulate(folded)][:-1], list(range(len(text))), [1] * len(text))

    def originals(self, text: str, indices: Iterable[int]) -> dict[int, int]:
        """`positions(text).original(i)` for each of `indices` (each below `len(normalise(text))`).

        A prompt that matched needs a handful of positions; cutting the whole text into pieces for
        them costs more than the match (past `_WALK_LIMIT` indices it does not, and the full map is
        used). Where every character kept folds to exactly one, the
        `i`-th character of the normalised text comes from the `i`-th character kept, so one walk
        over the text up to the last index, a stride of kept characters per call, finds them all.
        """
        wanted = sorted(set(indices))
        if len(wanted) > _WALK_LIMIT or self._shifting.search(text) is not None:
            where = self.positions(text)
            return {index: where.original(index) for index in wanted}
        found: dict[int, int] = {}
        at = walked = 0  # `at` is just past the `walked`-th kept character
        for index in wanted:
            for stride, pattern in self._strides:
                while index - walked >= stride:
                    if (match := pattern.match(text, at)) is None:
                        raise IndexError(f"index {index} is past the normalised text")
                    at, walked = match.end(), walked + stride
            skipped = self._skip_dropped.match(text, at)
            if skipped is None or skipped.end() >= len(text):
                raise IndexError(f"index {index} is past the normalised text")
            found[index] = skipped.end()
        return found

    def with_positions(self, text: str) -> tuple[str, list[int]]:
        """The normalised text and, for each of its characters, the index in `text` it came from;
        one character at a time, the plain reference `positions` is tested against."""
        out: list[str] = []
        positions: list[int] = []
        for index, char in enumerate(text):
            folded = self._table[char]
            out.append(folded)
            positions.extend([index] * len(folded))
        return "".join(out), positions


class PositionMap:
    """Maps an index in a normalised text to the index of the original character it came from.

    The original text is cut into pieces; piece `i` starts at `original[i]`, is `lengths[i]`
    characters long and its fold starts at `folded[i]` in the normalised text. A piece is either a
    stretch of characters that fold to one character each, or a single character folding to any
    number, so within a piece the offset carries over, capped at the piece's last character.
    """

    def __init__(self, folded: list[int], original: list[int], lengths: list[int]) -> None:
        self._folded = folded
        self._original = original
        self._lengths = lengths

    def original(self, index: int) -> int:
        piece = bisect.bisect_right(self._folded, index) - 1
        return self._original[piece] + min(index - self._folded[piece], self._lengths[piece] - 1)


def in_gb2312(char: str) -> bool:
    """Whether `char` is standard simplified Chinese (or another character of GB 2312)."""
    try:
        char.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True


def simplifier(t2s: Callable[[str], str], jp2t: Callable[[str], str]) -> Callable[[str], str]:
    """`t2s`, and for a character `t2s` leaves alone that is not standard simplified Chinese (not in
    GB 2312), `t2s(jp2t(char))`: the Japanese shinjitai 単 and 伝 become 单 and 传, while 予 and 芸,
    which Chinese writes too, stay. Character by character, in two OpenCC calls for any length."""

    def simplify(text: str) -> str:
        simple = t2s(text)
        if len(simple) != len(text):  # pragma: no cover - t2s of characters joined by newlines keeps the count
            return simple
        chars = list(simple)
        todo = [
            i for i, (a, b) in enumerate(zip(text, simple, strict=True)) if a == b and _is_cjk(a) and not in_gb2312(a)
        ]
        if todo:
            japanese = t2s(jp2t("\n".join(text[i] for i in todo))).split("\n")
            if len(japanese) == len(todo):
                for i, char in zip(todo, japanese, strict=True):
                    chars[i] = char
        return "".join(chars)

    return simplify


@functools.cache
def default_normaliser() -> Normaliser:
    """The process's normaliser with OpenCC's `t2s` and `jp2t` configurations, built on first use."""
    import opencc  # noqa: PLC0415 - loads OpenCC's dictionaries: only when a policy is built

    return Normaliser(simplifier(opencc.OpenCC("t2s").convert, opencc.OpenCC("jp2t").convert))
