"""What the command modules share: the consoles, --json output, task parameters from options,
and the transport options of every command that talks to a node."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from trustgen.errors import TrustgenError
from trustgen.net.transport import read_pem

out = Console()
err = Console(stderr=True, soft_wrap=True)


def emit(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")


def task_params(kind: str, **options: Any) -> Any:
    """A task kind's parameters from command-line options (each kind takes the options it knows).
    Unknown kinds and invalid values raise UsageError: one line, exit 2."""
    from trustgen.engines.kinds import engine_kind

    k = engine_kind(kind)
    return k.parse_params({name: options[name] for name in k.param_names() if name in options})


# The options of every command that talks to a node.
INSECURE = typer.Option(False, "--insecure", help="Plaintext gRPC (loopback, tests).")
TLS_CA = typer.Option("", "--tls-ca", help="CA certificate for TLS.")


def check_transport(insecure: bool, tls_ca: str) -> None:
    if not insecure and not tls_ca:
        raise TrustgenError("give --tls-ca FILE, or --insecure for plaintext gRPC")
    if not insecure:
        read_pem(tls_ca, "--tls-ca file")  # before connecting: a missing file is one line, exit 2
