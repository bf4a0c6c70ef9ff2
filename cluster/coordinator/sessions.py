"""Member liveness of a stream group, kept by the coordinator leader only.

docs/groups.md: liveness is not replicated. Every message from a member
(credit, commit, heartbeat) would otherwise be a log entry. The leader
keeps a deadline per member here, fed with `now_ms` from its clock, and
proposes an `Expire` command for each member whose deadline passed; the
eviction itself is then replicated like any command. A new leader starts
every member's session afresh (`Sessions.sync` on an empty tracker), so a
failover can delay an eviction by one session timeout but never causes one.
"""

from __future__ import annotations

from weir.cluster.coordinator.stream import StreamGroup


class Sessions:
    def __init__(self) -> None:
        # member id -> (session_timeout_ms, deadline_ms)
        self._sessions: dict[str, tuple[int, int]] = {}

    def sync(self, group: StreamGroup, now_ms: int) -> None:
        """Follows the group's membership after a command is applied (O(members)).

        A member new to the tracker starts a full session now; a member gone
        from the group is forgotten; a changed timeout applies from the next
        `seen`.
        """
        members = {m.member_id: m.session_timeout_ms for m in group.members()}
        for member_id in [m for m in self._sessions if m not in members]:
            del self._sessions[member_id]
        for member_id, timeout_ms in members.items():
            if member_id not in self._sessions:
                self._sessions[member_id] = (timeout_ms, now_ms + timeout_ms)
            else:
                self._sessions[member_id] = (timeout_ms, self._sessions[member_id][1])

    def seen(self, member_id: str, now_ms: int) -> None:
        """Anything arrived from the member: its session starts over.

        Also call it when a known member reconnects (its `Join`): `sync`
        keeps a known member's deadline as it was.
        """
        session = self._sessions.get(member_id)
        if session is not None:
            timeout_ms, deadline_ms = session
            self._sessions[member_id] = (timeout_ms, max(deadline_ms, now_ms + timeout_ms))

    def expired(self, now_ms: int) -> tuple[str, ...]:
        """The members to propose an `Expire` for, earliest deadline first, then by id."""
        due = [(d, m) for m, (_, d) in self._sessions.items() if d <= now_ms]
        return tuple(m for _, m in sorted(due))

    def next_deadline_ms(self) -> int | None:
        return min((d for _, d in self._sessions.values()), default=None)
