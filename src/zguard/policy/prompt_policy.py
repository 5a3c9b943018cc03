"""`PromptPolicy`: banned terms and personal data in a prompt, decided per role. Pure: no I/O.

Terms, their pinyin forms and the allow-listed phrases are keys of one Aho-Corasick automaton
over normalised text, so a check costs time in the prompt's length, not the list's. Positions
are worked out only when something matched.

Latin-script keys match whole words only: `nda` does not match inside `calendar`, and `secret`
not inside `secretary`, while `c o n f i d e n t i a l` and `customer-lists` still match (a
plural `s`/`es` may follow). Chinese keys match anywhere, since Chinese has no spaces; known
false positives such as 手机密码 (which contains 机密) go on the allow-list.
"""

from __future__ import annotations

import datetime
import itertools
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType

import ahocorasick

from zguard.policy.normalise import Normaliser, default_normaliser
from zguard.policy.pii import find_pii
from zguard.policy.terms import Term
from zguard.policy.verdict import PII_CATEGORY, Finding, Verdict, term_id
from zguard.security.detectors import DEFAULT_ACTIONS, DETECTORS, TERMS, Action

MIXED_PINYIN_MAX_CHARS = 4  # longer terms match their full pinyin only: 2**n mixtures grow fast
_INVISIBLE = frozenset(("Cf", "Mn", "Me"))


class PolicyError(ValueError):
    """A policy that cannot be built; the message names the term or setting."""


# Automaton values are plain tuples of strings, ints, bools and None: CPython's cycle collector
# stops tracking such tuples, so a list of 100,000 terms adds nothing to each full collection.
_Entry = tuple[str, str, str, bool, bool]  # term id, category, list entry, word boundary before, after
_Key = tuple[int, _Entry | None, bool]  # key length, its term (None: allow-listed only), allow-listed


def _is_word(text: str) -> bool:
    return bool(text) and text.isascii() and text.isalnum()


def _has_cjk(text: str) -> bool:
    return any(unicodedata.category(c) == "Lo" and "CJK" in unicodedata.name(c, "") for c in text)


def pinyin_keys(key: str) -> set[str]:
    """Pinyin spellings of a normalised term: full pinyin (`jimi`) and, for short terms, every mix
    of characters and syllables (`机mi`, `ji密`). `ü` is written `v` or `u`."""
    if not _has_cjk(key):
        return set()
    from pypinyin import Style, lazy_pinyin  # noqa: PLC0415 - 0.2 s of dictionaries: only for lists that use pinyin

    if all(_has_cjk(char) for char in key):
        syllables = lazy_pinyin(key, style=Style.NORMAL)  # the whole term: readings follow the phrase
    else:
        syllables = [lazy_pinyin(char, style=Style.NORMAL)[0] if _has_cjk(char) else char for char in key]
    options: list[list[str]] = []
    for char, syllable in zip(key, syllables, strict=True):
        spellings = [syllable, syllable.replace("v", "u")] if syllable != char else []
        spellings = list(dict.fromkeys(spellings))
        mixed = len(key) <= MIXED_PINYIN_MAX_CHARS
        options.append([*spellings, char] if mixed or not spellings else spellings)
    return {"".join(parts) for parts in itertools.product(*options)} - {key}


