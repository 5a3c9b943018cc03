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

- `@category NAME` sets the category of the lines after it; before any, the category is the
  file's name without its extension (`bank.txt` → `bank`).
- `NAME: term` sets the category of that line only. Category names are lower-case ASCII letters,
  digits, `-` and `_`, so `Note: x` is the term `Note: x`.
- `term [pinyin]` also matches the term's pinyin: `neibudaihao`, `nei bu dai hao`, `Nèibù dàihào`
  and, for terms of up to four characters, mixtures such as `内部daihao`. `@pinyin on` turns this on
  for the lines after it, `@pinyin off` turns it off again. Only Chinese characters have pinyin.
- A term cannot start with `@`.

Terms are matched after normalisation (zguard.policy.normalise), so spacing, punctuation, case and
traditional forms in the list do not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_PREFIX = re.compile(r"([a-z0-9][a-z0-9_-]{0,63})\s*:\s*(.*)")
_PINYIN_MARK = "[pinyin]"
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
        term_pinyin = pinyin
        if line.endswith(_PINYIN_MARK):
            line = line[: -len(_PINYIN_MARK)].rstrip()
            term_pinyin = True
        term_category = category
        if prefixed := _PREFIX.fullmatch(line):
            term_category, line = prefixed.group(1), prefixed.group(2).strip()
        if not line:
            raise TermListError(f"{where}: a category or marker without a term")
        if len(line) > MAX_TERM_CHARS:
            raise TermListError(f"{where}: a term longer than {MAX_TERM_CHARS} characters")
        terms.append(Term(text=line, category=term_category, pinyin=term_pinyin, source=where))
    return terms
