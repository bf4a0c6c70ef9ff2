"""Queue mode under random events and leader changes, seed by seed.

Each seed draws a partition of records (some keyed, some delayed), settings,
and a run of events: deliveries to three streams, acks, nacks, extensions,
expiries, closed streams, confirmed dead letters, time passing, commits of
the leader's control records, replicas applying them at their own pace, and
leader changes (a replica applies what is committed and calls
`become_leader`; the old leader's uncommitted records are kept or lost).
After every event:

- a record whose ack is committed is never handed out again, and a leader
  never hands out what it acked itself;
- every record is acked, in flight, waiting, being dead-lettered, held
  behind its key, not yet scanned, or passed over because it is delayed:
  never lost;
- replicas that applied the same control records hold the same state;
- with ordered keys, no record goes out first while an earlier record of its
  key is out.

In the end, with faults stopped, everything gets acked or dead-lettered.
Set WEIR_QUEUE_SEED to run one seed (WEIR_QUEUE_SEEDS for how many); a
failure prints its seed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import pytest

from weir.cluster.queue import (
    Acked,
    AppliedQueueState,
    Candidate,
    ControlRecord,
    DeadLetter,
    DeadLettered,
    Delivery,
    Outcome,
    QueueConfig,
    QueueDispatch,
    QueueError,
    decode_control,
    encode_control,
)

from .helpers import GROUP, fingerprint

pytestmark = pytest.mark.timeout(120)

SEEDS = 150
STEPS = 300
TOKENS = (1, 2, 3)
DEADLINE_MS = 1_000


@dataclass
class World:
    rng: random.Random
    config: QueueConfig
    keys: list[int | None]
    deliver_at: list[int | None]
    leader: QueueDispatch
    replicas: list[AppliedQueueState] = field(default_factory=list)
    applied_upto: list[int] = field(default_factory=list)
    log: list[ControlRecord] = field(default_factory=list)
    proposed: list[ControlRecord] = field(default_factory=list)
    letters: dict[int, DeadLetter] = field(default_factory=dict)
    handed: dict[int, int] = field(default_factory=dict)  # offset -> highest attempt out
    committed_acked: set[int] = field(default_factory=set)
    now: int = 0

    @property
    def records(self) -> int:
        return len(self.keys)

    def candidates(self) -> tuple[Candidate, ...]:
        d = self.leader
        end = min(self.records, d.cursor + self.rng.randrange(12))
        new = [Candidate(o, self.keys[o], self.deliver_at[o]) for o in range(d.cursor, end)]
        # What the delayed-record index would offer: due delayed records below the cursor.
        due = [
            Candidate(o, self.keys[o], at)
            for o, at in enumerate(self.deliver_at[: d.cursor])
            if at is not None and at <= self.now
        ]
        self.rng.shuffle(due)
        return tuple(due + new)

    def plain_run(self, limit: int) -> int:
        """How many records from the cursor have no key and are not delayed now
        (what the caller of `deliver_new` checks in the records it read)."""
        d, count = self.leader, 0
        for o in range(d.cursor, min(self.records, d.cursor + limit)):
            at = self.deliver_at[o]
            if self.keys[o] is not None or (at is not None and at > self.now):
                break
            count += 1
        return count

    def deliver(self, token: int, limit: int) -> None:
        d = self.leader
        acked_before = {o for o in range(self.records) if o in d.acked}
        out = []
        if self.rng.random() < 0.5:
            # The fast lane first, as the server does; what it leaves, `deliver` decides.
            first = d.cursor
            count = d.deliver_new(token, self.plain_run(limit), self.now + DEADLINE_MS, self.now)
            out = [Delivery(o, 1, self.now + DEADLINE_MS) for o in range(first, first + count)]
            limit -= count
        out += d.deliver(token, limit, self.now + DEADLINE_MS, self.now, self.candidates())
        for x in out:
            assert x.offset not in self.committed_acked, f"committed ack of {x.offset} lost"
            assert x.offset not in acked_before, f"acked {x.offset} handed out again"
            assert x.attempt >= 1
            if self.config.max_deliveries:
                assert x.attempt <= self.config.max_deliveries, x
            at = self.deliver_at[x.offset]
            assert at is None or at <= self.now, f"{x.offset} went out before {at}"
            self.handed[x.offset] = max(self.handed.get(x.offset, 0), x.attempt)
            key = self.keys[x.offset]
            if self.config.ordered_keys and key is not None and x.attempt == 1:
                pending = {*d.in_flight, *d.waiting, *d.dead_lettering}
                earlier = [o for o in pending if o < x.offset and self.keys[o] == key]
                assert not earlier, f"{x.offset} went out while {earlier} of its key are out"

    def some_delivery(self) -> tuple[int, int]:
        """An offset and attempt: mostly real ones, some stale, some never delivered."""
        if self.handed and self.rng.random() < 0.85:
            offset = self.rng.choice(sorted(self.handed))
            attempt = self.handed[offset] - self.rng.choice((0, 0, 0, 1))
            return offset, attempt + (1 if self.rng.random() < 0.05 else 0)
        return self.rng.randrange(self.records + 5), self.rng.randrange(3)

    def ack_run(self, first: int, attempt: int, length: int) -> None:
        """`ack_run` acks the whole run as `ack` of each would, or changes nothing."""
        d = self.leader
        end = first + length
        before = fingerprint(d)
        in_flight = [d.in_flight.get(o) for o in range(first, end)]
        if not d.ack_run(first, end, attempt):
            assert fingerprint(d) == before, "a refused run changed the state"
            return
        # Only a run handed out together to one stream: attempt 1, no key.
        assert all(r is in_flight[0] for r in in_flight), in_flight
        assert in_flight[0] is not None and in_flight[0].key_hash is None
        assert 1 <= attempt <= in_flight[0].attempt
        for offset in range(first, end):
            assert offset in d.acked and offset not in d.in_flight
            assert d.ack(offset, attempt) is Outcome.ALREADY_ACKED

    def answered(self, before: object, answer: object) -> None:
        if isinstance(answer, QueueError):
            assert fingerprint(self.leader) == before, f"refusal {answer} changed the state"
        if isinstance(answer, DeadLetter):
            self.letters[answer.offset] = answer

    def failed(self, answers: tuple[object, ...]) -> None:
        for answer in answers:
            self.answered(None, answer)

    def take(self) -> None:
        self.proposed.extend(self.leader.take_control())

    def commit(self, count: int) -> None:
        self.take()
        done, self.proposed = self.proposed[:count], self.proposed[count:]
        self.log.extend(done)
        for record in done:
            if isinstance(record, Acked | DeadLettered):
                for first, end in record.ranges:
                    self.committed_acked.update(range(first, end))

    def apply(self, replica: int, upto: int) -> None:
        start = self.applied_upto[replica]
        if upto <= start:
            return
        # Through the codec, as a replica reads the log.
        group, records = decode_control(encode_control(GROUP, self.log[start:upto]))
        assert group == GROUP
        for record in records:
            self.replicas[replica].apply(record)
        self.applied_upto[replica] = upto
        self.replicas[replica].check_invariants()

    def change_leader(self) -> None:
        self.take()
        if self.rng.random() < 0.5:
            self.commit(len(self.proposed))  # the new leader had them: they commit
        self.proposed = []  # otherwise lost with the old leader
        new = self.rng.randrange(len(self.replicas))
        self.apply(new, len(self.log))
        applied = self.replicas[new]
        if self.rng.random() < 0.3:
            applied = AppliedQueueState.restore(applied.snapshot())
            assert applied.snapshot() == self.replicas[new].snapshot()
        self.leader, letters = QueueDispatch.become_leader(
            applied, self.config, random.Random(self.rng.random()), self.now
        )
        self.letters = {x.offset: x for x in letters}
        for offset in self.committed_acked:
            assert offset in self.leader.acked, f"new leader forgot the committed ack of {offset}"

    def step(self) -> None:
        rng, d = self.rng, self.leader
        kind = rng.choices(
            ["deliver", "ack", "nack", "extend", "expire", "close", "letter", "time",
             "take", "commit", "apply", "leader", "ack_run"],
            weights=[20, 16, 8, 3, 4, 2, 4, 10, 5, 8, 6, 2, 8],
        )[0]  # fmt: skip
        if kind == "deliver":
            self.deliver(rng.choice(TOKENS), rng.randrange(7))
        elif kind in ("ack", "nack", "extend"):
            offset, attempt = self.some_delivery()
            before = fingerprint(d)
            if kind == "ack":
                answer: object = d.ack(offset, attempt)
            elif kind == "nack":
                delay = rng.choice([None, None, 0, rng.randrange(3_000), -5])
                answer = d.nack(
                    offset, attempt, delay, rng.choice(["", "bad", "é" * 200]), self.now
                )
            else:
                answer = d.extend(offset, attempt, rng.choice(TOKENS), self.now + DEADLINE_MS)
            self.answered(before, answer)
        elif kind == "ack_run":
            first, attempt = self.some_delivery()
            # Mostly (part of) a run handed out together, sometimes past its end.
            shared = d.in_flight.get(first)
            run = 1
            while shared is not None and d.in_flight.get(first + run) is shared:
                run += 1
            length = rng.randrange(1, run + 1) + (1 if rng.random() < 0.2 else 0)
            self.ack_run(first, attempt, length)
        elif kind == "expire":
            self.failed(d.expire(self.now))
        elif kind == "close":
            self.failed(d.stream_closed(rng.choice(TOKENS), self.now))
        elif kind == "letter" and self.letters:
            offset = rng.choice(sorted(self.letters))
            del self.letters[offset]
            assert d.dead_letter_written(offset) in (Outcome.ACKED, Outcome.ALREADY_ACKED)
        elif kind == "time":
            self.now += rng.choice([1, 10, 100, 700, 3_000])
        elif kind == "take":
            self.take()
        elif kind == "commit":
            self.take()
            self.commit(rng.randrange(len(self.proposed) + 1))
        elif kind == "apply":
            replica = rng.randrange(len(self.replicas))
            self.apply(replica, rng.randrange(self.applied_upto[replica], len(self.log) + 1))
        elif kind == "leader":
            self.change_leader()

    def check(self) -> None:
        d = self.leader
        d.check_invariants()
        assert d.size() <= d.size_max()
        for offset in range(self.records):
            status = d.status(offset)
            if status == "passed_over":
                assert self.deliver_at[offset] is not None, f"record {offset} is lost"
        by_index: dict[int, dict[str, object]] = {}
        for replica, upto in zip(self.replicas, self.applied_upto, strict=True):
            snapshot = replica.snapshot()
            assert by_index.setdefault(upto, snapshot) == snapshot, "replicas diverged"

    def drain(self) -> None:
        """No more faults: everything is acked or dead-lettered in the end."""
        self.now += 10**7  # every delayed record is due, every backoff over
        for _ in range(self.records * (self.config.max_deliveries or 1) + 50):
            d = self.leader
            if d.acked.low_watermark >= self.records:
                break
            self.failed(d.expire(self.now))
            self.deliver(1, 1_000)
            for offset, record in sorted(d.in_flight.items()):
                assert d.ack(offset, record.attempt) is Outcome.ACKED
            for offset in sorted(self.letters):
                d.dead_letter_written(offset)
            self.letters.clear()
            self.now += 10**6
            self.check()
        assert self.leader.acked.low_watermark == self.records, "records never acked"
        self.commit(10**9)
        for replica in range(len(self.replicas)):
            self.apply(replica, len(self.log))
        snapshots = [r.snapshot() for r in self.replicas]
        assert all(s == snapshots[0] for s in snapshots)
        assert snapshots[0]["low_watermark"] == self.records and snapshots[0]["pending"] == []


def world(seed: int) -> World:
    rng = random.Random(seed)
    records = rng.randrange(1, 80)
    low = rng.choice([0, 10, 100])
    config = QueueConfig(
        max_deliveries=rng.choice([0, 1, 2, 4]),
        retry_backoff_ms_min=low,
        retry_backoff_ms_max=low * rng.choice([1, 8]),
        ordered_keys=rng.random() < 0.5,
        queue_pending_max=rng.choice([3, 10, 1_000]),
    )
    keys = [rng.choice([None, 1, 2, 3, 2**32 - 1]) for _ in range(records)]
    if rng.random() < 0.3:
        keys = [None] * records  # no key at all: long runs in the fast lane
    delayed = rng.choice([0.0, 0.15, 0.5])
    deliver_at = [rng.randrange(20_000) if rng.random() < delayed else None for _ in range(records)]
    leader = QueueDispatch(config, random.Random(seed + 1))
    w = World(rng, config, keys, deliver_at, leader)
    w.replicas = [AppliedQueueState() for _ in range(3)]
    w.applied_upto = [0, 0, 0]
    return w


def run(seed: int) -> None:
    w = world(seed)
    for _ in range(STEPS):
        w.step()
        w.check()
    w.drain()


def test_random_events_and_leader_changes_lose_nothing_and_replicas_agree() -> None:
    one = os.environ.get("WEIR_QUEUE_SEED")
    seeds = int(os.environ.get("WEIR_QUEUE_SEEDS", SEEDS))
    for seed in [int(one)] if one else range(seeds):
        try:
            run(seed)
        except AssertionError:
            print(f"queue property failed: WEIR_QUEUE_SEED={seed}")
            raise
