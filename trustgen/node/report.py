"""Human-readable tables for the CLI (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from trustgen.consensus.audit import AuditReport


def print_audit(console: Console, reports: list[AuditReport]) -> None:
    table = Table(title="ledger audit")
    for col in ("ledger", "network", "feeds", "entries", "tasks", "commitments", "equivocations", "violations"):
        table.add_column(col)
    for r in reports:
        table.add_row(r.path, r.network, str(r.feeds), str(r.entries), str(r.tasks_checked),
                      str(r.commitments_checked), str(len(r.equivocations)),
                      "[green]0[/]" if r.ok else f"[red]{len(r.violations)}[/]")
    console.print(table)
    for r in reports:
        for v in r.violations:
            console.print(f"[red]violation[/] {r.path}: {v.where}: {v.code}: {v.detail}", highlight=False)
        for e in r.equivocations:
            console.print(f"[yellow]equivocation[/] feed {e['feed'][:16]} seq {e['seq']} "
                          f"(reported by {e['reported_by'][:16]})", highlight=False)
    clean = all(r.ok for r in reports)
    console.print("[green]audit clean[/]" if clean else "[red]audit found violations[/]")
