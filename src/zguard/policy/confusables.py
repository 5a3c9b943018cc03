"""Cyrillic, Greek and Latin letters that look like a Latin letter, folded to that letter.

Applied before NFKC (which would turn the lunate sigma `ϲ`, a look-alike of c, into `σ`), after it
(full-width, mathematical and circled letters become plain ones first) and after case folding: an
upper-case Greek eta looks like H while a lower-case one looks like n, so the mapping must see the
case the writer chose. Digits (0/o, 1/l) are not folded: a bank's
prompts are full of numbers, and folding them would turn amounts and dates into words.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

_PAIRS = {
    # Cyrillic capitals and small letters
    "a": "Аа",
    "b": "ВвЬ",
    "c": "Сс",
    "d": "ԁ",
    "e": "Ее",
    "h": "НнҺһ",
    "i": "Іі",
    "j": "Јј",
    "k": "Кк",
    "l": "Ӏӏ",
    "m": "Мм",
    "o": "Оо",
    "p": "Рр",
    "q": "Ԛԛ",
    "s": "Ѕѕ",
    "t": "Тт",
    "w": "Ԝԝ",
    "x": "Хх",
    "y": "УуҮү",
}
_GREEK = {
    "a": "Αα",
    "b": "Ββ",
    "c": "ϲϹ",
    "e": "Εε",
    "h": "Η",
    "i": "Ιι",
    "j": "ϳ",
    "k": "Κκ",
    "m": "Μ",
    "n": "Νη",
    "o": "Οοσ",
    "p": "Ρρ",
    "t": "Ττ",
    "u": "υμ",
    "v": "ν",
    "w": "ω",
    "x": "Χχ",
    "y": "Υγ",
    "z": "Ζ",
}
# Latin letters from other alphabets (IPA, small capitals) that read as a basic Latin letter.
_LATIN = {
    "a": "ɑᴀ",
    "b": "ʙ",
    "c": "ᴄ",
    "d": "ᴅ",
    "e": "ᴇ",
    "f": "ꜰ",
    "g": "ɡɢ",
    "h": "ʜ",
    "i": "ıɩɪǀ",
    "j": "ȷᴊ",
    "k": "ᴋ",
    "l": "ʟ",
    "m": "ᴍ",
    "n": "ɴ",
    "o": "ᴏ",
    "p": "ᴘ",
    "r": "ʀ",
    "s": "ꜱ",
    "t": "ᴛ",
    "u": "ᴜ",
    "v": "ᴠ",
    "w": "ᴡ",
    "y": "ʏ",
    "z": "ᴢ",
}


def _build() -> Mapping[str, str]:
    table: dict[str, str] = {}
    for group in (_PAIRS, _GREEK, _LATIN):
        for latin, lookalikes in group.items():
            for char in lookalikes:
                if char in table:
                    raise ValueError(f"look-alike {char!r} is listed twice")
                table[char] = latin
    return MappingProxyType(table)


CONFUSABLES: Mapping[str, str] = _build()
