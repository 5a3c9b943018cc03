"""What the prompt policy decided, and the part of it that may be written down.

A `Verdict` holds one `Finding` per banned term or piece of personal data found. Findings point
into the text by position and name the list entry by a hash; they never hold prompt text. Only
`Finding.term` (the list entry as written) is sensitive in a weaker sense: it tells a client what
the list contains, so it is shown only when `policy.reveal_terms` is on and never audited.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Literal

from zguard.security.detectors import Action

Outcome = Literal["allowed", "flagged", "blocked"]
PII_CATEGORY = "pii"
AuditValue = str | int | float | bool | None


def term_id(normalised: str) -> str:
    """A stable id of a banned term: the first 16 hex digits of the SHA-256 of its normalised form."""
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Finding:
    field: str  # "prompt" or "negative_prompt"
    detector: str  # one of DETECTORS
    category: str  # the term's category, or "pii"
    start: int  # [start, end) in the field's original text
    end: int
    action: Action
    term_id: str | None = None  # banned terms only
    term: str | None = dataclasses.field(default=None, repr=False)  # the list entry; shown only with reveal_terms

    def as_dict(self, *, reveal_terms: bool = False) -> dict[str, object]:
        shown: dict[str, object] = {
            "field": self.field,
            "detector": self.detector,
            "category": self.category,
            "action": self.action,
            "span": [self.start, self.end],
            "term_id": self.term_id,
        }
        if reveal_terms and self.term is not None:
            shown["term"] = self.term
        return shown


@dataclass(frozen=True)
class Verdict:
    findings: tuple[Finding, ...] = ()

    @property
    def blocked(self) -> bool:
        return any(f.action == "block" for f in self.findings)

    @property
    def allowed(self) -> bool:
        return not self.blocked

    @property
    def outcome(self) -> Outcome:
        if self.blocked:
            return "blocked"
        return "flagged" if self.findings else "allowed"

    @property
    def deciding(self) -> Finding | None:
        """The first blocking finding, else the first flagged one, else None."""
        return next((f for f in self.findings if f.action == "block"), self.findings[0] if self.findings else None)

    def audit_fields(self) -> dict[str, AuditValue]:
        """Safe metadata for the audit trail: outcome, category, detector and term id. Never text."""
        deciding = self.deciding
        return {
            "verdict": self.outcome,
            "category": deciding.category if deciding else None,
            "detector": deciding.detector if deciding else None,
            "term_id": deciding.term_id if deciding else None,
        }

    def as_dict(self, *, reveal_terms: bool = False) -> dict[str, object]:
        """The verdict for people (`zguard policy test`): every finding with its span."""
        return {
            **self.audit_fields(),
            "allowed": self.allowed,
            "findings": [f.as_dict(reveal_terms=reveal_terms) for f in self.findings],
        }
