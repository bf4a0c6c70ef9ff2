"""The one test of "another node made this call" (server/peer_calls.py).

Relayed Consume streams, forwarded DescribeTopic and forwarded QueueStats
calls each carry a metadata key of their kind; each kind's own test
(`is_relayed`, `describe_forwarded`, `is_forwarded`) is that helper with
its key, and one kind's mark never counts as another's.
"""

from __future__ import annotations

from typing import Any

import pytest

from weir.server.admin import DESCRIBE_FORWARDED_KEY, describe_forwarded
from weir.server.peer_calls import from_peer
from weir.server.queue_relay import RELAY_METADATA_KEY, is_relayed
from weir.server.queue_stats import FORWARDED_METADATA_KEY, is_forwarded

pytestmark = pytest.mark.timeout(10)


class _Context:
    def __init__(self, metadata: Any) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Any:
        return self._metadata


KINDS = [
    (RELAY_METADATA_KEY, is_relayed),
    (DESCRIBE_FORWARDED_KEY, describe_forwarded),
    (FORWARDED_METADATA_KEY, is_forwarded),
]


def test_a_call_carrying_the_key_came_from_a_peer() -> None:
    context = _Context((("user-agent", "grpc"), ("weir-x", "1")))
    assert from_peer(context, "weir-x")
    assert not from_peer(context, "weir-y")


def test_a_call_without_metadata_is_a_clients() -> None:
    assert not from_peer(object(), "weir-x")
    assert not from_peer(_Context(None), "weir-x")
    assert not from_peer(_Context(()), "weir-x")


@pytest.mark.parametrize(("key", "check"), KINDS)
def test_each_kind_sees_only_its_own_mark(key: str, check: Any) -> None:
    assert check(_Context(((key, "1"),)))
    for other, _ in KINDS:
        if other != key:
            assert not check(_Context(((other, "1"),)))
    assert not check(object())
