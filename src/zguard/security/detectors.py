"""The prompt policy's detectors and what each does by default: a security decision, kept pure.

The settings (which detectors `policy.actions` may name) and the policy (`zguard.policy`, which
runs them) both read this one table, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

Action = Literal["block", "flag"]
TERMS = "terms"
# Every detector an action can be set for: banned terms and the four personal-data detectors.
DETECTORS = (TERMS, "resident_id", "bank_card", "mobile", "email")
# Fail closed for a bank: everything blocks except an e-mail address, which posters often carry.
DEFAULT_ACTIONS: Mapping[str, Action] = MappingProxyType(
    {TERMS: "block", "resident_id": "block", "bank_card": "block", "mobile": "block", "email": "flag"}
)
