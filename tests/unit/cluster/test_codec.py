"""The wire codec maps every Raft message exactly, and rejects what a peer should never send."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from weir.cluster.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from weir.cluster.transport import PeerMisbehavedError, codec
from weir.cluster.v1 import peer_pb2 as pb

pytestmark = pytest.mark.timeout(30)

U64_MAX = (1 << 64) - 1


def _round_trip(m: Message) -> Message:
    wire = codec.message_to_proto(m).SerializeToString()
    return codec.message_from_proto(pb.RaftMessage.FromString(wire))


def _everything(kind: MessageType) -> Message:
    """A message of `kind` with every field away from its default."""
    return Message(
        type=kind,
        to=3,
        frm=U64_MAX,
        term=1 << 40,
        index=12345,
        log_term=7,
        entries=(
            Entry(7, 12346, EntryType.NORMAL, b"record batch"),
            Entry(7, 12347, EntryType.NOOP),
            Entry(8, 12348, EntryType.CONFIG, b"\x00\x01"),
        ),
        commit=12000,
        reject=True,
        hint_index=99,
        hint_term=6,
        snapshot=Snapshot(
            SnapshotMeta(11000, 5, ConfState(frozenset({1, 2, 3}), frozenset({4, 9}))),
            b"state",
        ),
        transfer=True,
    )


def test_the_codec_knows_every_message_field() -> None:
    """A field added to Message must be added to the wire too; this fails until it is."""
    names = {f.name for f in dataclasses.fields(Message)}
    assert names == {
        "type",
        "to",
        "frm",
        "term",
        "index",
        "log_term",
        "entries",
        "commit",
        "reject",
        "hint_index",
        "hint_term",
        "snapshot",
        "transfer",
    }
    assert {f.name for f in dataclasses.fields(Entry)} == {"term", "index", "type", "data"}


@pytest.mark.parametrize("kind", list(MessageType))
def test_every_field_of_every_type_round_trips(kind: MessageType) -> None:
    full = _everything(kind)
    assert _round_trip(full) == full
    bare = Message(kind, to=2, frm=1, term=0)
    assert _round_trip(bare) == bare


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Message)])
def test_each_field_alone_round_trips(field: str) -> None:
    """Each field away from its default, the others at theirs: nothing leaks or is lost."""
    full = _everything(MessageType.APPEND)
    m = dataclasses.replace(Message(MessageType.APPEND, 0, 0, 0), **{field: getattr(full, field)})
    assert _round_trip(m) == m


@pytest.mark.parametrize("kind", list(EntryType))
def test_entry_types_and_sizes_round_trip(kind: EntryType) -> None:
    for data in (b"", b"\x00", bytes(range(256)) * 4, b"\xff" * (3 << 20)):
        m = Message(MessageType.APPEND, 2, 1, 4, index=9, entries=(Entry(4, 10, kind, data),))
        back = _round_trip(m)
        assert back == m
        assert type(back.entries[0].data) is bytes


def test_snapshots_round_trip_with_their_configuration() -> None:
    confs = [
        ConfState(frozenset()),
        ConfState(frozenset({1})),
        ConfState(frozenset({1, 2, 3}), frozenset({4})),
        ConfState(frozenset({5}), frozenset({5})),  # representable, so mapped as is
    ]
    for conf, data in itertools.product(confs, (b"", b"s" * 100_000)):
        snap = Snapshot(SnapshotMeta(index=0, term=0, conf=conf), data)
        m = Message(MessageType.SNAPSHOT, 2, 1, 3, snapshot=snap)
        assert _round_trip(m) == m
    # A default-valued snapshot is still present on the wire, not lost.
    empty = Message(MessageType.SNAPSHOT, 2, 1, 3, snapshot=Snapshot(SnapshotMeta(0, 0, confs[0])))
    assert _round_trip(empty).snapshot is not None


def test_frames_assembled_from_parts_equal_generated_encoding() -> None:
    items = [(g, _everything(kind)) for g, kind in enumerate(MessageType)]
    items.append((U64_MAX, Message(MessageType.HEARTBEAT, 2, 1, 1)))
    items.append(
        (300, Message(MessageType.APPEND, 2, 1, 1, entries=(Entry(1, 1, data=b"x" * 200_000),)))
    )
    frame = codec.batch_frame([codec.encode_part(g, m) for g, m in items])
    generated = pb.ExchangeRequest(
        batch=pb.Batch(
            messages=[
                pb.GroupMessage(group_id=g, message=codec.message_to_proto(m)) for g, m in items
            ]
        )
    ).SerializeToString()
    assert frame == generated
    decoded = codec.decode_request(frame)
    assert isinstance(decoded, codec.Batch)
    assert list(decoded.messages) == items
    assert codec.decode_request(codec.batch_frame([])) == codec.Batch(())


def test_hello_and_heartbeat_frames() -> None:
    assert codec.decode_request(codec.hello_frame("c1", 4, 5)) == codec.Hello("c1", 4, 5)
    assert codec.decode_request(codec.heartbeat_frame(77)) == codec.Heartbeat(77)
    assert codec.decode_response(codec.hello_response("c1", 5)) == codec.Hello("c1", 5, 0)


def _frame_with(message: pb.RaftMessage) -> bytes:
    batch = pb.Batch(messages=[pb.GroupMessage(group_id=1, message=message)])
    return pb.ExchangeRequest(batch=batch).SerializeToString()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xff\xff", id="not-protobuf"),
        pytest.param(b"\x12\x05\x0a\x03", id="truncated"),
        pytest.param(b"", id="empty-frame"),
        pytest.param(_frame_with(pb.RaftMessage()), id="unspecified-type"),
        pytest.param(_frame_with(pb.RaftMessage(type=999)), id="unknown-type"),  # type: ignore[arg-type]
        pytest.param(
            _frame_with(
                pb.RaftMessage(type=pb.MESSAGE_TYPE_APPEND, entries=[pb.Entry(term=1, index=1)])
            ),
            id="entry-without-type",
        ),
        pytest.param(
            _frame_with(
                pb.RaftMessage(type=pb.MESSAGE_TYPE_SNAPSHOT, snapshot=pb.Snapshot(data=b"x"))
            ),
            id="snapshot-without-meta",
        ),
        pytest.param(
            pb.ExchangeRequest(
                batch=pb.Batch(messages=[pb.GroupMessage(group_id=3)])
            ).SerializeToString(),
            id="group-message-without-message",
        ),
    ],
)
def test_malformed_frames_are_peer_misbehaviour(data: bytes) -> None:
    with pytest.raises(PeerMisbehavedError):
        codec.decode_request(data)


def test_malformed_handshake_answers_are_peer_misbehaviour() -> None:
    for data in (b"\xff", b"", codec.hello_frame("c", 1, 2)[:-1]):
        with pytest.raises(PeerMisbehavedError):
            codec.decode_response(data)
