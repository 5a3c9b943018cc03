"""`PromptPolicy`: banned terms and personal data in a prompt, decided per role. Pure: no I/O.

Terms, their pinyin forms and the allow-listed phrases are keys of one Aho-Corasick automaton
over normalised text, so a check costs time in the prompt's length, not the list's. Positions
are worked out only when something matched.

Latin-script keys match whole words only: `nda` does not match inside `calendar`, and `secret`
not inside `secretary`, while `c o n f i d e n t i a l` and `customer-lists` still match (a
plural `s`/`es` may follow). Identifiers are words too: a change from lower to upper case
(`#TopSecretProject`, `ConfidentialReport.pdf`, `CustomerListExport`), from letters to digits,
`_` and `.` end a word, and a term of eight letters or more matches inside a run of capitals
(`TOPSECRETFILES`) unless the run goes on with a common suffix (`CONFIDENTIALITY`). Between the
words of a phrase, sentence punctuation (`,` `.` `;` `:` `!` `?`, their full-width forms and line
breaks) ends the phrase (`promo code, name` is no `code name`), except between single letters
(`c.u.s.t.o.m.e.r l.i.s.t`).

Chinese keys are found anywhere in the character stream and then asked of a word segmenter
(zguard.policy.segment): a match that a dictionary word cuts through (取款机 + 密码 for 机密) is
dropped, unless the term is marked `[anywhere]` or an invisible character sits inside the match
(取款机\u200b密码 is written to hide 机密). Known false positives the segmenter keeps go on the
allow-list.
"""

from __future__ import annotations

import datetime
import itertools
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType

import ahocorasick

from zguard.policy.normalise import Normaliser, default_normaliser
from zguard.policy.pii import find_pii
from zguard.policy.segment import Segmenter, default_segmenter, is_cjk
from zguard.policy.terms import Term
from zguard.policy.verdict import PII_CATEGORY, Finding, Verdict, term_id
from zguard.security.detectors import DEFAULT_ACTIONS, DETECTORS, TERMS, Action

MIXED_PINYIN_MAX_CHARS = 4  # longer terms match their full pinyin only: 2**n mixtures grow fast
CAPS_MIN_CHARS = 8  # terms this long match inside a run of capitals (`TOPSECRETFILES`)
_INVISIBLE = frozenset(("Cf", "Mn", "Me"))
# Punctuation that ends a phrase between words: `promo code, name` holds no `code name`.
_SENTENCE = frozenset(",.;:!?\n\r\u2028\u2029，。；：！？、．｡")
# What a run of capitals may go on with and still be the same word: CONFIDENTIALITY, SECRETARY.
_CAPS_SUFFIXES = frozenset(
    ("S", "ES", "ED", "ER", "ERS", "ING", "LY", "ITY", "ITIES", "IAL", "IALS", "ARY", "ARIES", "IES", "NESS")
)
_CAPS_PREFIXES = frozenset(("UN", "NON", "RE", "PRE", "SUB", "SEMI", "ANTI"))
_TONE_MARKS = frozenset("\u0300\u0301\u0304\u030c")  # grave, acute, macron, caron: pinyin's four tones
# Entry flags.
WORD_START, WORD_END, ANYWHERE, NEEDS_TONE, CAPS = 1, 2, 4, 8, 16


class PolicyError(ValueError):
    """A policy that cannot be built; the message names the term or setting."""


# Automaton values are plain tuples of strings, ints, bools and None: CPython's cycle collector
# stops tracking such tuples, so a list of 100,000 terms adds nothing to each full collection.
_Entry = tuple[str, str, str, int, tuple[int, ...]]  # term id, category, list entry, flags, word breaks in the key
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


def tone_keys(key: str) -> set[str]:
    """Pinyin with tone numbers (`ji1mi4`, neutral tone `5`) of an all-Chinese normalised term; for
    short terms also each mix of numbered and plain syllables (`ji1mi`)."""
    if not key or not all(_has_cjk(char) for char in key):
        return set()
    from pypinyin import Style, lazy_pinyin  # noqa: PLC0415 - see pinyin_keys

    plain = lazy_pinyin(key, style=Style.NORMAL)
    toned = lazy_pinyin(key, style=Style.TONE3, neutral_tone_with_five=True)
    if len(plain) != len(key) or len(toned) != len(key):  # pragma: no cover - pypinyin gives one per character
        return set()
    if len(key) > MIXED_PINYIN_MAX_CHARS:
        options = [[t, t.replace("v", "u")] for t in toned]
    else:
        options = [
            list(dict.fromkeys([t, t.replace("v", "u"), p, p.replace("v", "u")]))
            for p, t in zip(plain, toned, strict=True)
        ]
    keys = {"".join(parts) for parts in itertools.product(*options)}
    return keys - {"".join(plain), "".join(plain).replace("v", "u")}


