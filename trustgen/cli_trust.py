"""Commands of a network's admission authority: `network init | admit | revoke | show`.

Each writes a signed file: the genesis (network id, authorities, initial members, probation,
TLS pins), an admission (members admitted in one authority action) or a revocation. Nodes name
the genesis and their admissions in their config (`genesis`, `admissions`); a node that names a
revocation (`revocations`) carries it in its feed, and gossip brings it to every gateway.
"""

from __future__ import annotations

import pathlib
import re

import typer

from trustgen.cli_shared import emit, out
from trustgen.errors import TrustgenError

network_app = typer.Typer(no_args_is_help=True, help="Admission: a network's genesis, admissions and revocations.")

_KEY = re.compile(r"^[0-9a-f]{64}$")
MEMBER_HELP = "KEYHEX:ROLE[,ROLE...][:HOST] (roles: gateway, worker, verifier, trainer); repeat for more."


def _key(text: str) -> bytes:
    if not _KEY.match(text):
        raise TrustgenError(f"a key is 64 lowercase hex digits, got {text[:80]!r}")
    return bytes.fromhex(text)


def _members(specs: list[str], pins: dict[bytes, str]) -> list:
    from trustgen.consensus.admission import MAX_HOST, ROLES, Member

    members = []
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) < 2:
            raise TrustgenError(f"--member wants {MEMBER_HELP.split(' (')[0]}, got {spec[:80]!r}")
        key, roles = _key(parts[0]), [r for r in parts[1].split(",") if r]
        bad = [r for r in roles if r not in ROLES]
        if not roles or bad:
            raise TrustgenError(f"--member roles must be some of {', '.join(ROLES)}, got {parts[1][:80]!r}")
        host = parts[2] if len(parts) > 2 else ""
        if len(host) > MAX_HOST:
            raise TrustgenError(f"--member host is longer than {MAX_HOST} characters")
        members.append(Member(key, tuple(sorted(set(roles))), host, pins.get(key, "")))
    if not members:
        raise TrustgenError("name at least one --member")
    return members


def _pins(specs: list[str]) -> dict[bytes, str]:
    """KEYHEX=CERT.pem -> the certificate's pin (sha256 of its DER bytes), as the genesis carries it."""
    from trustgen.consensus.admission import cert_pin

    pins = {}
    for spec in specs:
        key, _, path = spec.partition("=")
        try:
            pins[_key(key)] = cert_pin(pathlib.Path(path).read_bytes())
        except OSError as e:
            raise TrustgenError(f"--tls-pin {key[:16]}: cannot read {path}: {e.strerror}") from None
    return pins


def _authority(home: pathlib.Path, create: bool = False):
    from trustgen.consensus.identity import KEY_FILE, Identity

    if create and not (home / KEY_FILE).exists():
        Identity.generate().save(home)
    return Identity.load(home)


def _write(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)  # never a half-written file under the asked-for name


@network_app.command("init")
def network_init(
    output: pathlib.Path = typer.Option(..., "-o", "--output", help="Where to write the genesis."),
    authority: pathlib.Path = typer.Option(..., "--authority", help="The founder's key home (created if empty)."),
    member: list[str] = typer.Option(..., "--member", help=MEMBER_HELP),
    other_authority: list[str] = typer.Option([], "--add-authority", help="KEYHEX of another authority."),
    tls_pin: list[str] = typer.Option([], "--tls-pin", help="KEYHEX=CERT.pem: pin a member's TLS certificate."),
    probation: int = typer.Option(5, "--probation", help="Majority agreements a later verifier needs."),
    network: str = typer.Option("trustgen-local", "--network"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a network's genesis, signed by the founder (an authority)."""
    from trustgen.consensus.admission import MAX_PROBATION, make_genesis

    if not 0 <= probation <= MAX_PROBATION:
        raise TrustgenError(f"--probation must be in [0, {MAX_PROBATION}]")
    founder = _authority(authority, create=True)
    g = make_genesis(founder, network, _members(member, _pins(tls_pin)), [_key(k) for k in other_authority], probation)
    _write(output, g.wire())
    info = {"genesis": g.id.hex(), "network": network, "founder": founder.node_id, "members": len(g.members)}
    emit(info, as_json) if as_json else out.print(f"genesis {g.id.hex()[:16]} of {network} -> {output}")


@network_app.command("admit")
def network_admit(
    genesis: pathlib.Path = typer.Option(..., "--genesis"),
    authority: pathlib.Path = typer.Option(..., "--authority", help="An authority's key home."),
    member: list[str] = typer.Option(..., "--member", help=MEMBER_HELP),
    tls_pin: list[str] = typer.Option([], "--tls-pin", help="KEYHEX=CERT.pem"),
    output: pathlib.Path = typer.Option(..., "-o", "--output"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Admit members in one authority action (they are never assigned together where the pool
    allows); each names the file in its config's `admissions`."""
    from trustgen.consensus.admission import Genesis, make_admission, open_admission

    g = Genesis.load(genesis)
    ident = _authority(authority)
    if ident.public_key not in g.authorities:
        raise TrustgenError(f"{ident.node_id[:16]} is not an authority of genesis {g.id.hex()[:16]}")
    msg = make_admission(ident, g.network, _members(member, _pins(tls_pin)))
    open_admission(g, msg.wire())
    _write(output, msg.wire())
    info = {"admission": msg.id.hex(), "members": len(msg.body["members"]), "output": str(output)}
    emit(info, as_json) if as_json else out.print(f"admission {msg.id.hex()[:16]} -> {output}")


@network_app.command("revoke")
def network_revoke(
    genesis: pathlib.Path = typer.Option(..., "--genesis"),
    authority: pathlib.Path = typer.Option(..., "--authority", help="An authority's key home."),
    key: list[str] = typer.Option(..., "--key", help="KEYHEX of a key to revoke; repeat for more."),
    output: pathlib.Path = typer.Option(..., "-o", "--output"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Revoke keys for good; a node naming the file in `revocations` spreads it."""
    from trustgen.consensus.admission import MAX_MEMBERS, Genesis, make_revocation

    g = Genesis.load(genesis)
    ident = _authority(authority)
    if ident.public_key not in g.authorities:
        raise TrustgenError(f"{ident.node_id[:16]} is not an authority of genesis {g.id.hex()[:16]}")
    if len(key) > MAX_MEMBERS:
        raise TrustgenError(f"at most {MAX_MEMBERS} keys per revocation")
    msg = make_revocation(ident, g.network, [_key(k) for k in key])
    _write(output, msg.wire())
    info = {"revocation": msg.id.hex(), "keys": len(key), "output": str(output)}
    emit(info, as_json) if as_json else out.print(f"revocation {msg.id.hex()[:16]} -> {output}")


@network_app.command("show")
def network_show(genesis: pathlib.Path = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Verify a genesis and list its authorities and members."""
    from trustgen.consensus.admission import Genesis

    g = Genesis.load(genesis)
    info = {
        "genesis": g.id.hex(),
        "network": g.network,
        "probation": g.probation,
        "authorities": sorted(a.hex() for a in g.authorities),
        "members": [{"key": m.key.hex(), "roles": list(m.roles), "host": m.host, "cert": m.cert} for m in g.members],
    }
    if as_json:
        emit(info, True)
        return
    out.print(f"genesis {g.id.hex()} of {g.network}; probation {g.probation}", highlight=False)
    for m in g.members:
        out.print(f"  {m.key.hex()[:16]} {','.join(m.roles):<18} {m.host}", highlight=False)
