"""Which connections a listener keeps: its cap, each client address's cap, and who gives way.

Pure bookkeeping (no sockets, no clock): the protocol layer (zguard.serve.transport) asks
`admit` when a connection opens and reports `busy` / `idle` / `release` as requests come and go.

Rules:
- A client address (the TCP peer) may hold at most `max_per_client` connections; one more is
  refused. Addresses `exempt` says yes to (trusted proxies, which carry many clients) are not
  counted against it.
- The listener holds at most `max_connections`. At the cap, a new connection takes the place of
  the connection that has waited longest without a request in progress (never sent one, is still
  sending its headers, or is kept alive between requests); that one is closed. Only when every
  connection has a request in progress is the new one refused. So sockets held open by someone
  who sends nothing cannot lock legitimate clients out, and a request being served is never cut.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

Conn = TypeVar("Conn", bound=Hashable)
RefusedBecause = Literal["listener_full", "client_full"]


@dataclass(frozen=True)
class Admission(Generic[Conn]):
    """`admitted`, or why not; `evicted`: the connection to close to make room (already released)."""

    admitted: bool
    refused_because: RefusedBecause | None = None
    evicted: Conn | None = None


class ConnectionTable(Generic[Conn]):
    def __init__(
        self, max_connections: int, max_per_client: int, exempt: Callable[[str], bool] = lambda _address: False
    ) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self._exempt = exempt
        self._address: dict[Conn, str | None] = {}
        self._per_client: dict[str, int] = {}
        self._idle: dict[Conn, None] = {}  # oldest first: insertion order, moved to the end on `idle`
        self.lingering = 0  # refused newcomers still draining their request (zguard.serve.transport)

    def __len__(self) -> int:
        return len(self._address)

    def from_client(self, address: str) -> int:
        return self._per_client.get(address, 0)

    def admit(self, conn: Conn, address: str | None) -> Admission[Conn]:
        counted = address is not None and not self._exempt(address)
        if counted and address is not None and self._per_client.get(address, 0) >= self.max_per_client:
            return Admission(False, "client_full")
        evicted: Conn | None = None
        if len(self._address) >= self.max_connections:
            evicted = next(iter(self._idle), None)
            if evicted is None:
                return Admission(False, "listener_full")
            self.release(evicted)
        self._address[conn] = address if counted else None
        if counted and address is not None:
            self._per_client[address] = self._per_client.get(address, 0) + 1
        self._idle[conn] = None
        return Admission(True, evicted=evicted)

    def busy(self, conn: Conn) -> None:
        """A request is in progress on `conn`: it is not given way for a newcomer."""
        self._idle.pop(conn, None)

    def idle(self, conn: Conn) -> None:
        """`conn` has no request in progress (again): the newest candidate to give way."""
        if conn in self._address:
            self._idle.pop(conn, None)
            self._idle[conn] = None

    def release(self, conn: Conn) -> None:
        """`conn` is gone; releasing one twice, or one never admitted, does nothing."""
        if conn not in self._address:
            return
        address = self._address.pop(conn)
        self._idle.pop(conn, None)
        if address is not None:
            left = self._per_client[address] - 1
            if left:
                self._per_client[address] = left
            else:
                del self._per_client[address]
