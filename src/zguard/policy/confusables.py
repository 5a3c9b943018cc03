"""Look-alike characters folded to the letter they imitate, from Unicode's own data.

`CONFUSABLES` is the one-to-one part of UTS #39 `confusables.txt` (data/confusables.txt: its
source, version and the rule of what was kept are in its header): Cyrillic, Greek, Armenian,
Cherokee, Lisu, Coptic, IPA and other letters that look like a basic Latin letter, and kana and
radicals that look like an ideograph (エ → 工). A few case-aware corrections stay written here
(`_PAIRS`, `_GREEK`, `_LATIN`) and win over the data: UTS #39 maps by shape to one prototype and
sometimes to a digit, while a lower-case Greek eta must read n, not the digit-like skeleton.
Folding happens only in the matching copy of a prompt (zguard.policy.normalise); the model always
gets the text as written.

Applied before NFKC (which would turn the lunate sigma `ϲ`, a look-alike of c, into `σ`), after it
(full-width, mathematical and circled letters become plain ones first) and after case folding: an
upper-case Greek eta looks like H while a lower-case one looks like n, so the mapping must see the
case the writer chose. Digits (0/o, 1/l) are not folded: a bank's
prompts are full of numbers, and folding them would turn amounts and dates into words.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

DATA_FILE = "data/confusables.txt"  # package data of zguard.policy

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


def parse_confusables(text: str) -> dict[str, str]:
    """`SOURCE ; TARGET # comment` lines (hex code points) → {source: target}."""
    table: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        source, _, target = (part.strip() for part in line.partition(";"))
        try:
            table[chr(int(source, 16))] = chr(int(target, 16))
        except ValueError:
            raise ValueError(f"{DATA_FILE}:{number}: not 'SOURCE ; TARGET' in hex") from None
    return table


def _build() -> Mapping[str, str]:
    table = parse_confusables((resources.files("zguard.policy") / DATA_FILE).read_text(encoding="utf-8"))
    corrections: dict[str, str] = {}
    for group in (_PAIRS, _GREEK, _LATIN):
        for latin, lookalikes in group.items():
            for char in lookalikes:
                if char in corrections:
                    raise ValueError(f"look-alike {char!r} is listed twice")
                corrections[char] = latin
    return MappingProxyType({**table, **corrections})


CONFUSABLES: Mapping[str, str] = _build()