class PromptPolicy:
    """Checks prompts against banned terms and the personal-data detectors.

    `actions` maps each detector (zguard.policy.verdict.DETECTORS) to `block` or `flag`;
    `per_role` replaces some of them for principals holding a role (when several of a principal's
    roles set the same detector, `flag` wins: the role was granted on purpose). A finding inside an
    allow-listed phrase is dropped. Duplicate terms keep the first category listed.
    """

    def __init__(
        self,
        terms: Iterable[Term],
        *,
        actions: Mapping[str, Action] = DEFAULT_ACTIONS,
        per_role: Mapping[str, Mapping[str, Action]] | None = None,
        allow_phrases: Iterable[str] = (),
        normaliser: Normaliser | None = None,
        today: Callable[[], datetime.date] = datetime.date.today,
    ) -> None:
        self._normaliser = normaliser or default_normaliser()
        self._today = today
        self._actions = {**DEFAULT_ACTIONS, **actions}
        self._per_role = {role: dict(overrides) for role, overrides in (per_role or {}).items()}
        for where, detectors in [
            ("actions", self._actions),
            *((f"per_role.{r}", o) for r, o in self._per_role.items()),
        ]:
            if unknown := sorted(set(detectors) - set(DETECTORS)):
                raise PolicyError(f"{where}: unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS)}")
        self._by_roles: dict[frozenset[str], Mapping[str, Action]] = {}
        keys: dict[str, _Key] = {}
        self.term_count = 0
        for term in terms:
            key = self._normaliser.normalise(term.text)
            if not key:
                raise PolicyError(f"{term.source}: the term {term.text!r} has no letters or digits")
            if key in keys and keys[key][1] is not None:
                continue  # a duplicate: the first one listed stands
            self.term_count += 1
            identity = term_id(key)
            variants = [key, *sorted(pinyin_keys(key))] if term.pinyin else [key]
            for variant in variants:
                if variant not in keys or keys[variant][1] is None:
                    entry = (identity, term.category, term.text, _is_word(variant[0]), _is_word(variant[-1]))
                    keys[variant] = (len(variant), entry, variant in keys)
        for phrase in allow_phrases:
            key = self._normaliser.normalise(phrase)
            if not key:
                raise PolicyError(f"allow_phrases: {phrase!r} has no letters or digits")
            keys[key] = (len(key), keys[key][1] if key in keys else None, True)
        self.key_count = len(keys)
        self._automaton: ahocorasick.Automaton | None = None
        if keys:
            automaton = ahocorasick.Automaton()
            for key, value in keys.items():
                automaton.add_word(key, value)
            automaton.make_automaton()
            self._automaton = automaton

    def actions_for(self, roles: Collection[str]) -> Mapping[str, Action]:
        """The action of each detector for a principal holding `roles`."""
        group = frozenset(roles)
        if (known := self._by_roles.get(group)) is not None:
            return known
        overrides: dict[str, Action] = {}
        for role in sorted(group & self._per_role.keys()):
            for detector, action in self._per_role[role].items():
                overrides[detector] = "flag" if "flag" in (overrides.get(detector), action) else action
        actions = MappingProxyType({**self._actions, **overrides})
        if len(self._by_roles) < 1024:  # role sets are few; a bound keeps a bug from growing it
            self._by_roles[group] = actions
        return actions

    def check(self, prompt: str | None, negative_prompt: str | None = None, roles: Collection[str] = ()) -> Verdict:
        actions = self.actions_for(roles)
        findings: list[Finding] = []
        for field, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if text:
                findings.extend(self._scan(field, text, actions))
        return Verdict(tuple(findings))

    def _scan(self, field: str, text: str, actions: Mapping[str, Action]) -> list[Finding]:
        hits: list[tuple[int, int, _Entry]] = []
        allowed: list[tuple[int, int]] = []
        if self._automaton is not None:
            for end, (length, entry, allow) in self._automaton.iter(self._normaliser.normalise(text)):
                start = end - length + 1
                if allow:
                    allowed.append((start, end + 1))
                if entry is not None:
                    hits.append((start, end + 1, entry))
        pii = find_pii(text, self._today)
        if not hits and not pii:
            return []
        findings: list[Finding] = []
        allowed_spans: list[tuple[int, int]] = []
        if hits or allowed:
            # Every position the spans below may need, found in one walk (cheaper than a full map).
            needed = [i for a, b in allowed for i in (a, b - 1)] + [i for a, b, _ in hits for i in (a, b - 1)]
            where = self._normaliser.originals(text, needed)
            allowed_spans = [(where[a], where[b - 1] + 1) for a, b in allowed]
            seen: set[str] = set()
            for start, end, (identity, category, listed, word_start, word_end) in hits:
                if identity in seen or any(a <= start and end <= b for a, b in allowed):
                    continue
                first, last = where[start], where[end - 1] + 1
                if (word_start and self._word_before(text, first)) or (word_end and self._word_after(text, last)):
                    continue
                seen.add(identity)
                findings.append(Finding(field, TERMS, category, first, last, actions[TERMS], identity, listed))
        for match in pii:
            if not any(a <= match.start and match.end <= b for a, b in allowed_spans):
                findings.append(
                    Finding(field, match.detector, PII_CATEGORY, match.start, match.end, actions[match.detector])
                )
        return sorted(findings, key=lambda f: f.start)

    def _skip_invisible(self, text: str, index: int, step: int) -> int:
        while 0 <= index < len(text) and unicodedata.category(text[index]) in _INVISIBLE:
            index += step
        return index

    def _word_before(self, text: str, index: int) -> bool:
        index = self._skip_invisible(text, index - 1, -1)
        return index >= 0 and _is_word(self._normaliser.fold(text[index])[-1:])

    def _word_after(self, text: str, index: int) -> bool:
        """Whether a word goes on at `index`; a plural `s` or `es` ending there does not count."""
        index = self._skip_invisible(text, index, 1)
        if index >= len(text) or not _is_word(self._normaliser.fold(text[index])[:1]):
            return False
        for suffix in ("s", "es"):
            at = index
            for letter in suffix:
                at = self._skip_invisible(text, at, 1)
                if at >= len(text) or self._normaliser.fold(text[at]) != letter:
                    break
                at += 1
            else:
                at = self._skip_invisible(text, at, 1)
                if at >= len(text) or not _is_word(self._normaliser.fold(text[at])[:1]):
                    return False
        return True
