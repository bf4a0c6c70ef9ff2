"""Queue mode's live dispatch state: one queue group on one partition, at the partition's leader.

A synchronous, deterministic state machine (docs/groups.md "Queue mode";
STYLE: no I/O, time passed in as `now_ms`, backoff jitter from an injected
seeded `random.Random`). The node feeds it events and does what the answers
say:

- `deliver(token, limit_records, deadline_ms, now_ms, candidates)` hands out
  records for one stream within its credit: due redeliveries first, then
  records of a key that became free (ordered keys), then new records from
  `cursor` (the caller reads them from the log and passes them as
  `Candidate`s: offsets from `cursor` on, dense, plus due delayed offsets
  below it, which the delayed-record index finds). A record whose
  `deliver_at_ms` is in the future is passed over; the index offers it when
  due.
- `deliver_new(token, count, deadline_ms, now_ms)` is the fast lane of
  `deliver`: a run of new records from the cursor that the caller knows
  have no key and are due, handed out as one range when nothing else is
  waiting (0: call `deliver`).
- `ack`, `nack`, `extend` come from consumers (ack ids decoded by ackid.py);
  `expire(now_ms)` fails records whose deadline passed; `stream_closed`
  fails a stream's records at once; `dead_letter_written` confirms a
  `DeadLetter` instruction, after which the record counts as acked.
- `take_control()` returns the control records to append to the partition
  log (types.py, codec.py) in the order of the events; every replica applies
  them (applied.py). A new leader starts from the applied state with
  `QueueDispatch.become_leader`: records in flight under the old leader go
  back at once with their attempt counted.

Bounds (named in `QueueConfig`): the state holds the records in flight,
waiting for redelivery, waiting to be dead-lettered, held back behind an
earlier record of their key, and the acked ranges above the low watermark.
Their sum is `size()`. At `queue_pending_max` the cursor stops: no new record
is scanned or handed out. An ack or a confirmed dead letter removes one
pending record and adds at most one range, and redeliveries move a record
from waiting to in flight, so none of these grows the sum. One exception
keeps the queue live: a due delayed record at the low watermark still goes
out at the bound, because it is the hole that nothing else fills while the
cursor is stopped (and its ack folds ranges into the watermark). There is
at most one such record, so `size()` never exceeds
`size_max() = queue_pending_max + 1`. The heaps of due
times and deadlines drop stale entries and are rebuilt when stale ones
outnumber live ones. The caller drains `take_control()` every turn; the
buffer holds that turn's events, merged where consecutive.

Operating conditions (an unknown ack id, a bad nack delay) are answered with
typed errors (errors.py) and change nothing; misuse by the caller (offsets
from the log that are not dense, confirming a dead letter never asked for)
is an assertion.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import random
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from .applied import AppliedQueueState
from .deadlines import Deadlines
from .errors import InvalidNackDelay, NotInFlight, QueueError, UnknownAckId
from .outbox import ControlOutbox
from .ranges import AckedOffsets
from .types import (
    Candidate,
    ControlRecord,
    DeadLetter,
    Delivery,
    Nacked,
    Outcome,
    QueueConfig,
    Redelivery,
)

StreamToken = int
JITTER_FRACTION = 0.2
DEADLINE_REASON = "ack deadline exceeded"
STREAM_CLOSED_REASON = "stream closed"
LEADER_CHANGED_REASON = "in flight when the partition leader changed"
# A heap is rebuilt when stale entries outnumber live ones by this much.
_HEAP_SLACK = 64


# One per record handed out: NamedTuples (types.py says why).
class InFlight(NamedTuple):
    token: StreamToken
    deadline_ms: int
    attempt: int
    key_hash: int | None
    last_error: str


class Waiting(NamedTuple):
    due_ms: int
    attempt: int
    key_hash: int | None
    last_error: str


def backoff_ms(config: QueueConfig, attempt: int, rng: random.Random) -> int:
    """`min(max, min * 2^(attempt-1))`, then ±20 % jitter."""
    assert attempt >= 1
    base = min(config.retry_backoff_ms_max, config.retry_backoff_ms_min << min(attempt - 1, 62))
    return round(base * rng.uniform(1 - JITTER_FRACTION, 1 + JITTER_FRACTION))


class QueueDispatch:
    """The partition leader's live state of one queue group (see the module docstring)."""

    def __init__(self, config: QueueConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self.acked = AckedOffsets()
        # The next offset never scanned from the log.
        self.cursor = 0
        self.in_flight: dict[int, InFlight] = {}
        self.waiting: dict[int, Waiting] = {}
        self.dead_lettering: dict[int, DeadLetter] = {}
        self._dead_key: dict[int, int] = {}  # key hashes of records being dead-lettered
        self._by_token: dict[StreamToken, set[int]] = {}
        self._due: list[tuple[int, int]] = []  # (due_ms, offset), stale entries allowed
        self._deadlines = Deadlines()
        # Every offset at or above it is unknown to the state: not acked, pending
        # or held (what lets `deliver_new` hand out a run without looking).
        self._known_end = 0
        # Ordered keys: per key, pending records (in flight, waiting, dead-lettering,
        # ready) and the records held back behind them, in offset order.
        self._key_pending: dict[int, int] = {}
        self._held: dict[int, deque[int]] = {}
        self._held_count = 0
        self._ready: list[tuple[int, int]] = []  # (offset, key_hash): its key became free
        self._held_offsets: set[int] = set()  # held or ready
        self._unscanned_min: list[int] = []  # held or ready offsets, stale entries allowed
        self._recorded_cursor = 0
        self._outbox = ControlOutbox()

    # -- leader change ---------------------------------------------------

    @classmethod
    def become_leader(
        cls,
        applied: AppliedQueueState,
        config: QueueConfig,
        rng: random.Random,
        now_ms: int,
    ) -> tuple[QueueDispatch, tuple[DeadLetter, ...]]:
        """The live state of a new leader, from its applied state, and dead letters to write.

        Records in flight under the old leader are failed at once: they wait
        with their attempt counted, due now (or are dead-lettered if that was
        their last delivery). Nacked records keep their due time.
        """
        self = cls(config, rng)
        self.acked = AckedOffsets(applied.acked.low_watermark)
        for first, end in applied.acked.ranges():
            self.acked.add(first, end)
        self.cursor = self._recorded_cursor = applied.cursor
        ends = [end for _, end in applied.acked.ranges()]
        self._known_end = max(applied.acked.low_watermark, *ends[-1:], applied.pending.end())
        letters = []
        for offset, record in sorted(applied.pending.items()):
            if record.key_hash is not None and config.ordered_keys:
                self._key_pending[record.key_hash] = self._key_pending.get(record.key_hash, 0) + 1
            error = record.last_error if record.due_ms is not None else LEADER_CHANGED_REASON
            if self._is_last(record.attempt):
                letters.append(self._dead_letter(offset, record.attempt, error, record.key_hash))
            else:
                due = now_ms if record.due_ms is None else record.due_ms
                self._wait(offset, Waiting(due, record.attempt, record.key_hash, error))
        return self, tuple(letters)

    # -- what the caller asks -------------------------------------------

    def size(self) -> int:
        """What the state holds, bounded by `queue_pending_max` (module docstring)."""
        return (
            len(self.in_flight)
            + len(self.waiting)
            + len(self.dead_lettering)
            + len(self._ready)
            + self._held_count
            + len(self.acked)
        )

    def size_max(self) -> int:
        """The hard bound of `size()` (module docstring, "Bounds")."""
        return self.config.queue_pending_max + 1

    @property
    def held_count(self) -> int:
        """Records not yet delivered because an earlier record of their key is out."""
        return self._held_count + len(self._ready)

    def status(self, offset: int) -> str:
        """Where a record is: acked, in_flight, waiting, dead_lettering, held, unscanned
        (at or past the cursor) or passed_over (below it: delayed, never delivered)."""
        if offset in self.acked:
            return "acked"
        for name, place in (
            ("in_flight", self.in_flight),
            ("waiting", self.waiting),
            ("dead_lettering", self.dead_lettering),
        ):
            if offset in place:
                return name
        if offset in self._held_offsets:
            return "held"
        return "unscanned" if offset >= self.cursor else "passed_over"

    def only_new_records(self, now_ms: int) -> bool:
        """Whether `deliver` now hands out only candidates: no redelivery is due (stale
        heap entries may say one is) and no record of a freed key is ready."""
        return not self._ready and not (self._due and self._due[0][0] <= now_ms)

    def next_wakeup_ms(self) -> int | None:
        """When `expire` or `deliver` next has something to do, if nothing else happens."""
        times = [self._due[0][0]] if self._due else []
        deadline = self._deadlines.next_ms()
        if deadline is not None:
            times.append(deadline)
        return min(times) if times else None

    def check_invariants(self) -> None:
        """Every pending record is in exactly one place, and the books agree."""
        self.acked.check_invariants()
        places = [
            set(self.in_flight),
            set(self.waiting),
            set(self.dead_lettering),
            {o for o, _ in self._ready},
            {o for q in self._held.values() for o in q},
        ]
        union: set[int] = set()
        for place in places:
            assert not union & place, union & place
            union |= place
        assert not any(o in self.acked for o in union)
        assert self._held_count == len(places[4])
        assert self._held_offsets == places[3] | places[4]
        assert set(self._dead_key) <= places[2]
        by_token = {o for offsets in self._by_token.values() for o in offsets}
        assert by_token == places[0]
        for token, offsets in self._by_token.items():
            assert all(self.in_flight[o].token == token for o in offsets)
        due = set(self._due)
        assert all((w.due_ms, o) in due for o, w in self.waiting.items())
        for offset, record in self.in_flight.items():
            assert self._deadlines.covers(offset, record.deadline_ms, record.attempt), offset
        assert all(o < self._known_end for o in union), "an offset known past _known_end"
        assert all(end <= self._known_end for _, end in self.acked.ranges())
        if self.config.ordered_keys:
            counts: dict[int, int] = {}
            keyed = [(o, r.key_hash) for o, r in self.in_flight.items()]
            keyed += [(o, w.key_hash) for o, w in self.waiting.items()]
            keyed += list(self._dead_key.items()) + self._ready
            for _, key_hash in keyed:
                if key_hash is not None:
                    counts[key_hash] = counts.get(key_hash, 0) + 1
            assert counts == self._key_pending, (counts, self._key_pending)
            assert all(self._key_pending.get(k, 0) > 0 for k in self._held)
        assert self._recorded_cursor <= self.cursor

    # -- dispatch --------------------------------------------------------

    def deliver(
        self,
        token: StreamToken,
        limit_records: int,
        deadline_ms: int,
        now_ms: int,
        candidates: Iterable[Candidate] = (),
    ) -> tuple[Delivery, ...]:
        """Records to hand to stream `token`, at most `limit_records` (its credit).

        `candidates` is read in order and only as far as needed (it may be
        a generator): the call stops taking them once it has its records.
        """
        assert limit_records >= 0 and deadline_ms >= now_ms
        out: list[Delivery] = []
        while len(out) < limit_records and self._due and self._due[0][0] <= now_ms:
            due_ms, offset = heapq.heappop(self._due)
            waiting = self.waiting.get(offset)
            if waiting is None or waiting.due_ms != due_ms:
                continue  # stale: acked, or due again at another time
            del self.waiting[offset]
            out.append(self._hand_out(token, offset, waiting.attempt + 1, deadline_ms,
                                      waiting.key_hash, waiting.last_error))  # fmt: skip
        while len(out) < limit_records and self._ready:
            offset, key_hash = heapq.heappop(self._ready)
            self._held_offsets.remove(offset)
            out.append(self._hand_out(token, offset, 1, deadline_ms, key_hash, ""))
        full = False
        for candidate in candidates:
            if len(out) >= limit_records:
                break
            # At the bound the cursor stops. A due delayed record at the low
            # watermark still goes: nothing else would fill that hole, and its
            # ack folds ranges away (module docstring, "Bounds").
            full = full or self.size() >= self.config.queue_pending_max
            if full and (
                candidate.offset >= self.cursor or candidate.offset != self.acked.low_watermark
            ):
                continue
            delivery = self._consider(token, candidate, deadline_ms, now_ms)
            if delivery is not None:
                out.append(delivery)
        self._record(out)
        return tuple(out)

    def _consider(
        self, token: StreamToken, candidate: Candidate, deadline_ms: int, now_ms: int
    ) -> Delivery | None:
        offset, key_hash = candidate.offset, candidate.key_hash
        scanned = offset >= self.cursor
        if scanned:
            assert offset == self.cursor, f"candidates skip from {self.cursor} to {offset}"
            self.cursor += 1
        if self._known(offset):
            return None
        if candidate.deliver_at_ms is not None and candidate.deliver_at_ms > now_ms:
            return None  # the delayed-record index offers it when due
        if self.config.ordered_keys and key_hash is not None and self._key_busy(key_hash):
            if scanned:
                self._known_end = max(self._known_end, offset + 1)
                self._held.setdefault(key_hash, deque()).append(offset)
                self._held_count += 1
                self._held_offsets.add(offset)
                heapq.heappush(self._unscanned_min, offset)
            # A delayed record of a busy key is offered again by the index.
            return None
        if self.config.ordered_keys and key_hash is not None:
            self._key_pending[key_hash] = self._key_pending.get(key_hash, 0) + 1
        return self._hand_out(token, offset, 1, deadline_ms, key_hash, "")

    def _known(self, offset: int) -> bool:
        return (
            offset in self.acked
            or offset in self.in_flight
            or offset in self.waiting
            or offset in self.dead_lettering
            or offset in self._held_offsets
        )

    def _key_busy(self, key_hash: int) -> bool:
        return self._key_pending.get(key_hash, 0) > 0 or key_hash in self._held

    def _hand_out(
        self,
        token: StreamToken,
        offset: int,
        attempt: int,
        deadline_ms: int,
        key_hash: int | None,
        last_error: str,
    ) -> Delivery:
        self.in_flight[offset] = InFlight(token, deadline_ms, attempt, key_hash, last_error)
        self._by_token.setdefault(token, set()).add(offset)
        self._deadlines.push(deadline_ms, offset, offset + 1, attempt)
        if offset >= self._known_end:
            self._known_end = offset + 1
        return Delivery(offset, attempt, deadline_ms)

    def deliver_new(self, token: StreamToken, count: int, deadline_ms: int, now_ms: int) -> int:
        """Hands out up to `count` new records from the cursor as one run, as
        `deliver` would with candidates that have no key and no future
        `deliver_at_ms` (the caller knows; it read them): returns how many
        (from offset `cursor` before the call), 0 when `deliver` must decide
        (a redelivery is due, a freed key is ready, a record at or past the
        cursor is known, or the bound is reached).

        The fast lane of a queue that keeps up: one dict update, one set
        update, one deadline entry and one recorded run for the whole run, not
        a call per record (the hand-out was ~19 µs per record, most of it
        per-record bookkeeping).
        """
        assert count >= 0 and deadline_ms >= now_ms
        if self.cursor < self._known_end or not self.only_new_records(now_ms):
            return 0
        count = min(count, self.config.queue_pending_max - self.size())
        if count <= 0:
            return 0
        first = self.cursor
        end = self.cursor = self._known_end = first + count
        offsets = range(first, end)
        self.in_flight.update(dict.fromkeys(offsets, InFlight(token, deadline_ms, 1, None, "")))
        self._by_token.setdefault(token, set()).update(offsets)
        self._deadlines.push(deadline_ms, first, end, 1)
        self._outbox.delivered_run(self._cursor_to_record(), first, count)
        return count

    def _cursor_to_record(self) -> int:
        """The cursor a new leader starts from: below records held back unscanned."""
        while self._unscanned_min and not self._is_unscanned(self._unscanned_min[0]):
            heapq.heappop(self._unscanned_min)
        cursor = min(self.cursor, self._unscanned_min[0]) if self._unscanned_min else self.cursor
        assert cursor >= self._recorded_cursor
        self._recorded_cursor = cursor
        return cursor

    def _record(self, out: list[Delivery]) -> None:
        """Records a call's deliveries, with the cursor a new leader starts from."""
        before = self._recorded_cursor
        cursor = self._cursor_to_record()
        if not out and cursor == before:
            return
        in_flight = self.in_flight
        self._outbox.delivered(
            cursor, [(x.offset, x.attempt, in_flight[x.offset].key_hash) for x in out]
        )

    def _is_unscanned(self, offset: int) -> bool:
        return offset in self._held_offsets

    # -- consumers' answers ----------------------------------------------

    def _attempt_out(self, offset: int) -> int | None:
        """The attempt last handed out of a pending record, None if never delivered."""
        if (r := self.in_flight.get(offset)) is not None:
            return r.attempt
        if (w := self.waiting.get(offset)) is not None:
            return w.attempt
        if (d := self.dead_lettering.get(offset)) is not None:
            return d.deliveries
        return None

    def ack(self, offset: int, attempt: int) -> Outcome | UnknownAckId:
        """Acks the record; any attempt handed out counts (its work was done)."""
        record = self.in_flight.get(offset)
        if record is not None and 1 <= attempt <= record.attempt:
            # The common case (a record in flight acked), as below without the lookups.
            del self.in_flight[offset]
            self._untoken(record.token, offset)
            self.acked.add(offset, offset + 1)
            if record.key_hash is not None:
                self._release_key(record.key_hash)
            self._compact_heaps()
            self._outbox.acked(offset)
            return Outcome.ACKED
        if offset in self.acked and attempt >= 1:
            return Outcome.ALREADY_ACKED
        out = self._attempt_out(offset)
        if out is None or not 1 <= attempt <= out:
            return UnknownAckId(f"offset {offset} attempt {attempt} was never delivered")
        key_hash = self._drop(offset)
        self.acked.add(offset, offset + 1)
        self._release_key(key_hash)
        self._compact_heaps()
        self._outbox.acked(offset)
        return Outcome.ACKED

    def ack_run(self, first: int, end: int, attempt: int) -> bool:
        """Acks offsets `[first, end)` at once if they are one run handed out together.

        That is, every one of them holds the very `InFlight` that
        `deliver_new` gave its run (one stream, attempt 1, no key), which is
        what a consumer acking as it goes sends back. Then this does what
        `ack` of each would, with one call per run instead of per record.
        False (nothing changed) for anything else: the caller acks one by one.
        """
        in_flight = self.in_flight
        record = in_flight.get(first)
        if (
            record is None
            or end <= first
            or record.key_hash is not None
            or not 1 <= attempt <= record.attempt
        ):
            return False
        offsets = range(first, end)
        if not all(map(operator.is_, map(in_flight.get, offsets), itertools.repeat(record))):
            return False
        deque(map(in_flight.__delitem__, offsets), maxlen=0)
        tokens = self._by_token[record.token]
        tokens.difference_update(offsets)
        if not tokens:
            del self._by_token[record.token]
        self.acked.add(first, end)
        self._compact_heaps()
        self._outbox.acked_run(first, end)
        return True

    def nack(
        self, offset: int, attempt: int, delay_ms: int | None, reason: str, now_ms: int
    ) -> Redelivery | DeadLetter | Outcome | QueueError:
        """Fails the attempt: redelivery after `delay_ms` (None: the backoff), or a dead letter."""
        if offset in self.acked and attempt >= 1:
            return Outcome.ALREADY_ACKED
        out = self._attempt_out(offset)
        if out is None or not 1 <= attempt <= out:
            return UnknownAckId(f"offset {offset} attempt {attempt} was never delivered")
        if delay_ms is not None and not 0 <= delay_ms <= self.config.nack_delay_ms_max:
            return InvalidNackDelay(
                f"nack delay {delay_ms} ms is outside 0..{self.config.nack_delay_ms_max}"
            )
        record = self.in_flight.get(offset)
        if record is None or record.attempt != attempt:
            return Outcome.STALE_ATTEMPT
        return self._fail(offset, delay_ms, reason, now_ms)

    def extend(
        self, offset: int, attempt: int, token: StreamToken, deadline_ms: int
    ) -> Outcome | QueueError:
        """Moves the deadline of a record in flight on stream `token` (the caller caps it)."""
        if offset in self.acked and attempt >= 1:
            return Outcome.ALREADY_ACKED
        out = self._attempt_out(offset)
        if out is None or not 1 <= attempt <= out:
            return UnknownAckId(f"offset {offset} attempt {attempt} was never delivered")
        record = self.in_flight.get(offset)
        if record is None or record.attempt != attempt or record.token != token:
            return NotInFlight(f"offset {offset} attempt {attempt} is not in flight on the stream")
        self.in_flight[offset] = record._replace(deadline_ms=deadline_ms)
        self._deadlines.push(deadline_ms, offset, offset + 1, attempt)
        self._compact_heaps()
        return Outcome.EXTENDED

    def expire(self, now_ms: int) -> tuple[Redelivery | DeadLetter, ...]:
        """Fails every record whose deadline is at or before `now_ms`, as a nack without delay."""
        return tuple(
            self._fail(offset, None, DEADLINE_REASON, now_ms)
            for offset, _ in self._deadlines.due(now_ms, self._holds)
        )

    def _holds(self, offset: int, deadline_ms: int, attempt: int) -> bool:
        """Whether `offset` is in flight as `attempt` with this deadline (not stale)."""
        record = self.in_flight.get(offset)
        return record is not None and (record.deadline_ms, record.attempt) == (deadline_ms, attempt)

    def stream_closed(self, token: StreamToken, now_ms: int) -> tuple[Redelivery | DeadLetter, ...]:
        """The stream's records go back at once (their attempt counts)."""
        offsets = sorted(self._by_token.get(token, ()))
        return tuple(self._fail(o, 0, STREAM_CLOSED_REASON, now_ms) for o in offsets)

    def dead_letter_written(self, offset: int) -> Outcome:
        """The caller wrote the dead letter asked for: the record counts as acked."""
        if offset in self.acked:
            return Outcome.ALREADY_ACKED  # a consumer acked it meanwhile
        assert offset in self.dead_lettering, f"no dead letter was asked for offset {offset}"
        key_hash = self._drop(offset)
        self.acked.add(offset, offset + 1)
        self._release_key(key_hash)
        self._compact_heaps()
        self._outbox.dead_lettered(offset)
        return Outcome.ACKED

    # -- transitions -----------------------------------------------------

    def _is_last(self, attempt: int) -> bool:
        return self.config.max_deliveries > 0 and attempt >= self.config.max_deliveries

    def _fail(
        self, offset: int, delay_ms: int | None, reason: str, now_ms: int
    ) -> Redelivery | DeadLetter:
        record = self.in_flight.pop(offset)
        self._untoken(record.token, offset)
        error = reason.encode()[: self.config.nack_reason_bytes_max].decode(errors="ignore")
        if self._is_last(record.attempt):
            self._outbox.nacked(Nacked(offset, record.attempt, now_ms, error))
            return self._dead_letter(offset, record.attempt, error, record.key_hash)
        if delay_ms is None:
            delay_ms = backoff_ms(self.config, record.attempt, self._rng)
        due_ms = now_ms + delay_ms
        self._wait(offset, Waiting(due_ms, record.attempt, record.key_hash, error))
        self._outbox.nacked(Nacked(offset, record.attempt, due_ms, error))
        return Redelivery(offset, record.attempt, due_ms)

    def _dead_letter(
        self, offset: int, attempt: int, error: str, key_hash: int | None
    ) -> DeadLetter:
        letter = DeadLetter(offset, attempt, error)
        self.dead_lettering[offset] = letter
        if key_hash is not None:
            self._dead_key[offset] = key_hash
        return letter

    def _wait(self, offset: int, waiting: Waiting) -> None:
        self.waiting[offset] = waiting
        heapq.heappush(self._due, (waiting.due_ms, offset))
        self._compact_heaps()

    def _drop(self, offset: int) -> int | None:
        """Removes a pending record (it is being acked); returns its key's hash."""
        if (record := self.in_flight.pop(offset, None)) is not None:
            self._untoken(record.token, offset)
            return record.key_hash
        if (waiting := self.waiting.pop(offset, None)) is not None:
            return waiting.key_hash
        del self.dead_lettering[offset]
        return self._dead_key.pop(offset, None)

    def _untoken(self, token: StreamToken, offset: int) -> None:
        offsets = self._by_token[token]
        offsets.discard(offset)
        if not offsets:
            del self._by_token[token]

    def _release_key(self, key_hash: int | None) -> None:
        """A record of `key_hash` is done: the next one held back may go."""
        if key_hash is None or not self.config.ordered_keys:
            return
        left = self._key_pending[key_hash] - 1
        if left:
            self._key_pending[key_hash] = left
            return
        del self._key_pending[key_hash]
        held = self._held.get(key_hash)
        if held:
            offset = held.popleft()
            self._held_count -= 1
            if not held:
                del self._held[key_hash]
            self._key_pending[key_hash] = 1
            heapq.heappush(self._ready, (offset, key_hash))

    def _compact_heaps(self) -> None:
        if len(self._due) > 2 * len(self.waiting) + _HEAP_SLACK:
            self._due = [(w.due_ms, o) for o, w in self.waiting.items()]
            heapq.heapify(self._due)
        self._deadlines.compact(self.in_flight)

    def take_control(self) -> list[ControlRecord]:
        """The control records of the events since the last call, in order, to replicate."""
        return self._outbox.take()
