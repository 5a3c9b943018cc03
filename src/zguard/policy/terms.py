"""Banned-term lists: the file format and its parser.

A list is UTF-8 text, one term per line; blank lines and lines starting with `#` are ignored
(a `#` after a term is part of the term)::

    @category confidential
    机密
    strictly confidential
    customer-data: 客户名单
    内部代号 [pinyin]
    @pinyin on
    客户名单
    @pinyin off
    吉米 [name]
    密级代码 [anywhere]

- `@category NAME` sets the category of the lines after it; before any, the category is the
  file's name without its extension (`bank.txt` → `bank`).
- `NAME: term` sets the category of that line only. Category names are lower-case ASCII letters,
  digits, `-` and `_`, so `Note: x` is the term `Note: x`.
- `term [pinyin]` also matches the term's pinyin: `neibudaihao`, `nei bu dai hao`, `Nèibù dàihào`
  and, for terms of up to four characters, mixtures such as `内部daihao`. `@pinyin on` turns this on
  for the lines after it, `@pinyin off` turns it off again. Only Chinese characters have pinyin.
  Pinyin with tone numbers (`ji1 mi4`, `ji1mi4`) and tone marks (`jī mì`) matches too.
- `term [name]` turns pinyin on for a term whose plain reading is also a common name (`Jimi`,
  `Ji Mi` for 机密): the plain reading alone does not match, while the tone-marked and
  tone-numbered readings (`jī mì`, `ji1 mi4`) and mixtures with characters (`机mi`) do.
- `term [anywhere]`: a Chinese term that matches anywhere in the character stream. Without it a
  Chinese term matches only where a word segmenter (jieba's dictionary) does not cut through its
  first or last character: 机密 matches in 这是机密 and 机密文件 but not in 取款机密码 (取款机 +
  密码) or 飞机密集 (飞机 + 密集). Use it for codes and names the dictionary does not know and that
  must never hide inside a longer word.
- Markers combine: `内部代号 [pinyin] [anywhere]`.
- A term cannot start with `@`.

Terms are matched after normalisation (zguard.policy.normalise), so spacing, punctuation, case and
traditional forms in the list do not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_PREFIX = re.compile(r"([a-z0-9][a-z0-9_-]{0,63})\s*:\s*(.*)")
_MARKERS = ("[pinyin]", "[name]", "[anywhere]")
MAX_TERM_CHARS = 200
BUILTIN = "builtin:"  # a list shipped in zguard/policy/lists (`builtin:bank`), not a file path


class TermListError(ValueError):
    """A list that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Term:
    text: str  # as written in the list, without prefix or marker
    category: str
    pinyin: bool
    source: str  # "file:line", for messages
    name: bool = False  # the plain pinyin reading is a common name: it does not match alone
    anywhere: bool = False  # a Chinese term matched without the word segmenter's say


def default_category(name: str) -> str:
    """`/etc/zguard/bank.txt` and `builtin:bank` → `bank`; a name that is no valid category → `banned`."""
    stem = re.split(r"[/:]", name)[-1].split(".", 1)[0].lower()
    return stem if _CATEGORY.fullmatch(stem) else "banned"


def parse_term_list(text: str, name: str) -> list[Term]:
    """The terms of one list; raise TermListError naming the first bad line."""
    category = default_category(name)
    pinyin = False
    terms = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{name}:{number}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            directive, _, value = line[1:].partition(" ")
            value = value.strip()
            if directive == "category" and _CATEGORY.fullmatch(value):
                category = value
            elif directive == "pinyin" and value in ("on", "off"):
                pinyin = value == "on"
            else:
                raise TermListError(
                    f"{where}: unknown directive {line[:40]!r}; use '@category NAME' (lower-case a-z, 0-9, - and _) "
                    "or '@pinyin on|off'"
                )
            continue
        marked: set[str] = set()
        while marker := next((m for m in _MARKERS if line.endswith(m)), None):
            line = line[: -len(marker)].rstrip()
            marked.add(marker)
        term_pinyin = pinyin or bool(marked & {"[pinyin]", "[name]"})
        term_category = category
        if prefixed := _PREFIX.fullmatch(line):
            term_category, line = prefixed.group(1), prefixed.group(2).strip()
        if not line:
            raise TermListError(f"{where}: a category or marker without a term")
        if len(line) > MAX_TERM_CHARS:
            raise TermListError(f"{where}: a term longer than {MAX_TERM_CHARS} characters")
        terms.append(
            Term(
                text=line,
                category=term_category,
                pinyin=term_pinyin,
                source=where,
                name="[name]" in marked,
                anywhere="[anywhere]" in marked,
            )
        )
    return terms
