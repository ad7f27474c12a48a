"""Fetch a blob by digest from whichever peers have it, checking every chunk on arrival.

The manifest (chunk hashes) must hash to the digest asked for; each streamed chunk must match
its hash. A peer that sends a bad manifest or a bad chunk is dropped and the download continues
from the same chunk with the next peer, so one lying peer costs at most one chunk.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import grpc

from trustgen.errors import TrustgenError
from trustgen.gossip.blobs import BlobStore, Manifest, blob_digest
from trustgen.net import grpc_options as opts
from trustgen.net.auth import make_request
from trustgen.net.peers import Peers, full_method

log = logging.getLogger("trustgen.node")


class BlobFetchError(TrustgenError):
    pass


async def _manifest(
    peers: Peers, address: str, digest: str, max_size: int | None = None
) -> tuple[Manifest | None, bool]:
    """The peer's manifest for `digest`, and whether the peer lied (a manifest that does not
    hash to the digest). A peer without the blob, or out of reach, has not lied; nor has one whose
    blob is larger than `max_size` (the digest is right, the blob is just not wanted)."""
    try:
        reply = await peers.call(address, "Blobs", "Manifest", {"digest": digest}, timeout=opts.DEADLINE_FETCH)
    except grpc.aio.AioRpcError:
        return None, False
    m = Manifest(reply.digest, reply.size, list(reply.chunks))
    if max_size is not None and m.size > max_size:
        return None, False
    return (m, False) if m.digest == digest and m.valid() else (None, True)


async def fetch_blob(
    peers: Peers, digest: str, sources: list[str], store: BlobStore | None = None, max_size: int | None = None
) -> tuple[bytes, list[str]]:
    """Download `digest` from `sources` (addresses, tried in order; those without the blob are
    skipped). Returns the data and the sources dropped for serving bad data. With `max_size`, a
    blob whose manifest says it is larger is not downloaded (the manifest hashes to the digest,
    so the size it states is the blob's)."""
    dropped: list[str] = []
    manifest = None
    pool = list(sources)
    for address in list(pool):
        manifest, lied = await _manifest(peers, address, digest, max_size)
        if manifest is not None:
            break
        pool.remove(address)
        if lied:
            dropped.append(address)
    if manifest is None:
        raise BlobFetchError(f"no peer has a valid manifest for {digest}")
    chunks: list[bytes] = []
    n = len(manifest.chunks)
    for address in pool:
        if len(chunks) == n:
            break
        req = make_request(
            peers.identity, peers.network, full_method("Blobs", "Fetch"), {"digest": digest, "from_index": len(chunks)}
        )
        bad = False
        try:
            async for chunk in peers.stub(address, "Blobs").Fetch(req, timeout=opts.DEADLINE_FETCH):
                i = len(chunks)
                peers.bytes_received += chunk.ByteSize()
                if chunk.index != i or not manifest.chunk_ok(i, chunk.data):
                    log.warning("peer %s served a bad chunk %d of %s", address, chunk.index, digest[:12])
                    bad = True
                    break
                chunks.append(chunk.data)
                if len(chunks) == n:
                    break
        except grpc.aio.AioRpcError as e:
            log.info("peer %s stopped serving %s: %s", address, digest[:12], e.code().name)
        if bad:
            dropped.append(address)
    if len(chunks) != n:
        raise BlobFetchError(f"could not fetch all of {digest} ({len(chunks)}/{n} chunks)")
    data = b"".join(chunks)
    if blob_digest(data) != digest:  # cannot happen when every chunk checked out; belt and braces
        raise BlobFetchError(f"assembled blob does not match {digest}")
    if store is not None:
        store.put(data)
    return data, dropped


def sources_for(holders: list[bytes], members: Any, limit: int = 8) -> list[str]:
    """Addresses to ask for a blob: live peers known to have had it first (by key), then other
    live peers in random order, at most `limit`."""
    live = members.live()
    first = [p.address for k in holders for p in live if p.key == k]
    rest = [p.address for p in live if p.address not in first]
    random.shuffle(rest)
    return list(dict.fromkeys(first + rest))[:limit]
