"""Child process for the crash test: appends with sync durability until killed.

Prints "ack <offset>" after each append's `durable` future resolves, so every
printed offset was acknowledged as durable before the parent's SIGKILL.
Several appends are in flight at once so that group commits happen.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys

from tests.unit.storage.helpers import payload_for
from weir.cluster.storage import Durability, NodeStorage, StorageConfig

GROUP = 42
IN_FLIGHT_MAX = 8


async def main(path: pathlib.Path) -> None:
    async with NodeStorage(StorageConfig(path, durability=Durability.SYNC)) as storage:
        log = storage.partition_log(GROUP)
        pending: set[asyncio.Task[int]] = set()

        async def append_one() -> int:
            offset = log.next_offset
            ticket = await log.append(payload_for(offset, 700), 1, offset)
            await ticket.durable
            return ticket.base_offset

        while True:
            while len(pending) < IN_FLIGHT_MAX:
                pending.add(asyncio.create_task(append_one()))
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                sys.stdout.write(f"ack {task.result()}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(pathlib.Path(sys.argv[1])))
