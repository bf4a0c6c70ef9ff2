"""Stream mode in the blocking weir.Consumer: callbacks run in the polling thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import weir
from tests.unit.sdk.fakes import FakeChannel, FakeGroupCall, FakeNodes
from weir.aio import consumer as consumer_module

pytestmark = pytest.mark.timeout(10)


def test_callbacks_run_in_the_polling_thread_and_may_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeNodes({"fake:1": True}).install(monkeypatch)
    calls: list[FakeGroupCall] = []

    def open_call(channel: FakeChannel) -> FakeGroupCall:
        calls.append(FakeGroupCall(channel.address))
        return calls[-1]

    monkeypatch.setattr(consumer_module, "consume_call", open_call)
    events: list[tuple[str, list[int], threading.Thread]] = []
    committed: list[dict[int, int]] = []
    consumer: weir.Consumer

    def on_assign(partitions: list[int]) -> None:
        events.append(("assign", partitions, threading.current_thread()))

    def on_revoke(partitions: list[int]) -> None:
        events.append(("revoke", partitions, threading.current_thread()))
        # A blocking call from inside the callback: it must not deadlock.
        committed.append(consumer.commit())

    consumer = weir.Consumer(
        "fake:1",
        "t",
        group="g",
        mode="stream",
        on_assign=on_assign,
        on_revoke=on_revoke,
        auto_commit=False,
    )
    call = calls[-1]

    def push(method: str, *args: Any) -> None:
        consumer._thread.loop.call_soon_threadsafe(getattr(call, method), *args)

    try:
        push("assign", "m-1", 1, [0, 1], {0: 0, 1: 0})
        push("batch", 0, 0, b"a0", b"a1")
        got = [consumer.poll(5.0) for _ in range(2)]
        assert [(r.partition, r.offset) for r in got if r] == [(0, 0), (0, 1)]
        push("assign", "m-1", 2, [1], None, [0])
        push("batch", 1, 0, b"b0")
        record = consumer.poll(5.0)
        assert record is not None and (record.partition, record.offset) == (1, 0)
        main = threading.current_thread()
        assert events == [("assign", [0, 1], main), ("revoke", [0], main)]
        assert committed == [{0: 2}]
        assert consumer.assignment() == [1] and consumer.generation == 2
        assert consumer.member_id == "m-1"
        # Partition 0 is gone from this layer's positions too.
        assert consumer.commit() == {1: 1}
    finally:
        consumer.close()
    # close() revoked the rest, in this thread, and the callback committed it.
    assert events[-1] == ("revoke", [1], threading.current_thread())
    assert committed[-1] == {1: 1}
