"""What the RaftHost unit tests share: their deadlines, their fast config, one leading node.

The host tests (test_host*.py, test_group_tail.py) run real `RaftHost`s over
real LMDB in tmp_path, in-process. A one-node host leads its one-voter
partition group within a few ticks; `leading_host` starts it and waits.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import random
from collections.abc import AsyncIterator

from tests.support import aio
from weir.cluster.host import HostConfig, RaftHost
from weir.cluster.storage import NodeStorage, StorageConfig

# The host tests' deadlines (each module also has a pytest timeout above them).
run = functools.partial(aio.run, timeout_s=25)
eventually = functools.partial(aio.eventually, timeout_s=10, interval_s=0.005)

# The partition group `leading_host` starts.
GROUP = 1


def config(**overrides: int) -> HostConfig:
    """Node 1 (unless overridden) with fast ticks (10 ms, elections after 5) and quick quiescence."""
    fast = {
        "node_id": 1,
        "tick_ms": 10,
        "election_ticks": 5,
        "heartbeat_ticks": 1,
        "quiesce_after_ticks": 3,
    }
    return HostConfig(cluster_id="unit", **(fast | overrides))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def leading_host(
    tmp_path: pathlib.Path, host_config: HostConfig | None = None
) -> AsyncIterator[tuple[NodeStorage, RaftHost]]:
    """A host over storage in `tmp_path`, leading the one-voter partition group `GROUP`."""
    async with (
        NodeStorage(StorageConfig(path=tmp_path)) as storage,
        RaftHost(host_config or config(), storage, random.Random(1)) as host,
    ):
        host.start_group(GROUP, [1], partition=True)
        await eventually(lambda: host.is_leader(GROUP))
        yield storage, host
