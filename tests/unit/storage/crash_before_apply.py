"""Child process for the visibility crash test: reads committed entries, dies before their apply.

Appends three record batches durably, then (inside a writer hold, so the
apply op never reaches the writer) marks them committed, prints what a
reader sees as one JSON line, and kills itself with SIGKILL before the
apply (index rows, applied index) can be written.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sys

from tests.unit.storage.raft_helpers import batch_entries
from weir.cluster.raft import HardState
from weir.cluster.storage import NodeStorage, StorageConfig

GROUP = 5


async def main(path: pathlib.Path) -> None:
    async with NodeStorage(StorageConfig(path)) as node:
        storage = node.raft_storage(GROUP)
        storage.append(batch_entries(1, 4))
        storage.set_hard_state(HardState(1, 1, 3))
        await storage.flush()
        log = storage.partition_log
        assert log is not None
        with node.hold_writes():
            storage.apply_entries(storage.entries(1, 4, 1 << 30))
            seen = {
                "end_offset": log.end_offset,
                "applied_index": storage.applied_index,
                "batches": [(b.base_offset, b.payload.hex()) for b in log.read(0, 1 << 20)],
            }
            sys.stdout.write(json.dumps(seen) + "\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    asyncio.run(main(pathlib.Path(sys.argv[1])))
