"""`StrangerRefusals`: which refusals of requests nobody authenticated get an audit event each.

Anyone who can reach a listener can make it refuse: a wrong password, a missing token, a path
that does not exist, an address outside the allowlist. One event per refusal let a stranger
grow the trail at will (~1 KB a request, kept 180 days), so these refusals are sampled per
client address, in clock-aligned minutes:

- the first `per_address` refusals of an address on a listener in a minute are recorded as
  usual, one event each, and at most `total` in a minute from all addresses together;
- the rest are counted: one `audit.suppressed` event per address and minute carries the counts
  by error code (and the window), or, past `total`, one per listener with `client` null.

Nothing is lost silently: counts are handed back for writing when their minute ends (the next
refusal, or the caller's timer at `window_end`), and by `drain` at shutdown. Memory is bounded:
an address is tracked only once one of its refusals was recorded, so at most `total` of them,
each with at most `MAX_CODES` counters.

IPv6 clients count per /64, the block one subscriber gets: one host can use all of it.
A client that is no IP address (`unknown (...)`) counts as the address `unknown`.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections import Counter
from collections.abc import Callable

from zguard.audit import AuditEvent, DetailValue
from zguard.audit.chain import iso_ms

SUMMARY_TYPE = "audit.suppressed"
WINDOW_S = 60
PER_ADDRESS = 60
TOTAL = 600
MAX_CODES = 16
UNKNOWN = "unknown"
OTHER = "other"
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def address_key(client: str | None) -> str:
    """What refusals are counted under: the IPv4 address, the IPv6 /64, else `unknown`."""
    try:
        address = ipaddress.ip_address(client or "")
    except ValueError:
        return UNKNOWN
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Tally:
    __slots__ = ("recorded", "suppressed")

    def __init__(self) -> None:
        self.recorded = 0
        self.suppressed: Counter[str] = Counter()


def _count(counter: Counter[str], code: str | None) -> None:
    name = code if code is not None and _CODE.fullmatch(code) else OTHER
    if name not in counter and len(counter) + (OTHER not in counter) >= MAX_CODES:
        name = OTHER  # the last of the MAX_CODES counters is kept for `other`
    counter[name] += 1


class StrangerRefusals:
    """The sampling described in the module docstring; thread-safe. `clock` gives UNIX seconds."""

    def __init__(
        self,
        per_address: int = PER_ADDRESS,
        total: int = TOTAL,
        *,
        window_s: int = WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_address < 1 or total < 1 or window_s < 1:
            raise ValueError("per_address, total and window_s must be at least 1")
        self.per_address = per_address
        self.total = total
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window = self._window_of(clock())
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._overflow: dict[str, Counter[str]] = {}
        self._recorded = 0
        self._pending = 0  # refusals counted and not yet handed back in a summary

    # --- deciding -------------------------------------------------------------------------

    def admit(self, listener: str, client: str | None, code: str | None) -> tuple[bool, list[AuditEvent]]:
        """Whether this refusal gets its own event, and the summaries of a minute that has just
        ended (the caller writes them)."""
        with self._lock:
            ended = self._roll(self._clock())
            key = (listener, address_key(client))
            tally = self._tallies.get(key)
            if tally is not None and tally.recorded >= self.per_address:
                _count(tally.suppressed, code)
                self._pending += 1
                return False, ended
            if self._recorded >= self.total:
                _count(self._overflow.setdefault(listener, Counter()), code)
                self._pending += 1
                return False, ended
            if tally is None:
                tally = self._tallies[key] = _Tally()
            tally.recorded += 1
            self._recorded += 1
            return True, ended

    # --- handing counts back ----------------------------------------------------------------

    @property
    def window_end(self) -> float:
        """When the current minute ends (UNIX seconds)."""
        return (self._window + 1) * self.window_s

    def seconds_left(self) -> float:
        """Seconds until the current minute ends, by this tally's clock."""
        return max(0.0, self.window_end - self._clock())

    @property
    def pending(self) -> int:
        """Refusals counted and not yet handed back in a summary."""
        return self._pending

    @property
    def tracked(self) -> int:
        """Addresses (with their listener) tracked in the current minute: at most `total`."""
        return len(self._tallies)

    def due(self) -> list[AuditEvent]:
        """The summaries of the minute just ended, if it has (else nothing): for a timer."""
        with self._lock:
            return self._roll(self._clock())

    def drain(self) -> list[AuditEvent]:
        """Every count now, the current minute's included: at shutdown."""
        with self._lock:
            events = self._summaries(until=self._clock())
            self._reset(self._window_of(self._clock()))
            return events

    # --- inside -----------------------------------------------------------------------------

    def _window_of(self, now: float) -> int:
        return int(now // self.window_s)

    def _roll(self, now: float) -> list[AuditEvent]:
        window = self._window_of(now)
        if window == self._window:
            return []
        events = self._summaries(until=self.window_end)
        self._reset(window)
        return events

    def _reset(self, window: int) -> None:
        self._window = window
        self._tallies = {}
        self._overflow = {}
        self._recorded = 0
        self._pending = 0

    def _summaries(self, *, until: float) -> list[AuditEvent]:
        start_ms, end_ms = self._window * self.window_s * 1000, int(until * 1000)
        window = (start_ms, end_ms)
        events = [
            self._summary(listener, client, tally.recorded, tally.suppressed, window)
            for (listener, client), tally in self._tallies.items()
            if tally.suppressed
        ]
        events += [self._summary(listener, None, None, counts, window) for listener, counts in self._overflow.items()]
        return events

    def _summary(
        self, listener: str, client: str | None, recorded: int | None, counts: Counter[str], window: tuple[int, int]
    ) -> AuditEvent:
        start_ms, end_ms = window
        detail: dict[str, DetailValue] = {
            "window_start": iso_ms(start_ms),
            "window_end": iso_ms(end_ms),
            "suppressed": sum(counts.values()),
            "recorded": recorded,
            "limit": self.per_address if client is not None else self.total,
            "scope": "address" if client is not None else "all_addresses",
        }
        detail.update({f"code.{code}": n for code, n in sorted(counts.items())})
        return AuditEvent(
            type=SUMMARY_TYPE,
            outcome="denied",
            code="unauthenticated_refusals",
            listener=listener,
            client=client,
            detail=detail,
        )
