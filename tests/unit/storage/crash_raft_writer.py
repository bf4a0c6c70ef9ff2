"""Child process for the Raft storage crash test: writes like a Raft host until killed.

Each round appends a few entries (sometimes replacing a suffix that is not
applied, as a follower does), saves the hard state, applies what it commits,
and without waiting submits the next round; every few rounds it waits for
`flush()` and prints "ack <last index> <commit>", so every printed index was
durable before the parent's SIGKILL. Writes of later rounds are in flight
(submitted, not committed) when the kill lands.
"""

from __future__ import annotations

import asyncio
import pathlib
import random
import sys

from tests.unit.storage.raft_helpers import batch_entry
from weir.cluster.raft import HardState
from weir.cluster.storage import Durability, NodeStorage, StorageConfig

GROUP = 9
ROUNDS_PER_FLUSH = 4


async def main(path: pathlib.Path) -> None:
    rng = random.Random(7)
    config = StorageConfig(path, durability=Durability.ASYNC)
    async with NodeStorage(config) as node:
        storage = node.raft_storage(GROUP)
        term = 1
        rounds = 0
        while True:
            last = storage.last_index()
            first = last + 1
            applied = storage._state.applied_submitted
            if rng.random() < 0.2 and last > applied:
                # A follower's conflicting suffix: only entries not applied.
                first = rng.randint(applied + 1, last)
                term += 1
            base = storage.next_offset if first == last + 1 else None
            if base is None:
                # The offset after entry first - 1.
                prev = storage.entries(first - 1, first, 1 << 30)[0] if first > 1 else None
                base = 0 if prev is None else _next_offset(prev.data)
            entries = []
            for index in range(first, first + rng.randint(1, 5)):
                entry = batch_entry(index, term, base, size=200, records=2)
                entries.append(entry)
                base += 2
            storage.append(entries)
            commit = max(applied, entries[0].index - 1)
            storage.set_hard_state(HardState(term, 1, commit))
            if commit > applied:
                storage.apply_entries(storage.entries(applied + 1, commit + 1, 1 << 30))
            rounds += 1
            if rounds % ROUNDS_PER_FLUSH == 0:
                await storage.flush()
                sys.stdout.write(f"ack {storage.last_index()} {commit}\n")
                sys.stdout.flush()


def _next_offset(data: bytes) -> int:
    from weir.cluster.storage.codec import decode_batch_header

    return decode_batch_header(data).next_offset


if __name__ == "__main__":
    asyncio.run(main(pathlib.Path(sys.argv[1])))
