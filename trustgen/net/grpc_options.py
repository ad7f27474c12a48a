"""The one place for gRPC settings: message limits, keepalive, retries, deadlines.

Keepalive on clients needs a matching minimum ping interval on servers, or servers answer
pings with GOAWAY; both sides are set from the same constants here.
"""

from __future__ import annotations

import json

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # requests and replies; blobs stream in 64 KiB chunks
KEEPALIVE_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000

# Deadlines (seconds) by call kind; every call passes one.
DEADLINE_INFO = 5.0
DEADLINE_SUBMIT = 10.0
DEADLINE_JOIN = 10.0
DEADLINE_EXECUTE = 120.0
DEADLINE_CHECK = 120.0
DEADLINE_FETCH = 60.0
DEADLINE_GOSSIP = 5.0

# Retries with exponential backoff and jitter (gRPC adds the jitter), on UNAVAILABLE only:
# anything else (bad request, auth failure, deadline) is not made better by repeating it.
_RETRY_POLICY = {
    "methodConfig": [
        {
            # Gossip and blob fetches are not retried: they fail over to another peer instead.
            "name": [{"service": "trustgen.v1.Gateway"}, {"service": "trustgen.v1.Node"}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.2s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 1),
    # Reconnect quickly after a peer comes back (the default backoff grows to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.service_config", json.dumps(_RETRY_POLICY)),
]
