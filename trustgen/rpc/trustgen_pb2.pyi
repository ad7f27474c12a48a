from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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

class GossipFrame(_message.Message):
    __slots__ = ("body", "tag")
    BODY_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    tag: bytes
    def __init__(self, body: _Optional[bytes] = ..., tag: _Optional[bytes] = ...) -> None: ...

class GossipOp(_message.Message):
    __slots__ = ("have", "want", "push", "ack", "digest", "heads", "pull", "entries", "heads_of")
    HAVE_FIELD_NUMBER: _ClassVar[int]
    WANT_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEADS_OF_FIELD_NUMBER: _ClassVar[int]
    have: Have
    want: Want
    push: Entries
    ack: Ack
    digest: bytes
    heads: Heads
    pull: Range
    entries: Entries
    heads_of: HeadsOf
    def __init__(self, have: _Optional[_Union[Have, _Mapping]] = ..., want: _Optional[_Union[Want, _Mapping]] = ..., push: _Optional[_Union[Entries, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., digest: _Optional[bytes] = ..., heads: _Optional[_Union[Heads, _Mapping]] = ..., pull: _Optional[_Union[Range, _Mapping]] = ..., entries: _Optional[_Union[Entries, _Mapping]] = ..., heads_of: _Optional[_Union[HeadsOf, _Mapping]] = ...) -> None: ...

class Pos(_message.Message):
    __slots__ = ("feed", "seq", "hash", "feed_id")
    FEED_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    FEED_ID_FIELD_NUMBER: _ClassVar[int]
    feed: bytes
    seq: int
    hash: bytes
    feed_id: int
    def __init__(self, feed: _Optional[bytes] = ..., seq: _Optional[int] = ..., hash: _Optional[bytes] = ..., feed_id: _Optional[int] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("feed", "from_seq", "to_seq", "feed_id")
    FEED_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    FEED_ID_FIELD_NUMBER: _ClassVar[int]
    feed: bytes
    from_seq: int
    to_seq: int
    feed_id: int
    def __init__(self, feed: _Optional[bytes] = ..., from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ..., feed_id: _Optional[int] = ...) -> None: ...

class Have(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Pos]
    def __init__(self, items: _Optional[_Iterable[_Union[Pos, _Mapping]]] = ...) -> None: ...

class Want(_message.Message):
    __slots__ = ("ranges",)
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[Range]
    def __init__(self, ranges: _Optional[_Iterable[_Union[Range, _Mapping]]] = ...) -> None: ...

class Heads(_message.Message):
    __slots__ = ("same", "heads", "bucket_count", "bucket_digests")
    SAME_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNT_FIELD_NUMBER: _ClassVar[int]
    BUCKET_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    same: bool
    heads: _containers.RepeatedCompositeFieldContainer[Pos]
    bucket_count: int
    bucket_digests: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, same: _Optional[bool] = ..., heads: _Optional[_Iterable[_Union[Pos, _Mapping]]] = ..., bucket_count: _Optional[int] = ..., bucket_digests: _Optional[_Iterable[bytes]] = ...) -> None: ...

class HeadsOf(_message.Message):
    __slots__ = ("bucket_count", "buckets")
    BUCKET_COUNT_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    bucket_count: int
    buckets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, bucket_count: _Optional[int] = ..., buckets: _Optional[_Iterable[int]] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("payload", "sig")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    sig: bytes
    def __init__(self, payload: _Optional[bytes] = ..., sig: _Optional[bytes] = ...) -> None: ...

class Entries(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("stored", "duplicate", "equivocation", "refused")
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    EQUIVOCATION_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    duplicate: int
    equivocation: int
    refused: int
    def __init__(self, stored: _Optional[int] = ..., duplicate: _Optional[int] = ..., equivocation: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "roles", "network", "events_port", "metrics_port", "ledger_size", "version", "worker_batch")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PORT_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    LEDGER_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_BATCH_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    network: str
    events_port: int
    metrics_port: int
    ledger_size: int
    version: str
    worker_batch: int
    def __init__(self, node_id: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., network: _Optional[str] = ..., events_port: _Optional[int] = ..., metrics_port: _Optional[int] = ..., ledger_size: _Optional[int] = ..., version: _Optional[str] = ..., worker_batch: _Optional[int] = ...) -> None: ...

class TrainingReply(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    def __init__(self, body: _Optional[bytes] = ...) -> None: ...
