"""MetaStore: the broker's durable key-value store (topics, consumer-group offsets).

Rows live in the `meta` database under a length-prefixed namespace. Reads run
on the event loop in a short read transaction; writes go through the
group-commit writer, so they are atomic, durable and share fsyncs with log
appends.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import keys
from .lmdbenv import Db, LmdbEnv
from .ops import MetaWriteOp
from .writer import GroupCommitWriter


class MetaStore:
    def __init__(self, env: LmdbEnv, writer: GroupCommitWriter) -> None:
        self._env = env
        self._writer = writer

    def get(self, namespace: str, key: bytes) -> bytes | None:
        with self._env.read() as txn:
            value = txn.get(Db.META, keys.meta_key(namespace, key))
            return None if value is None else bytes(value)

    def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Every row of `namespace` whose key starts with `prefix`, in key order.

        The result is materialised: meta rows are small and few (topics,
        group offsets) compared to the log.
        """
        seek = keys.meta_prefix(namespace, prefix)
        rows: list[tuple[bytes, bytes]] = []
        with self._env.read() as txn:
            for key, value in txn.iterate(Db.META, seek, None):
                if not key.startswith(seek):
                    break
                rows.append((keys.split_meta_key(key), bytes(value)))
        return rows

    async def write(
        self,
        puts: Sequence[tuple[str, bytes, bytes]] = (),
        deletes: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Applies all deletes, then all puts, in one transaction; returns once durable."""
        if not puts and not deletes:
            return
        op = MetaWriteOp(
            [(keys.meta_key(ns, key), value) for ns, key, value in puts],
            [keys.meta_key(ns, key) for ns, key in deletes],
        )
        await self._writer.run(op)
