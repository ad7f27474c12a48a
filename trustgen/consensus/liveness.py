"""Liveness facts a gateway writes to its own feed, and the rules an auditor holds them to.

- `TaskFailed` ends a task in failure, with a typed reason. A task has exactly one terminal state
  forever: one TaskFailed, or one accepting TaskFinalized (a rejecting certificate is not
  terminal: the task goes to another worker), never both and never two.
- `VerifierSkipped` records why an assigned verifier was passed over for the next standby in
  the beacon ranking, written before the certificate that names it skipped. For a missed
  deadline it says when the verifier was asked and the deadline it had, and its entry time
  (signed, like the rest) must not precede the deadline: a gateway cannot record a miss it could
  not yet have observed.
- `VerifierRestored` records that a verifier skipped as unresponsive answered again. In between,
  that gateway's assignments demote it (consensus/reputation.py), so the demotion, like the
  candidates it shapes, is replayed by the audit from the log.
"""

from __future__ import annotations

from trustgen.consensus.ledger import Entry

# Why a task failed: reason code -> meaning (docs/protocol.md). Transient faults (storage errors,
# unavailable peers, stalled verifiers) are retried until the task expires, so they end as
# "expired"; the other codes are failures no retry can cure.
FAILURE_REASONS: dict[str, str] = {
    "expired": "the task expired before a result was accepted (transient faults are retried until then)",
    "refused": "every worker that could run it refused the task as invalid",
    "rejected": "the gateway's attempts ran out and every result was rejected by its verifiers",
}

# Why a verifier was skipped.
DEADLINE = "deadline"  # asked, and no vote by its deadline
UNAVAILABLE = "unavailable"  # the call failed at once (refused connection, server error)
BAD_VOTE = "bad_vote"  # it answered with something that is not its valid vote on this result
NOT_ADMITTED = "not_admitted"  # its admission was revoked after the task was accepted
SKIP_REASONS = frozenset({DEADLINE, UNAVAILABLE, BAD_VOTE, NOT_ADMITTED})
# Skips that demote the verifier in the gateway's later assignments until it answers again.
UNRESPONSIVE = frozenset({DEADLINE, UNAVAILABLE})
MAX_DEADLINE_MS = 3_600_000
MAX_DETAIL = 512  # characters of a TaskFailed detail


def terminal_task(e: Entry, certificate: dict | None = None) -> bytes | None:
    """The task a terminal entry ends: a TaskFailed, or a TaskFinalized whose (already opened)
    `certificate` body accepts; None for any other entry."""
    if e.type == "TaskFailed":
        return e.body["task_id"]
    if e.type == "TaskFinalized" and certificate is not None and certificate["decision"] == "accept":
        return certificate["task_id"]
    return None


def failure_problem(e: Entry) -> str | None:
    """Why a TaskFailed body does not hold, or None."""
    if e.body["reason"] not in FAILURE_REASONS:
        return f"unknown failure reason {e.body['reason']!r}"
    if len(e.body["detail"]) > MAX_DETAIL:
        return f"failure detail longer than {MAX_DETAIL} characters"
    return None


def skip_problem(skip: Entry | None, result_time: int | None) -> str | None:
    """Why a VerifierSkipped record (None: there is none) does not justify skipping, or None.
    `result_time` is the entry time of the ResultCommitted the verifier was asked about."""
    if skip is None:
        return "no VerifierSkipped record precedes the certificate"
    b = skip.body
    if b["reason"] not in SKIP_REASONS:
        return f"unknown skip reason {b['reason']!r}"
    if not 0 < b["deadline_ms"] <= MAX_DEADLINE_MS:
        return f"deadline of {b['deadline_ms']} ms is out of range"
    if result_time is not None and b["asked"] < result_time:
        return "asked before the result was committed"
    if b["reason"] == DEADLINE and skip.time < b["asked"] + b["deadline_ms"]:
        return "recorded as missing its deadline before the deadline had passed"
    return None


class Unresponsive:
    """Per gateway, the verifiers its feed last recorded as unresponsive and not since restored.
    Fed entries in log order (the order the gateway wrote its own feed)."""

    def __init__(self) -> None:
        self._by_gateway: dict[bytes, set[bytes]] = {}

    def add(self, e: Entry) -> None:
        if e.type == "VerifierSkipped" and e.body["reason"] in UNRESPONSIVE:
            self._by_gateway.setdefault(e.feed, set()).add(e.body["verifier"])
        elif e.type == "VerifierRestored":
            self._by_gateway.get(e.feed, set()).discard(e.body["verifier"])

    def of(self, gateway: bytes | None) -> set[bytes]:
        return set(self._by_gateway.get(gateway, ())) if gateway is not None else set()
