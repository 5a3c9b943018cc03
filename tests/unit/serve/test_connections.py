"""The connection table: per-address and listener caps, and who gives way at the cap."""

from __future__ import annotations

from zguard.serve.connections import ConnectionTable


def test_an_address_over_its_cap_is_refused_and_others_are_not() -> None:
    table: ConnectionTable[str] = ConnectionTable(max_connections=10, max_per_client=2)
    assert table.admit("a1", "10.0.0.1").admitted
    assert table.admit("a2", "10.0.0.1").admitted
    refused = table.admit("a3", "10.0.0.1")
    assert (refused.admitted, refused.refused_because, refused.evicted) == (False, "client_full", None)
    assert table.admit("b1", "10.0.0.2").admitted
    assert (len(table), table.from_client("10.0.0.1")) == (3, 2)
    table.release("a1")
    assert table.admit("a3", "10.0.0.1").admitted


def test_exempt_addresses_are_not_counted_per_address() -> None:
    table: ConnectionTable[int] = ConnectionTable(3, 1, exempt=lambda address: address == "10.9.9.9")
    assert all(table.admit(n, "10.9.9.9").admitted for n in range(3))
    assert table.from_client("10.9.9.9") == 0
    assert table.admit(4, "10.9.9.9").evicted == 0  # the listener cap still applies


def test_at_the_listener_cap_the_longest_idle_connection_gives_way() -> None:
    table: ConnectionTable[str] = ConnectionTable(max_connections=3, max_per_client=10)
    for conn in ("old", "busy", "recent"):
        table.admit(conn, "10.0.0.1")
    table.busy("busy")
    table.busy("old")
    table.idle("old")  # it finished a request: now the newest idle one
    admission = table.admit("new", "10.0.0.2")
    assert (admission.admitted, admission.evicted) == (True, "recent")
    assert len(table) == 3
    assert table.admit("newer", "10.0.0.2").evicted == "old"


def test_when_every_connection_is_busy_the_newcomer_is_refused() -> None:
    table: ConnectionTable[str] = ConnectionTable(max_connections=2, max_per_client=10)
    for conn in ("x", "y"):
        table.admit(conn, "10.0.0.1")
        table.busy(conn)
    refused = table.admit("z", "10.0.0.3")
    assert (refused.admitted, refused.refused_because) == (False, "listener_full")
    assert len(table) == 2


def test_release_twice_or_unknown_does_nothing() -> None:
    table: ConnectionTable[str] = ConnectionTable(max_connections=2, max_per_client=1)
    table.admit("a", "10.0.0.1")
    table.release("a")
    table.release("a")
    table.release("never")
    table.idle("a")  # a released connection does not come back as idle
    assert (len(table), table.from_client("10.0.0.1")) == (0, 0)
    assert table.admit("b", None).admitted  # no address: only the listener cap applies
    assert table.admit("c", None).admitted
