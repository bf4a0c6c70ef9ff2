"""Maps Raft messages to the wire (`weir.cluster.v1`) and back, exactly.

`message_to_proto` / `message_from_proto` are a bijection on
`weir.cluster.raft.types.Message`: every field, every `MessageType` and
`EntryType`, snapshots with their metadata and configuration. Decoding
never trusts the peer: an unknown enum value, a snapshot without metadata
or bytes that are not protobuf raise `PeerMisbehavedError`, never anything
else.

Frames are assembled here too. A queued message is encoded once, when the
host hands it to `PeerTransport.send`, as a complete `Batch.messages` field
(tag, length, bytes): its size is then known exactly for the queue's byte
bound, and a frame is the concatenation of queued parts behind the
`ExchangeRequest.batch` field header, so no message is encoded or copied
twice. The result is ordinary protobuf that the generated parser reads;
`tests/unit/cluster/test_codec.py` checks that it equals what the generated
code would produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from weir.cluster.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from weir.cluster.v1 import peer_pb2 as pb

from .errors import PeerMisbehavedError

GroupId = int

_TYPE_TO_WIRE: dict[MessageType, pb.MessageType] = {
    MessageType.APPEND: pb.MESSAGE_TYPE_APPEND,
    MessageType.APPEND_RESP: pb.MESSAGE_TYPE_APPEND_RESP,
    MessageType.HEARTBEAT: pb.MESSAGE_TYPE_HEARTBEAT,
    MessageType.HEARTBEAT_RESP: pb.MESSAGE_TYPE_HEARTBEAT_RESP,
    MessageType.VOTE: pb.MESSAGE_TYPE_VOTE,
    MessageType.VOTE_RESP: pb.MESSAGE_TYPE_VOTE_RESP,
    MessageType.PRE_VOTE: pb.MESSAGE_TYPE_PRE_VOTE,
    MessageType.PRE_VOTE_RESP: pb.MESSAGE_TYPE_PRE_VOTE_RESP,
    MessageType.SNAPSHOT: pb.MESSAGE_TYPE_SNAPSHOT,
    MessageType.TIMEOUT_NOW: pb.MESSAGE_TYPE_TIMEOUT_NOW,
}
_TYPE_FROM_WIRE = {wire: kind for kind, wire in _TYPE_TO_WIRE.items()}

# The wire numbers differ from EntryType's on purpose: protobuf enums
# reserve 0 for "unspecified", so a peer that forgets the type is caught.
_ENTRY_TO_WIRE: dict[EntryType, pb.EntryType] = {
    EntryType.NORMAL: pb.ENTRY_TYPE_NORMAL,
    EntryType.NOOP: pb.ENTRY_TYPE_NOOP,
    EntryType.CONFIG: pb.ENTRY_TYPE_CONFIG,
}
_ENTRY_FROM_WIRE = {wire: kind for kind, wire in _ENTRY_TO_WIRE.items()}

assert set(_TYPE_TO_WIRE) == set(MessageType), "every MessageType needs a wire value"
assert set(_ENTRY_TO_WIRE) == set(EntryType), "every EntryType needs a wire value"

# Field numbers and wire type 2 (length-delimited) of the two fields that
# frames are assembled from: ExchangeRequest.batch (2) and Batch.messages (1).
_BATCH_FIELD_TAG = bytes([(2 << 3) | 2])
_MESSAGES_FIELD_TAG = bytes([(1 << 3) | 2])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def message_to_proto(m: Message) -> pb.RaftMessage:
    p = pb.RaftMessage(
        type=_TYPE_TO_WIRE[m.type],
        to=m.to,
        from_node=m.frm,
        term=m.term,
        index=m.index,
        log_term=m.log_term,
        commit=m.commit,
        reject=m.reject,
        hint_index=m.hint_index,
        hint_term=m.hint_term,
        transfer=m.transfer,
    )
    if m.entries:
        p.entries.extend(
            pb.Entry(term=e.term, index=e.index, type=_ENTRY_TO_WIRE[e.type], data=e.data)
            for e in m.entries
        )
    if m.snapshot is not None:
        meta = m.snapshot.meta
        p.snapshot.SetInParent()
        p.snapshot.meta.SetInParent()
        p.snapshot.meta.index = meta.index
        p.snapshot.meta.term = meta.term
        p.snapshot.meta.conf.SetInParent()
        p.snapshot.meta.conf.voters.extend(sorted(meta.conf.voters))
        p.snapshot.meta.conf.learners.extend(sorted(meta.conf.learners))
        p.snapshot.data = m.snapshot.data
    return p


def message_from_proto(p: pb.RaftMessage) -> Message:
    """Raises `PeerMisbehavedError` for anything our own encoder never produces."""
    kind = _TYPE_FROM_WIRE.get(p.type)
    if kind is None:
        raise PeerMisbehavedError(f"unknown Raft message type {p.type}")
    entries: tuple[Entry, ...] = ()
    if p.entries:
        entries = tuple(_entry_from_proto(e) for e in p.entries)
    snapshot = _snapshot_from_proto(p.snapshot) if p.HasField("snapshot") else None
    return Message(
        type=kind,
        to=p.to,
        frm=p.from_node,
        term=p.term,
        index=p.index,
        log_term=p.log_term,
        entries=entries,
        commit=p.commit,
        reject=p.reject,
        hint_index=p.hint_index,
        hint_term=p.hint_term,
        snapshot=snapshot,
        transfer=p.transfer,
    )


def _entry_from_proto(e: pb.Entry) -> Entry:
    kind = _ENTRY_FROM_WIRE.get(e.type)
    if kind is None:
        raise PeerMisbehavedError(f"unknown entry type {e.type} at index {e.index}")
    return Entry(term=e.term, index=e.index, type=kind, data=e.data)


def _snapshot_from_proto(s: pb.Snapshot) -> Snapshot:
    if not s.HasField("meta") or not s.meta.HasField("conf"):
        raise PeerMisbehavedError("snapshot without its metadata or configuration")
    conf = ConfState(frozenset(s.meta.conf.voters), frozenset(s.meta.conf.learners))
    return Snapshot(SnapshotMeta(index=s.meta.index, term=s.meta.term, conf=conf), s.data)


def encode_part(group_id: GroupId, m: Message) -> bytes:
    """One message as a complete `Batch.messages` field, ready to join into a frame."""
    body = pb.GroupMessage(group_id=group_id, message=message_to_proto(m)).SerializeToString()
    return _MESSAGES_FIELD_TAG + _varint(len(body)) + body


def batch_frame(parts: Sequence[bytes]) -> bytes:
    """An `ExchangeRequest` carrying a `Batch` made of parts from `encode_part`."""
    size = sum(len(p) for p in parts)
    return b"".join((_BATCH_FIELD_TAG, _varint(size), *parts))


def batch_frame_overhead(batch_bytes: int) -> int:
    """Bytes a frame adds around `batch_bytes` of parts."""
    return len(_BATCH_FIELD_TAG) + len(_varint(batch_bytes))


def hello_frame(cluster_id: str, node_id: int, peer_node_id: int) -> bytes:
    hello = pb.Hello(cluster_id=cluster_id, node_id=node_id, peer_node_id=peer_node_id)
    return pb.ExchangeRequest(hello=hello).SerializeToString()


def hello_response(cluster_id: str, node_id: int) -> bytes:
    hello = pb.Hello(cluster_id=cluster_id, node_id=node_id)
    return pb.ExchangeResponse(hello=hello).SerializeToString()


def heartbeat_frame(sequence: int) -> bytes:
    return pb.ExchangeRequest(heartbeat=pb.Heartbeat(sequence=sequence)).SerializeToString()


@dataclass(frozen=True, slots=True)
class Hello:
    cluster_id: str
    node_id: int
    peer_node_id: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    sequence: int


@dataclass(frozen=True, slots=True)
class Batch:
    messages: tuple[tuple[GroupId, Message], ...]


Frame = Hello | Heartbeat | Batch


def decode_request(data: bytes) -> Frame:
    """One frame from a sending peer; `PeerMisbehavedError` when it is not valid."""
    try:
        request = pb.ExchangeRequest.FromString(data)
    except DecodeError as exc:
        raise PeerMisbehavedError(f"frame does not decode: {exc}") from None
    kind = request.WhichOneof("kind")
    if kind == "batch":
        return Batch(
            tuple((gm.group_id, message_from_proto(gm.message)) for gm in request.batch.messages)
        )
    if kind == "heartbeat":
        return Heartbeat(request.heartbeat.sequence)
    if kind == "hello":
        h = request.hello
        return Hello(h.cluster_id, h.node_id, h.peer_node_id)
    raise PeerMisbehavedError("empty frame (no hello, batch or heartbeat)")


def decode_response(data: bytes) -> Hello:
    """The receiving peer's answer to our Hello."""
    try:
        response = pb.ExchangeResponse.FromString(data)
    except DecodeError as exc:
        raise PeerMisbehavedError(f"handshake answer does not decode: {exc}") from None
    if response.WhichOneof("kind") != "hello":
        raise PeerMisbehavedError("handshake answer without a hello")
    return Hello(response.hello.cluster_id, response.hello.node_id, response.hello.peer_node_id)
