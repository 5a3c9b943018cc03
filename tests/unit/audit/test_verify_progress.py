"""`verify_rows` / `verify_store` for the console's "verify now": progress calls every N rows, the
same report with and without them, and a trail that grows during the walk (no I/O: the chain is
built in memory and the store is a stand-in with the three methods verification reads)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from zguard.audit import AuditEvent
from zguard.audit.chain import GENESIS, canonical, chain_hash, event_body
from zguard.audit.store import AuditStore, Head
from zguard.audit.verify import PROGRESS_EVERY, verify_rows, verify_store


def chain(count: int) -> list[tuple[Any, ...]]:
    """`count` events as stored rows (`ROW_COLUMNS` order), linked from the genesis hash."""
    rows, prev = [], GENESIS
    for seq in range(1, count + 1):
        event = AuditEvent(type="http.request", outcome="allowed", principal="alice", detail={"i": seq})
        body = canonical(event_body(event, seq=seq, event_id=f"{seq:032x}", time_ms=1_700_000_000_000 + seq))
        digest = chain_hash(prev, body)
        rows.append(
            (seq, f"{seq:032x}", 1_700_000_000_000 + seq, "http.request", "allowed", "alice", None, body, prev, digest)
        )
        prev = digest
    return rows


class GrowingStore:
    """The head as read at the start covers `head_at` rows; the table (and, once read again, the
    head) holds `rows`: what a live server's appends look like to a walk."""

    def __init__(self, rows: list[tuple[Any, ...]], head_at: int, *, head_moves: bool = True) -> None:
        self.rows, self.head_at, self.head_moves = rows, head_at, head_moves
        self.reads = 0

    def head(self) -> Head:
        self.reads += 1
        seq = self.head_at if self.reads == 1 or not self.head_moves else len(self.rows)
        return Head(seq, self.rows[seq - 1][-1] if seq else GENESIS, 0, GENESIS, 0, 0)

    def head_seq(self) -> int:
        return self.head().seq

    def iter_rows(self, *, batch: int = 5_000) -> Iterator[tuple[Any, ...]]:
        del batch
        yield from self.rows


def test_progress_is_called_every_n_rows_with_increasing_counts() -> None:
    rows = chain(25)
    seen: list[int] = []
    report = verify_rows(
        rows, base_seq=0, base_hash=GENESIS, head_seq=25, public_key=None, progress=seen.append, progress_every=10
    )
    assert report.ok, report.problem
    assert seen == [10, 20]
    assert report.events == 25


def test_the_report_is_the_same_with_and_without_progress() -> None:
    rows = chain(12)
    quiet = verify_rows(rows, base_seq=0, base_hash=GENESIS, head_seq=12, public_key=None)
    counted = verify_rows(
        rows, base_seq=0, base_hash=GENESIS, head_seq=12, public_key=None, progress=lambda _n: None, progress_every=5
    )
    assert quiet.as_dict() == counted.as_dict()
    assert PROGRESS_EVERY == 10_000


def test_progress_stops_at_the_first_problem() -> None:
    rows = chain(30)
    rows[14] = (*rows[14][:7], rows[14][7].replace('"alice"', '"mallory"'), *rows[14][8:])
    seen: list[int] = []
    report = verify_rows(
        rows, base_seq=0, base_hash=GENESIS, head_seq=30, public_key=None, progress=seen.append, progress_every=5
    )
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("edited", 15)
    assert seen == [5, 10]


def test_verify_store_keeps_its_positional_signature_and_reports_progress() -> None:
    store = GrowingStore(chain(7), 7)
    seen: list[int] = []
    assert verify_store(cast(AuditStore, store), None).ok
    report = verify_store(cast(AuditStore, GrowingStore(chain(7), 7)), None, progress=seen.append, progress_every=3)
    assert report.ok
    assert seen == [3, 6]


def test_rows_appended_during_the_walk_end_it_at_the_head_it_began_with() -> None:
    store = GrowingStore(chain(10), 8)  # two events committed after the walk read the head
    report = verify_store(cast(AuditStore, store), None)
    assert report.ok, report.problem
    assert (report.events, report.last_seq) == (8, 8)


def test_rows_past_the_head_read_again_are_still_inserted() -> None:
    store = GrowingStore(chain(10), 8, head_moves=False)  # the head never covers 9 and 10
    report = verify_store(cast(AuditStore, store), None)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("inserted", 9)


def test_a_given_head_is_the_one_verified_against() -> None:
    rows = chain(6)
    store = GrowingStore(rows, 6)
    head = Head(4, rows[3][-1], 0, GENESIS, 0, 0)
    report = verify_store(cast(AuditStore, store), None, head=head)
    assert report.ok, report.problem
    assert report.events == 4
    assert store.reads == 1  # read again for the row past the given head, not at the start
