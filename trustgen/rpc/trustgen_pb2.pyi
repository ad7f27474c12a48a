from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SignedRequest(_message.Message):
    __slots__ = ("payload", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("task_id", "state")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    state: str
    def __init__(self, task_id: _Optional[bytes] = ..., state: _Optional[str] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("task_id", "state", "detail", "attempt", "result", "votes", "certificate", "output", "decision")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    state: str
    detail: str
    attempt: int
    result: bytes
    votes: _containers.RepeatedScalarFieldContainer[bytes]
    certificate: bytes
    output: bytes
    decision: str
    def __init__(self, task_id: _Optional[bytes] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ..., attempt: _Optional[int] = ..., result: _Optional[bytes] = ..., votes: _Optional[_Iterable[bytes]] = ..., certificate: _Optional[bytes] = ..., output: _Optional[bytes] = ..., decision: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("ledger_size",)
    LEDGER_SIZE_FIELD_NUMBER: _ClassVar[int]
    ledger_size: int
    def __init__(self, ledger_size: _Optional[int] = ...) -> None: ...

class ExecuteReply(_message.Message):
    __slots__ = ("result", "output")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    result: bytes
    output: bytes
    def __init__(self, result: _Optional[bytes] = ..., output: _Optional[bytes] = ...) -> None: ...

class CheckReply(_message.Message):
    __slots__ = ("vote",)
    VOTE_FIELD_NUMBER: _ClassVar[int]
    vote: bytes
    def __init__(self, vote: _Optional[bytes] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class BlobManifest(_message.Message):
    __slots__ = ("digest", "size", "chunks")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    chunks: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., chunks: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GossipReply(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "roles", "network", "events_port", "metrics_port", "ledger_size", "version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PORT_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    LEDGER_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    network: str
    events_port: int
    metrics_port: int
    ledger_size: int
    version: str
    def __init__(self, node_id: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., network: _Optional[str] = ..., events_port: _Optional[int] = ..., metrics_port: _Optional[int] = ..., ledger_size: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...