def _word_breaks(text: str, normalise: Callable[[str], str]) -> tuple[int, ...]:
    """Offsets in the normalised term where two of its Latin words meet (`customer list` → (8,))."""
    words = [normalise(word) for word in re.split(r"[\W_]+", text)]
    words = [word for word in words if word]
    if len(words) < 2 or not all(_is_word(word) for word in words):
        return ()
    return tuple(itertools.accumulate(len(word) for word in words[:-1]))


class PromptPolicy:
    """Checks prompts against banned terms and the personal-data detectors.

    `actions` maps each detector (zguard.policy.verdict.DETECTORS) to `block` or `flag`;
    `per_role` replaces some of them for principals holding a role (when several of a principal's
    roles set the same detector, `flag` wins: the role was granted on purpose). A finding inside an
    allow-listed phrase is dropped. Duplicate terms keep the first category listed. `segmenter`
    decides Chinese matches (zguard.policy.segment); `word_aware=False` matches Chinese terms
    anywhere, as every term marked `[anywhere]` is.
    """

    def __init__(
        self,
        terms: Iterable[Term],
        *,
        actions: Mapping[str, Action] = DEFAULT_ACTIONS,
        per_role: Mapping[str, Mapping[str, Action]] | None = None,
        allow_phrases: Iterable[str] = (),
        normaliser: Normaliser | None = None,
        segmenter: Segmenter | None = None,
        word_aware: bool = True,
        today: Callable[[], datetime.date] = datetime.date.today,
    ) -> None:
        self._normaliser = normaliser or default_normaliser()
        self._segmenter = (segmenter or default_segmenter()) if word_aware else None
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
        normalise = self._normaliser.normalise
        for term in terms:
            key = normalise(term.text)
            if not key:
                raise PolicyError(f"{term.source}: the term {term.text!r} has no letters or digits")
            if key in keys and keys[key][1] is not None:
                continue  # a duplicate: the first one listed stands
            self.term_count += 1
            identity = term_id(key)
            variants: dict[str, tuple[int, tuple[int, ...]]] = {key: (0, _word_breaks(term.text, normalise))}
            if term.pinyin:
                plain = sorted(pinyin_keys(key))
                for variant in plain:
                    # A name's plain reading (`jimi`) counts only where the prompt wrote its tones.
                    needs_tone = term.name and _is_word(variant) and variant.isalpha()
                    # A mixture (`机mi`) is written on purpose: the segmenter cannot judge a lone character.
                    variants.setdefault(variant, ((NEEDS_TONE if needs_tone else 0) | ANYWHERE, ()))
                for variant in sorted(tone_keys(key)):
                    variants.setdefault(variant, (ANYWHERE, ()))
            for variant, (extra, breaks) in variants.items():
                if variant not in keys or keys[variant][1] is None:
                    flags = extra | (ANYWHERE if term.anywhere else 0)
                    flags |= WORD_START if _is_word(variant[0]) else 0
                    flags |= WORD_END if _is_word(variant[-1]) else 0
                    flags |= CAPS if len(variant) >= CAPS_MIN_CHARS and variant.isascii() and variant.isalpha() else 0
                    entry = (identity, term.category, term.text, flags, breaks)
                    keys[variant] = (len(variant), entry, variant in keys)
        for phrase in allow_phrases:
            key = normalise(phrase)
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
        normalised = ""
        if self._automaton is not None:
            normalised = self._normaliser.normalise(text)
            for end, (length, entry, allow) in self._automaton.iter(normalised):
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
            needed += [i for a, _, entry in hits for cut in entry[4] for i in (a + cut - 1, a + cut)]
            where = self._normaliser.originals(text, needed)
            allowed_spans = [(where[a], where[b - 1] + 1) for a, b in allowed]
            seen: set[str] = set()
            for start, end, (identity, category, listed, flags, breaks) in hits:
                if identity in seen or any(a <= start and end <= b for a, b in allowed):
                    continue
                first, last = where[start], where[end - 1] + 1
                caps = bool(flags & CAPS)
                if (flags & WORD_START and self._word_before(text, first, caps)) or (
                    flags & WORD_END and self._word_after(text, last, caps)
                ):
                    continue
                if flags & (WORD_START | WORD_END) and self._sentence_inside(
                    text, first, last, [(where[start + c - 1], where[start + c]) for c in breaks]
                ):
                    continue
                if flags & NEEDS_TONE and not _has_tone_marks(text[first:last]):
                    continue
                if (
                    self._segmenter is not None
                    and not flags & ANYWHERE
                    and (is_cjk(normalised[start]) or is_cjk(normalised[end - 1]))
                    and self._segmenter.cuts_through(normalised, start, end)
                    and not _hidden_inside(text, first, last)
                ):
                    continue  # last: the cheaper tests above settle most matches first
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

    def _is_word_char(self, char: str) -> bool:
        return _is_word(self._normaliser.fold(char)[:1])

    def _sentence_inside(self, text: str, first: int, last: int, seams: list[tuple[int, int]]) -> bool:
        """Whether sentence punctuation ends the phrase inside a Latin match [first, last): at a
        place two words of the term meet (`client. List`), or anywhere with a space beside it
        (`project code, name`). Letters spaced out one by one (`c.u.s.t.o.m.e.r l.i.s.t`) join.
        `seams` holds, for each place two words of the term meet, the last character of one and the
        first of the next in `text`."""
        span = text[first:last]
        if not _SENTENCE.intersection(span):
            return False
        for at in range(first, last):
            if text[at] in _SENTENCE and (text[at - 1].isspace() or text[at + 1].isspace()):
                left = self._skip_separators(text, at, -1)
                right = self._skip_separators(text, at, 1)
                if left >= first and right < last:
                    seams.append((left, right))
        for left, right in seams:
            if not _SENTENCE.intersection(text[left + 1 : right]):
                continue
            single = not (left > 0 and self._is_word_char(text[left - 1])) and not (
                right + 1 < len(text) and self._is_word_char(text[right + 1])
            )
            if not single:
                return True
        return False

    def _skip_separators(self, text: str, index: int, step: int) -> int:
        """The nearest letter or digit from `index` in direction `step` (-1 or len(text) if none)."""
        while 0 <= index < len(text) and not self._is_word_char(text[index]):
            index += step
        return index

    def _word_before(self, text: str, index: int, caps: bool = False) -> bool:
        at = self._skip_invisible(text, index - 1, -1)
        if at < 0 or not self._is_word_char(text[at]):
            return False
        return not _seam(text[at], text[index]) and not (caps and self._caps_join(text, at, -1))

    def _word_after(self, text: str, index: int, caps: bool = False) -> bool:
        """Whether a word goes on at `index`; a plural `s` or `es` ending there does not count."""
        before = self._skip_invisible(text, index - 1, -1)
        index = self._skip_invisible(text, index, 1)
        if index >= len(text) or not self._is_word_char(text[index]):
            return False
        if before >= 0 and _seam(text[before], text[index]):
            return False
        if caps and self._caps_join(text, index, 1):
            return False
        for suffix in ("s", "es"):
            at = index
            for letter in suffix:
                at = self._skip_invisible(text, at, 1)
                if at >= len(text) or self._normaliser.fold(text[at]) != letter:
                    break
                at += 1
            else:
                ended = self._skip_invisible(text, at, 1)
                if ended >= len(text) or not self._is_word_char(text[ended]) or _seam(text[at - 1], text[ended]):
                    return False
        return True

    def _caps_join(self, text: str, at: int, step: int) -> bool:
        """Whether the run of capitals going on from `at` (in direction `step`) is another word
        rather than a suffix or prefix of the term's: TOPSECRET|FILES, not CONFIDENTIAL|ITY."""
        if not (text[at].isupper() and text[at - step].isupper() if 0 <= at - step < len(text) else False):
            return False
        end = at
        while 0 <= end + step < len(text) and text[end + step].isupper():
            end += step
        run = text[at : end + 1] if step > 0 else text[end : at + 1]
        return run not in (_CAPS_SUFFIXES if step > 0 else _CAPS_PREFIXES)


def _seam(left: str, right: str) -> bool:
    """Whether a word ends between `left` and `right` although both are letters or digits: a
    change from lower to upper case (CamelCase) or between letters and digits."""
    if left.islower() and right.isupper():
        return True
    return left.isdigit() != right.isdigit() and (left.isalpha() or right.isalpha())


def _hidden_inside(text: str, first: int, last: int) -> bool:
    """Whether an invisible character (a format character or a combining mark) sits inside a
    match: nobody writes 取款机\u200b密码 by accident, so the segmenter's reading does not excuse it."""
    return any(unicodedata.category(char) in _INVISIBLE for char in text[first:last])


def _has_tone_marks(text: str) -> bool:
    return any(mark in _TONE_MARKS for mark in unicodedata.normalize("NFD", text))
