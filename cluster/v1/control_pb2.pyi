from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ProposeControlRequest(_message.Message):
    __slots__ = ("command", "cluster_id")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    command: bytes
    cluster_id: str
    def __init__(self, command: _Optional[bytes] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class ProposeControlResponse(_message.Message):
    __slots__ = ("index", "not_leader", "leader_id")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    index: int
    not_leader: bool
    leader_id: int
    def __init__(self, index: _Optional[int] = ..., not_leader: _Optional[bool] = ..., leader_id: _Optional[int] = ...) -> None: ...
