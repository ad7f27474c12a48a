"""Audit checks of admission: which genesis a ledger runs under, whether its admissions and
revocations hold, and whether every task's candidate verifiers are what the gateway had to
choose at its beacon (admitted, probation and group rules applied to the log the beacon
commits to).

A past vote or result is held to "its signer was admitted for that role at some point": an
auditor of another gateway's feed does not know that gateway's log, so it cannot know when a
revocation reached it. The owner's own tasks are checked exactly, against its own log.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from trustgen.consensus.admission import AdmissionError, AdmissionState, Genesis
from trustgen.consensus.ledger import Entry
from trustgen.consensus.reputation import Reputation, task_candidates

Finding = tuple[Entry, str, str]  # (entry, code, detail)


def find_genesis(entries: list[Entry], network: str, pinned: Genesis | None) -> tuple[Genesis | None, list[Finding]]:
    """The genesis the ledger's nodes adopted (each once, in its own feed). They must all be the
    same one, and the pinned one when the auditor gives it; a ledger without any runs open."""
    found: list[Finding] = []
    genesis = pinned
    for e in entries:
        if e.type != "Genesis":
            continue
        try:
            g = Genesis.parse(e.body["genesis"], network)
        except AdmissionError as err:
            found.append((e, "bad_genesis", str(err)))
            continue
        if genesis is None:
            genesis = g
        elif g.id != genesis.id:
            what = "the pinned genesis" if pinned is not None else "the first genesis in this ledger"
            found.append((e, "genesis_mismatch", f"feed adopted genesis {g.id.hex()[:16]}, not {what}"))
    return genesis, found


def admission_findings(entries: list[Entry], state: AdmissionState) -> Iterator[Finding]:
    """Admitted and Revoked entries whose message does not hold (wrong signer, malformed)."""
    check = AdmissionState(state.genesis)
    for e in entries:
        problem = check.add(e)
        if problem is not None:
            yield e, "bad_admission", problem


def candidate_findings(
    entries: list[Entry],
    log: list[tuple[bytes, int, bytes]],
    owner: bytes,
    genesis: Genesis | None,
    network: str,
    tasks: list[tuple[Entry, Any]],
) -> Iterator[Finding]:
    """The owner's TaskAccepted entries whose candidates are not the ones its gateway had to
    choose: the admitted verifiers whose first verifier NodeJoined lies within the committed
    prefix of the log, under the probation, group and reputation rules."""
    index_of = {(f, s): i for i, (f, s, _) in enumerate(log)}
    want = expected_candidates(entries, index_of, owner, genesis, network, tasks)
    for e, _ in tasks:
        expected = want.get((e.feed, e.seq))
        if expected is not None and sorted(e.body["candidates"]) != expected:
            yield e, "bad_candidates", "candidates differ from the verifiers due at the beacon"


def expected_candidates(
    entries: list[Entry],
    index_of: dict[tuple[bytes, int], int],
    owner: bytes,
    genesis: Genesis | None,
    network: str,
    tasks: list[tuple[Entry, Any]],
) -> dict[tuple[bytes, int], list[bytes]]:
    """For each (TaskAccepted entry, task) of the owner, the candidates its gateway had to
    record: replaying the log in order up to the beacon's size, the state the gateway had."""
    todo = sorted(((acc, task) for acc, task in tasks if acc.feed == owner), key=lambda t: t[0].body["beacon_size"])
    rep = Reputation(network, AdmissionState(genesis))
    joined: set[bytes] = set()
    out: dict[tuple[bytes, int], list[bytes]] = {}
    pos = 0
    ordered = sorted(entries, key=lambda e: index_of[(e.feed, e.seq)])
    for acc, task in todo:
        size = acc.body["beacon_size"]
        while pos < len(ordered) and index_of[(ordered[pos].feed, ordered[pos].seq)] < size:
            e = ordered[pos]
            rep.add(e)
            if e.type == "NodeJoined" and "verifier" in e.body["roles"]:
                joined.add(e.feed)
            pos += 1
        out[(acc.feed, acc.seq)] = task_candidates(
            rep, acc.body["beacon"], task.id, joined, task.body["verifiers"], owner
        )
    return out
