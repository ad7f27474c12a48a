"""Channels and server ports, secure unless plaintext was asked for."""

from __future__ import annotations

import asyncio
import pathlib
import ssl
from collections.abc import Sequence

import grpc

from trustgen.errors import UsageError
from trustgen.net.grpc_options import CHANNEL_OPTIONS, SERVER_OPTIONS


def read_pem(path: str, what: str) -> bytes:
    """A TLS file's bytes, or a one-line UsageError naming the option and the file."""
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}") from None


def channel(address: str, insecure: bool = False, ca_file: str = "") -> grpc.aio.Channel:
    if insecure:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    root = read_pem(ca_file, "TLS CA file") if ca_file else None
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root), options=CHANNEL_OPTIONS)


def server(interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS, interceptors=list(interceptors))


def add_port(srv: grpc.aio.Server, address: str, insecure: bool, cert: str = "", key: str = "") -> int:
    """Bind and return the actual port (address may say port 0)."""
    if insecure:
        return srv.add_insecure_port(address)
    creds = grpc.ssl_server_credentials([(read_pem(key, "TLS key"), read_pem(cert, "TLS certificate"))])
    return srv.add_secure_port(address, creds)


async def served_certificate(address: str, timeout: float) -> bytes:
    """The PEM certificate a TLS server at `address` presents (not verified: the caller compares
    it with a pin). Raises OSError when there is no TLS server there."""
    host, _, port = address.rpartition(":")
    pem = await asyncio.to_thread(ssl.get_server_certificate, (host.strip("[]"), int(port)), timeout=timeout)
    return pem.encode("ascii")
