"""The `trustgen` command line. Each command is a thin shell over library functions; every
command that reports has --json (one object on stdout). User errors print one line, exit 2."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Optional

import typer
from rich.console import Console

from trustgen.errors import TrustgenError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Verifiable generative AI in trustless networks.")
generate_app = typer.Typer(no_args_is_help=True, help="One local generation, no network.")
app.add_typer(generate_app, name="generate")
keys_app = typer.Typer(no_args_is_help=True, help="Ed25519 node identities.")
app.add_typer(keys_app, name="keys")

out = Console()
err = Console(stderr=True, soft_wrap=True)


def emit(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")


@generate_app.command("text")
def generate_text(
    prompt: str = typer.Argument(..., help="The prompt."),
    model: str = typer.Option("tiny-text", help="Embedded name, directory[@sha256:HEX] or hub id."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    decoding: str = typer.Option("greedy", help="greedy | beam | sample"),
    num_beams: int = typer.Option(4, "--num-beams"),
    seed: int = typer.Option(0),
    temperature: float = typer.Option(1.0),
    top_k: int = typer.Option(0, "--top-k"),
    top_p: float = typer.Option(1.0, "--top-p"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    threads: Optional[int] = typer.Option(None, help="CPU threads (recorded in the profile)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate text locally with controlled determinism."""
    from trustgen.node.generate import run_text
    from trustgen.node.params import TextParams

    params = TextParams(prompt=prompt, max_new_tokens=max_new_tokens, decoding=decoding,
                        num_beams=num_beams, seed=seed, temperature=temperature, top_k=top_k,
                        top_p=top_p)
    result = run_text(model, params, device=device, dtype=dtype, threads=threads)
    if as_json:
        emit(result, True)
    else:
        out.print(result["text"], markup=False, highlight=False)
        err.print(f"[dim]{len(result['token_ids'])} tokens, {result['finish_reason']}; "
                  f"output {result['output_digest'][:23]}…, model {result['model_digest'][:23]}…[/]")


@generate_app.command("image")
def generate_image(
    prompt: str = typer.Argument(..., help="The prompt."),
    model: str = typer.Option("tiny-image", help="Embedded name, directory[@sha256:HEX] or hub id."),
    seed: int = typer.Option(0),
    steps: int = typer.Option(20),
    guidance: float = typer.Option(3.0),
    height: int = typer.Option(32),
    width: int = typer.Option(32),
    scheduler: str = typer.Option("ddim", help="ddim | euler | euler_ancestral | dpmsolver | pndm | ddpm"),
    output: Optional[pathlib.Path] = typer.Option(None, "-o", "--output", help="PNG file to write."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    threads: Optional[int] = typer.Option(None, help="CPU threads (recorded in the profile)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate an image locally with controlled determinism."""
    from trustgen.node.generate import run_image
    from trustgen.node.params import ImageParams

    params = ImageParams(prompt=prompt, seed=seed, steps=steps, guidance=guidance, height=height,
                         width=width, scheduler=scheduler)
    result = run_image(model, params, output, device=device, dtype=dtype, threads=threads)
    if as_json:
        emit(result, True)
    else:
        out.print(f"wrote {result['image_path']} ({result['width']}x{result['height']}); "
                  f"pixels {result['output_digest'][:23]}…", highlight=False)


def _passphrase(env_var: Optional[str]) -> Optional[bytes]:
    import os

    if env_var is None:
        return None
    value = os.environ.get(env_var)
    if not value:
        raise TrustgenError(f"environment variable {env_var} is empty or unset")
    return value.encode()


@keys_app.command("new")
def keys_new(
    home: pathlib.Path = typer.Option(..., "--home", help="Node home directory."),
    passphrase_env: Optional[str] = typer.Option(
        None, "--passphrase-env", help="Encrypt the key with the passphrase in this variable."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a new identity (key file mode 0600). Refuses to overwrite one."""
    from trustgen.consensus.identity import KEY_FILE, Identity

    if (home / KEY_FILE).exists():
        raise TrustgenError(f"{home / KEY_FILE} already exists; refusing to overwrite a key")
    ident = Identity.generate()
    path = ident.save(home, _passphrase(passphrase_env))
    info = {"node_id": ident.node_id, "key_file": str(path), "encrypted": passphrase_env is not None}
    emit(info, as_json) if as_json else out.print(f"node id {ident.node_id}\nkey file {path} (mode 0600)")


@keys_app.command("show")
def keys_show(
    home: pathlib.Path = typer.Option(..., "--home", help="Node home directory."),
    passphrase_env: Optional[str] = typer.Option(None, "--passphrase-env"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the public identity of a node home (never the private key)."""
    from trustgen.consensus.identity import KEY_FILE, Identity

    ident = Identity.load(home, _passphrase(passphrase_env))
    info = {"node_id": ident.node_id, "key_file": str(home / KEY_FILE)}
    emit(info, as_json) if as_json else out.print(f"node id {ident.node_id}")


@app.command("audit")
def audit(
    path: pathlib.Path = typer.Argument(..., help="A node data directory or a ledger.db file."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify every feed, link, signature, assignment, decision and commitment. Exit 0 when
    clean, 1 on violations, 2 on unusable input."""
    from trustgen.consensus.audit import audit_path
    from trustgen.node.report import print_audit

    reports = audit_path(path)
    ok = all(r.ok for r in reports)
    if as_json:
        emit({"ok": ok, "ledgers": [r.to_dict() for r in reports]}, True)
    else:
        print_audit(out, reports)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except TrustgenError as e:
        sys.stderr.write(f"error: {e}\n")  # one line, never wrapped
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
