"""Consumer-group admin on real `weir serve` processes: a single node and three nodes (issue 8).

Through the SDK's `Admin` and the `weir group` CLI, as an operator would:
a group that does not exist is GROUP_NOT_FOUND; with a stream-mode member
online, list and describe show the member, who owns each partition, the
committed offsets and the right lag, and a reset is refused with
GROUP_HAS_MEMBERS and changes nothing; with the member gone, describe still
shows offsets and lag, a reset moves them backwards, and a member that
joins afterwards reads from the reset offsets.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

import weir.aio
from tests.integration.test_cluster_replication import create_topic, wait_ready
from tests.support.broker_process import BrokerProcess
from tests.support.cluster_process import ClusterProcess
from weir.errors import FailedPreconditionError, GroupNotFoundError
from weir.group_types import GroupInfo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOPIC = "orders"
GROUP = "billing"
PARTITIONS = 3
RECORDS_PER_PARTITION = 10
COMMITTED = {0: 3, 1: 5, 2: 7}
DEADLINE_S = 30.0


def weir_cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "weir.server.cli", "--bootstrap", address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


async def cli_json(address: str, *args: str) -> Any:
    result = await asyncio.to_thread(weir_cli, address, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def cli_fails(address: str, *args: str, exit_code: int = 1) -> str:
    result = await asyncio.to_thread(weir_cli, address, *args)
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    return result.stderr


async def until(
    read: Callable[[], Awaitable[GroupInfo]], holds: Callable[[GroupInfo], bool]
) -> GroupInfo:
    """Reads until `holds` (a follower's end offsets and a leave land a moment later)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        group = await read()
        if holds(group):
            return group
        assert time.monotonic() < deadline, group
        # Polling is the point: a remote node's state signals nothing here.
        await asyncio.sleep(0.1)


def committed(group: GroupInfo) -> dict[int, int | None]:
    return {p.partition: p.committed_offset for p in group.partitions}


def lags(group: GroupInfo) -> dict[int, int]:
    return {p.partition: p.lag for p in group.partitions}


def ends(group: GroupInfo) -> dict[int, int]:
    return {p.partition: p.end_offset for p in group.partitions}


def full(group: GroupInfo) -> bool:
    return set(ends(group).values()) == {RECORDS_PER_PARTITION}


async def produce(bootstrap: Sequence[str]) -> None:
    async with weir.aio.Producer(list(bootstrap)) as producer:
        for partition in range(PARTITIONS):
            for i in range(RECORDS_PER_PARTITION):
                await producer.send(TOPIC, b"%d" % i, partition=partition)
        await producer.flush()


def consumer(bootstrap: Sequence[str]) -> weir.aio.Consumer:
    return weir.aio.Consumer(
        list(bootstrap),
        TOPIC,
        group=GROUP,
        mode="stream",
        start="earliest",
        auto_commit=False,
        request_timeout_ms=10_000,
    )


async def first_offsets(c: weir.aio.Consumer, count: int) -> dict[int, int]:
    """The first offset read on each partition, after `count` records."""
    first: dict[int, int] = {}
    async with asyncio.timeout(DEADLINE_S):
        for _ in range(count):
            record = await c.poll()
            assert record is not None
            first.setdefault(record.partition, record.offset)
    return first


async def exercise(bootstrap: Sequence[str], cli: str, coordinators: set[int]) -> None:
    await produce(bootstrap)
    async with weir.aio.Admin(list(bootstrap)) as admin:

        async def describe() -> GroupInfo:
            return await admin.describe_group(GROUP)

        # Nothing yet: GROUP_NOT_FOUND, from the SDK and the CLI.
        with pytest.raises(GroupNotFoundError):
            await admin.describe_group(GROUP)
        assert "GROUP_NOT_FOUND" in await cli_fails(cli, "group", "describe", GROUP)
        assert await admin.list_groups() == []

        # A member online, with offsets committed.
        member = consumer(bootstrap)
        await member.start()
        try:
            await first_offsets(member, 3)
            await until(describe, lambda g: len(g.members) == 1)
            assert sorted(member.assignment()) == list(range(PARTITIONS))
            assert await member.commit(COMMITTED) == COMMITTED
            online = await until(describe, lambda g: full(g) and committed(g) == COMMITTED)
            assert [m.member_id for m in online.members] == [member.member_id]
            assert online.members[0].topics == (TOPIC,) and online.generation >= 1
            assert {p.member_id for p in online.partitions} == {member.member_id}
            assert lags(online) == {p: RECORDS_PER_PARTITION - o for p, o in COMMITTED.items()}
            assert online.coordinator_id in coordinators
            described = await cli_json(cli, "group", "describe", GROUP)
            assert (
                described["lag"]
                == online.lag
                == 3 * RECORDS_PER_PARTITION - sum(COMMITTED.values())
            )
            assert [m["member_id"] for m in described["members"]] == [member.member_id]
            listed = await cli_json(cli, "group", "list")
            assert [(g["name"], g["member_count"], g["topics"]) for g in listed] == [
                (GROUP, 1, [TOPIC])
            ]

            # A reset is refused while the member is online, and changes nothing.
            with pytest.raises(FailedPreconditionError) as refused:
                await admin.reset_group_offsets(GROUP, TOPIC, "earliest")
            assert refused.value.reason == "GROUP_HAS_MEMBERS"
            # Exit code 2: the CLI's code for refused input (FAILED_PRECONDITION too).
            assert "GROUP_HAS_MEMBERS" in await cli_fails(
                cli, "group", "reset-offsets", GROUP, "--topic", TOPIC, "--to-earliest", exit_code=2
            )
            assert committed(await describe()) == COMMITTED
        finally:
            await member.close()

        # No member online: offsets and lag remain; the owners are gone.
        offline = await until(describe, lambda g: not g.members)
        assert committed(offline) == COMMITTED and full(offline)
        assert lags(offline) == {p: RECORDS_PER_PARTITION - o for p, o in COMMITTED.items()}
        assert {p.member_id for p in offline.partitions} == {""}
        summaries = await admin.list_groups()
        assert [(g.name, g.member_count, g.topics) for g in summaries] == [(GROUP, 0, (TOPIC,))]

        # The reset works now: backwards, through the SDK, then one partition by the CLI.
        assert await admin.reset_group_offsets(GROUP, TOPIC, "earliest") == {0: 0, 1: 0, 2: 0}
        assert await cli_json(
            cli, "group", "reset-offsets", GROUP, "--topic", TOPIC, "--to-offset", "4",
            "--partitions", "1",
        ) == {"1": 4}  # fmt: skip
        reset = await describe()
        assert committed(reset) == {0: 0, 1: 4, 2: 0}
        assert lags(reset) == {0: 10, 1: 6, 2: 10}

    # A member that joins now starts from the reset offsets.
    again = consumer(bootstrap)
    await again.start()
    try:
        assert await first_offsets(again, 26) == {0: 0, 1: 4, 2: 0}
    finally:
        await again.close()


def test_group_admin_on_a_single_node(broker: BrokerProcess) -> None:
    async def main() -> None:
        async with weir.aio.Admin(broker.address) as admin:
            await admin.create_topic(TOPIC, PARTITIONS)
        # A single node's coordinator is itself (node id 1 by default).
        await exercise([broker.address], broker.address, {1})

    asyncio.run(main())


def test_group_admin_on_three_nodes(cluster: ClusterProcess) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, PARTITIONS)
    addresses = [cluster.address(n) for n in cluster.node_ids]

    async def main() -> None:
        await exercise(addresses, cluster.address(3), set(cluster.node_ids))
        # Every node answers with the same coordinator, the group's leader.
        ids = set()
        for address in addresses:
            async with weir.aio.Admin(address) as admin:
                ids.add((await admin.describe_group(GROUP)).coordinator_id)
        assert len(ids) == 1

    asyncio.run(main())


def test_bad_group_names_are_refused_with_a_reason_and_change_nothing(
    broker: BrokerProcess,
) -> None:
    async def main() -> None:
        async with weir.aio.Admin(broker.address) as admin:
            await admin.create_topic(TOPIC, PARTITIONS)
            # The empty name names no group: refused like a bad name.
            for bad in ("", "x" * 256):
                with pytest.raises(weir.errors.InvalidArgumentError) as refused:
                    await admin.describe_group(bad)
                assert refused.value.reason == "INVALID_GROUP_NAME"
            for bad in ("", "x" * 256):
                with pytest.raises(weir.errors.InvalidArgumentError) as refused:
                    await admin.reset_group_offsets(bad, TOPIC, "earliest")
                assert refused.value.reason == "INVALID_GROUP_NAME"
            assert await admin.list_groups() == []

    asyncio.run(main())
