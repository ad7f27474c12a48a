"""Human-readable tables for the CLI (rich)."""

from __future__ import annotations

import pathlib

from rich.console import Console
from rich.table import Table

from trustgen.consensus.audit import AuditReport


def print_audit(console: Console, reports: list[AuditReport]) -> None:
    table = Table(title="ledger audit")
    for col in ("ledger", "network", "feeds", "entries", "tasks", "commitments", "equivocations", "violations"):
        table.add_column(col)
    for r in reports:
        path = pathlib.Path(r.path)
        name = path.parent.name if path.name == "ledger.db" else path.name
        table.add_row(
            name,
            r.network,
            str(r.feeds),
            str(r.entries),
            str(r.tasks_checked),
            str(r.commitments_checked),
            str(len(r.equivocations)),
            "[green]0[/]" if r.ok else f"[red]{len(r.violations)}[/]",
        )
    console.print(table)
    for r in reports:
        for v in r.violations:
            console.print(f"[red]violation[/] {r.path}: {v.where}: {v.code}: {v.detail}", highlight=False)
        for e in r.equivocations:
            # Found by comparing replicas (it names the other one) or recorded as evidence.
            seen = f"differs from {e['replica']}" if "replica" in e else f"reported by {e['reported_by'][:16]}"
            console.print(
                f"[yellow]equivocation[/] {r.path}: feed {e['feed'][:16]} seq {e['seq']} ({seen})", highlight=False
            )
        if r.strangers:
            console.print(
                f"[yellow]strangers[/] {r.path}: {len(r.strangers)} feeds of keys never admitted "
                f"(kept as chains, not judged, counted nowhere): {', '.join(f[:16] for f in r.strangers[:4])}",
                highlight=False,
            )
        for b in r.behind:
            console.print(
                f"[yellow]behind[/] {r.path}: feed {b['feed'][:16]} ends at seq {b['seq']}; "
                f"{b['replica']} holds up to {b['replica_seq']} (not yet replicated, or cut off: one ledger cannot tell)",
                highlight=False,
            )
    clean = all(r.ok for r in reports)
    console.print("[green]audit clean[/]" if clean else "[red]audit found violations[/]")


def print_follow(console: Console, outcomes: list) -> None:
    """One line per ledger per round of `trustgen audit --follow`."""
    for o in outcomes:
        r = o.report
        verdict = "[green]clean[/]" if r.ok else f"[red]{len(r.violations)} violations[/]"
        console.print(
            f"{r.path}: {r.entries} entries (+{o.new_entries}, {o.mode}), {r.tasks_checked} tasks, "
            f"{len(r.equivocations)} equivocations: {verdict}",
            highlight=False,
        )


def votes_table(title: str, res: dict) -> Table:
    t = Table(title=title)
    for col in ("verifier", "vote", "method", "distance", "margin", "reason"):
        t.add_column(col)
    for v in res.get("votes", []):
        t.add_row(
            v["verifier"][:12],
            "[green]accept[/]" if v["accept"] else "[red]reject[/]",
            v["method"],
            f"{v['distance']:.4g}",
            f"{v['margin']:.4g}",
            v["reason"][:60],
        )
    return t


def print_task(console: Console, res: dict) -> None:
    state = res.get("state")
    if state != "final":
        console.print(f"task {res['task_id'][:16]}: {state} {res.get('detail', '')}", highlight=False)
        return
    console.print(
        f"task {res['task_id'][:16]}: [bold]{res['decision']}[/] by majority after "
        f"{res['attempts']} attempt(s), {res['latency_s']:.2f}s; worker {res['worker'][:12]}",
        highlight=False,
    )
    out = res["result"]["output"]
    if "text" in out:
        console.print(f"[bold]text:[/] {out['text']}", markup=True, highlight=False)
    if res.get("image_path"):
        console.print(f"[bold]image:[/] {res['image_path']} ({out['width']}x{out['height']})", highlight=False)
    console.print(votes_table("votes", res))
    console.print(
        f"certificate {res['certificate_id'][:16]} (checked: gateway signature, votes, majority)", highlight=False
    )
