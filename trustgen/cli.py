"""The `trustgen` command line. Each command is a thin shell over library functions; every
command that reports has --json (one object on stdout). User errors print one line, exit 2.

The commands live by group in cli_local (this machine alone) and cli_net (nodes); this module
assembles them in the order `--help` lists them, and keeps `main`."""

from __future__ import annotations

import pathlib
import sys

import typer

from trustgen.cli_local import audit, calibrate, explorer, generate_app, keys_app, verify
from trustgen.cli_net import blob_app, cluster_app, events, node_app, submit
from trustgen.cli_shared import out
from trustgen.cli_trust import network_app
from trustgen.errors import TrustgenError
from trustgen.train_cli import train_app

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Verifiable generative AI in trustless networks.",
)
app.add_typer(generate_app, name="generate")
app.add_typer(keys_app, name="keys")
app.add_typer(node_app, name="node")
app.add_typer(cluster_app, name="cluster")
app.add_typer(blob_app, name="blob")
app.add_typer(network_app, name="network")
app.add_typer(train_app, name="train")
# Top-level commands, in the order `--help` lists them (demo, below, comes last).
app.command("audit")(audit)
app.command("verify")(verify)
app.command("calibrate")(calibrate)
app.command("explorer")(explorer)
app.command("submit")(submit)
app.command("events")(events)


@app.command("demo")
def demo(
    as_json: bool = typer.Option(False, "--json"),
    workers: int = typer.Option(3, "--workers"),
    verifiers: int = typer.Option(3, "--verifiers"),
    keep: pathlib.Path | None = typer.Option(None, "--dir", help="Keep the cluster's files here."),
    fast: bool = typer.Option(False, "--fast", help="Text task on the embedded tiny-text model."),
) -> None:
    """The main job: a local network verifies a text and an image task, trains a checkpoint, then audits itself."""
    from trustgen.node.demo import run_demo

    ok = run_demo(out, as_json, workers, verifiers, keep, fast)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except TrustgenError as e:
        sys.stderr.write("error: " + " ".join(str(e).split()) + "\n")  # one line, whatever the message holds
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
