"""Calls one node makes of another on the public port, marked so they never chain.

A node that relays a Consume stream, forwards a Produce stream's parts,
asks another for a partition's DescribeTopic or forwards a QueueStats
request sets a gRPC metadata key of
the call's kind (value "1"); the node asked answers from what it holds
itself and never passes such a call on again. `from_peer` is the one test
of that mark; each kind keeps its own key, so one kind's mark says nothing
of another's.
"""

from __future__ import annotations

from typing import Any


def from_peer(context: Any, key: str) -> bool:
    """Whether this call carries `key` in its metadata: another node made it.

    A context without `invocation_metadata` (a test's stand-in) is a
    client's call.
    """
    metadata = getattr(context, "invocation_metadata", None)
    if metadata is None:
        return False
    return any(k == key for k, _ in metadata() or ())


__all__ = ["from_peer"]
