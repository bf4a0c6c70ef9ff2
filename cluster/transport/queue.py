"""The bounded send queue of one peer: encoded messages waiting for a frame.

Bounded both in messages and in bytes. `put` never waits: when either bound
would be exceeded the message is refused and the caller counts a drop. Raft
tolerates lost messages (a leader resends appends after a heartbeat answer
or a rejected probe; candidates retry at the next election timeout), so
dropping is the right answer to a slow or absent peer, and the host's turn
never stalls on the network.
"""

from __future__ import annotations

from collections import deque


class SendQueue:
    def __init__(self, bytes_max: int, messages_max: int) -> None:
        assert bytes_max > 0 and messages_max > 0
        self.bytes_max = bytes_max
        self.messages_max = messages_max
        self._parts: deque[bytes] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._parts)

    def put(self, part: bytes) -> bool:
        """Queue one encoded message; False (nothing queued) when it does not fit."""
        if len(self._parts) >= self.messages_max or self.bytes + len(part) > self.bytes_max:
            return False
        self._parts.append(part)
        self.bytes += len(part)
        return True

    def take(self, frame_bytes_max: int) -> list[bytes]:
        """The oldest messages whose sizes add up to at most `frame_bytes_max`.

        A message larger than the bound on its own is taken alone, so a large
        snapshot or append is never stuck behind the frame size.
        """
        taken: list[bytes] = []
        size = 0
        parts = self._parts
        while parts and (not taken or size + len(parts[0]) <= frame_bytes_max):
            part = parts.popleft()
            size += len(part)
            taken.append(part)
        self.bytes -= size
        return taken

    def clear(self) -> tuple[int, int]:
        """Empties the queue; returns (messages, bytes) removed."""
        removed = (len(self._parts), self.bytes)
        self._parts.clear()
        self.bytes = 0
        return removed
