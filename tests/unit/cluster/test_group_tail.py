"""A leader's cached log-tail offset (`Group.next_offset`) names its entry by index and term.

The scenario the cut-off integration test once hit: a node leads and its
log ends at index 8 (offsets up to 23); it loses that uncommitted suffix to
another leader, whose index 8 ends at offset 40; it leads again with the
same last index. The cache must not answer 23. The group's Raft log and
storage are stand-ins holding only what `next_offset` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from weir.cluster.host.group import Group
from weir.cluster.raft.types import Entry

pytestmark = pytest.mark.timeout(10)


@dataclass
class _Log:
    last: int
    term: int
    unstable: list[Entry] = field(default_factory=list)

    def last_index(self) -> int:
        return self.last

    def last_term(self) -> int:
        return self.term


@dataclass
class _Raft:
    log: _Log


@dataclass
class _Raw:
    raft: _Raft


@dataclass
class _Storage:
    last: int
    next_offset: int

    def last_index(self) -> int:
        return self.last


def _group(log: _Log, storage: _Storage) -> Group:
    group = object.__new__(Group)
    group.raw = _Raw(_Raft(log))  # type: ignore[assignment]
    group.storage = storage  # type: ignore[assignment]
    group.tail_index, group.tail_term, group.tail_offset = -1, -1, 0
    return group


def test_the_same_last_index_over_other_entries_is_not_the_cached_tail() -> None:
    log = _Log(last=8, term=1)
    storage = _Storage(last=8, next_offset=23)
    group = _group(log, storage)
    assert group.next_offset() == 23
    # Another leader replaced the suffix: index 8 is now its entry (term 2).
    log.term = 2
    storage.next_offset = 40
    assert group.next_offset() == 40


def test_the_same_last_entry_is_served_from_the_cache() -> None:
    log = _Log(last=8, term=1)
    storage = _Storage(last=8, next_offset=23)
    group = _group(log, storage)
    assert group.next_offset() == 23
    storage.next_offset = 99  # not read again while the last entry is the same
    assert group.next_offset() == 23
