"""More than one host: a gateway in one Linux network namespace, a worker and a verifier in
another, joined by a veth pair, each namespace with its own address; TLS everywhere (a private
CA, certificates pinned in the genesis, which the gateway checks at each join). A client in the second namespace submits a task to the
gateway across the link; the nodes' directories are then audited together. Skipped, with the
reason, where network namespaces cannot be created (no root, no iproute2, no CAP_NET_ADMIN)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from trustgen.consensus.admission import Member, cert_pin, make_genesis
from trustgen.consensus.audit import audit_paths
from trustgen.consensus.identity import Identity
from trustgen.node.cluster import wait_ready
from trustgen.node.config import dump_config

pytestmark = pytest.mark.slow
NET = "trustgen-local"
GW_IP, PEER_IP = "10.77.0.1", "10.77.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture()
def namespaces():
    """Two namespaces joined by a veth pair: (gateway side, peer side). Names carry the pid so
    parallel runs on one machine do not collide."""
    tag = f"tg{os.getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    try:
        _ip("netns", "add", a)
    except (OSError, subprocess.CalledProcessError) as e:
        reason = getattr(e, "stderr", "") or str(e)
        pytest.skip(f"cannot create a network namespace: {reason.strip()}")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"{tag}x", "type", "veth", "peer", "name", f"{tag}y")
        for ns, dev, addr in ((a, f"{tag}x", GW_IP), (b, f"{tag}y", PEER_IP)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _certificates(d: pathlib.Path, hosts: dict[str, str]) -> None:
    """A private CA and, per node, a key and a certificate for its address."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-days", "2", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-subj", "/CN=tg-ca"
    )
    for name, ip in hosts.items():
        key, csr, pem, ext = (d / f"{name}.{x}" for x in ("key", "csr", "pem", "ext"))
        ext.write_text(f"subjectAltName=IP:{ip}\n")
        _openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(pem),
        )  # fmt: skip


def test_nodes_in_separate_namespaces_serve_and_audit_across_hosts(namespaces, tmp_path):
    ns_gw, ns_peer = namespaces
    nodes = {"gateway": (ns_gw, GW_IP, 7100), "worker": (ns_peer, PEER_IP, 7101), "verifier": (ns_peer, PEER_IP, 7102)}
    tls = tmp_path / "tls"
    tls.mkdir()
    _certificates(tls, {name: ip for name, (_, ip, _) in nodes.items()})
    keys = {}
    for name in nodes:
        keys[name] = Identity.generate()
        keys[name].save(tmp_path / name)
    members = [
        Member(keys[n].public_key, (n,), ip, cert_pin((tls / f"{n}.pem").read_bytes()))
        for n, (_, ip, _) in nodes.items()
    ]
    genesis = tmp_path / "genesis.bin"
    make_genesis(Identity.generate(), NET, members).save(genesis)
    gateway = f"{GW_IP}:{nodes['gateway'][2]}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    procs = {}
    try:
        for name, (ns, ip, port) in nodes.items():
            d = tmp_path / name
            cfg = {
                "name": name,
                "data_dir": str(d),
                "roles": [name],
                "listen": f"{ip}:{port}",
                "tls_cert": str(tls / f"{name}.pem"),
                "tls_key": str(tls / f"{name}.key"),
                "tls_ca": str(tls / "ca.pem"),
                "genesis": str(genesis),
                "threads": 1,
                "metrics_port": -1,
                **({"gateway": gateway} if name != "gateway" else {}),
            }
            (d / "node.toml").write_text(dump_config(cfg))
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "trustgen.cli", "node", "run"]
            log = open(d / "node.log", "ab")
            procs[name] = subprocess.Popen(
                [*cmd, "--config", str(d / "node.toml")], stdout=log, stderr=subprocess.STDOUT, env=env
            )
            if name == "gateway":
                wait_ready(d, procs[name], joined=False)
        for name in ("worker", "verifier"):
            assert wait_ready(tmp_path / name, procs[name])["address"] == f"{PEER_IP}:{nodes[name][2]}"
        submit = subprocess.run(
            ["ip", "netns", "exec", ns_peer, sys.executable, "-m", "trustgen.cli", "submit", "text", "Across hosts",
             "--gateway", gateway, "--tls-ca", str(tls / "ca.pem"), "--verifiers", "1", "--max-new-tokens", "8",
             "--wait", "--json", "--timeout", "120"],
            capture_output=True, text=True, timeout=180, env=env,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout + submit.stderr
        out = json.loads(submit.stdout)
        assert out["decision"] == "accept" and out["votes"][0]["verifier"] == keys["verifier"].node_id
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    reports = audit_paths([tmp_path / n for n in nodes])
    assert all(r.ok for r in reports), [r.violations for r in reports]
    assert {r.genesis for r in reports} == {reports[0].genesis} != {""}
