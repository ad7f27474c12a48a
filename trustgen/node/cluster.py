"""Local cluster launcher: nodes as separate processes on loopback, ephemeral ports.

Layout under DIR: one folder per node (`gateway`, `worker-1`, …, `verifier-1`, …) holding its
key (0600), `node.toml`, `ledger.db`, `blobs/`, `node.log` (the node's own log, rotated at a size
cap: `log_max_bytes`), `node.out` (what the process writes outside its log: a crash before the log
is set up, native libraries) and, while it runs, `ready.json`.
Each node binds port 0; after its first start the launcher pins the port it got in its config,
so a restarted node comes back at the same address. The launcher is also the network's admission
authority (its key in `authority/`): it writes `genesis.bin` admitting every node it creates in
its role, except the `outsiders` it is told to leave out (to show what admission refuses).
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

from trustgen.consensus.admission import DEFAULT_PROBATION, Genesis, Member, make_admission, make_genesis
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import DEFAULT_NETWORK
from trustgen.errors import TrustgenError
from trustgen.node.config import dump_config, load_config
from trustgen.node.daemon import READY_FILE, ready_info

START_TIMEOUT_S = 90.0
AUTHORITY_DIR = "authority"
GENESIS_FILE = "genesis.bin"
ADMISSION_FILE = "admission.bin"


class ClusterError(TrustgenError):
    pass


def node_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    root = pathlib.Path(root)
    dirs = [d for d in sorted(root.iterdir()) if (d / "node.toml").exists()] if root.is_dir() else []
    return sorted(dirs, key=lambda d: (d.name != "gateway", d.name))


def node_identity(d: pathlib.Path) -> Identity:
    """The node's key in `d`, created (0600) when there is none."""
    if not (pathlib.Path(d) / "node.key").exists():
        Identity.generate().save(d)
    return Identity.load(d)


def authority(root: pathlib.Path) -> Identity:
    """The cluster's admission authority (the key `trustgen network admit --authority` takes)."""
    return node_identity(pathlib.Path(root) / AUTHORITY_DIR)


def write_genesis(
    root: pathlib.Path, roles: dict[str, str], outsiders: tuple[str, ...] = (), probation: int = DEFAULT_PROBATION
) -> pathlib.Path:
    """`genesis.bin` admitting each named node in its role (keys created as needed), unless the
    cluster already has one."""
    path = pathlib.Path(root) / GENESIS_FILE
    if not path.exists():
        members = [
            Member(node_identity(pathlib.Path(root) / name).public_key, (role,))
            for name, role in roles.items()
            if name not in outsiders
        ]
        make_genesis(authority(root), DEFAULT_NETWORK, members, probation=probation).save(path)
    return path


def write_node(
    root: pathlib.Path, name: str, roles: list[str], gateway: str = "", admit: bool = True, **extra: Any
) -> pathlib.Path:
    """A node's folder and config. Under a genesis, a node it does not name is admitted by the
    cluster's authority (an admission file the node presents when it joins) unless `admit` is
    False."""
    d = pathlib.Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    me = node_identity(d).public_key
    path = pathlib.Path(root) / GENESIS_FILE
    if path.exists():
        extra.setdefault("genesis", str(path.resolve()))
        genesis = Genesis.load(path)
        if admit and roles and not all(any(m.key == me and r in m.roles for m in genesis.members) for r in roles):
            admission = make_admission(authority(root), genesis.network, [Member(me, tuple(roles))])
            (d / ADMISSION_FILE).write_bytes(admission.wire())
            extra.setdefault("admissions", [str((d / ADMISSION_FILE).resolve())])
    cfg = {
        "name": name,
        "data_dir": str(d.resolve()),
        "roles": roles,
        "listen": "127.0.0.1:0",
        "insecure": True,
        "threads": 1,
        "log_file": "node.log",
        **({"gateway": gateway} if gateway else {}),
        **extra,
    }
    (d / "node.toml").write_text(dump_config(cfg))
    return d


def start(node_dir: pathlib.Path, log_level: str = "INFO") -> subprocess.Popen:
    node_dir = pathlib.Path(node_dir)
    (node_dir / READY_FILE).unlink(missing_ok=True)
    log = open(node_dir / "node.out", "ab")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # A session of its own: the node outlives the launcher and ignores the launcher's Ctrl-C.
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trustgen.cli",
            "node",
            "run",
            "--config",
            str(node_dir / "node.toml"),
            "--log-level",
            log_level,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )


def wait_ready(
    node_dir: pathlib.Path, proc: subprocess.Popen | None = None, joined: bool = True, timeout: float = START_TIMEOUT_S
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = ready_info(node_dir)
        if info and (info.get("joined") or not joined):
            return info
        if proc is not None and proc.poll() is not None:
            tail = "".join(
                (pathlib.Path(node_dir) / f).read_text(errors="replace")[-2000:]
                for f in ("node.log", "node.out")
                if (pathlib.Path(node_dir) / f).exists()
            )
            raise ClusterError(f"node {pathlib.Path(node_dir).name} exited ({proc.returncode}):\n{tail}")
        time.sleep(0.1)
    raise ClusterError(f"node {pathlib.Path(node_dir).name} not ready after {timeout:.0f}s")


def pin_port(node_dir: pathlib.Path, address: str) -> None:
    path = pathlib.Path(node_dir) / "node.toml"
    text = path.read_text().replace('listen = "127.0.0.1:0"', f'listen = "{address}"')
    path.write_text(text)


def up(
    root: pathlib.Path,
    workers: int = 3,
    verifiers: int = 3,
    node_settings: dict[str, dict[str, Any]] | None = None,
    outsiders: tuple[str, ...] = (),
    probation: int = DEFAULT_PROBATION,
    trainers: int = 0,
) -> dict[str, Any]:
    """Create (or reuse) and start a cluster; returns {name: ready info}. `outsiders` are started
    but left out of the genesis: the gateway refuses their joins, so they are not waited for."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    settings = node_settings or {}
    if any((info := ready_info(d)) and _alive(info["pid"]) for d in node_dirs(root)):
        raise ClusterError(f"a cluster is already running in {root}")
    names = (
        [f"worker-{i + 1}" for i in range(workers)]
        + [f"verifier-{i + 1}" for i in range(verifiers)]
        + [f"trainer-{i + 1}" for i in range(trainers)]
    )
    write_genesis(root, {"gateway": "gateway", **{n: n.split("-")[0] for n in names}}, outsiders, probation)
    gw_dir = root / "gateway"
    if not (gw_dir / "node.toml").exists():
        write_node(root, "gateway", ["gateway"], admit="gateway" not in outsiders, **settings.get("gateway", {}))
    proc = start(gw_dir)
    gw = wait_ready(gw_dir, proc)
    pin_port(gw_dir, gw["address"])
    procs = {}
    for name in names:
        d = root / name
        if not (d / "node.toml").exists():
            role = name.split("-")[0]
            write_node(root, name, [role], gateway=gw["address"], admit=name not in outsiders, **settings.get(name, {}))
        procs[name] = start(d)
    ready = {"gateway": gw}
    try:
        for name in names:
            ready[name] = wait_ready(root / name, procs[name], joined=name not in outsiders)
            pin_port(root / name, ready[name]["address"])
    except ClusterError:
        down(root)
        for p in procs.values():  # a node still loading has no ready file for down() to find
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    return ready


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is not alive
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def status(root: pathlib.Path) -> list[dict[str, Any]]:
    out = []
    for d in node_dirs(root):
        info = ready_info(d) or {}
        cfg = load_config(d / "node.toml")
        pid = info.get("pid")
        out.append(
            {
                "name": d.name,
                "roles": cfg.roles,
                "address": info.get("address", ""),
                "pid": pid,
                "running": isinstance(pid, int) and pid > 0 and _alive(pid),
                "joined": info.get("joined", False),
                "adversary": cfg.adversary,
            }
        )
    return out


def down(root: pathlib.Path, timeout: float = 15.0) -> int:
    """SIGTERM every node (workers and verifiers first), wait, SIGKILL what is left."""
    pids = {}
    for d in reversed(node_dirs(root)):
        info = ready_info(d)
        if info and _alive(info["pid"]):
            os.kill(info["pid"], signal.SIGTERM)
            pids[d] = info["pid"]
        (d / READY_FILE).unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.05)
    for p in pids.values():
        if _alive(p):
            os.kill(p, signal.SIGKILL)
    return len(pids)


def restart(root: pathlib.Path, name: str, timeout: float = 15.0) -> dict[str, Any]:
    """Stop one node of the cluster (SIGTERM, then SIGKILL after `timeout`) and start it again on
    its pinned address; returns its ready info once it serves (and, if it joins a gateway, has)."""
    d = pathlib.Path(root) / name
    if not (d / "node.toml").is_file():
        known = ", ".join(x.name for x in node_dirs(pathlib.Path(root))) or "none"
        raise ClusterError(f"no node {name!r} in {root} (nodes: {known})")
    info = ready_info(d)
    if info and _alive(info["pid"]):
        os.kill(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(info["pid"]):
            time.sleep(0.05)
        if _alive(info["pid"]):
            os.kill(info["pid"], signal.SIGKILL)
    return wait_ready(d, start(d))


def ledger_heads(node_dir: pathlib.Path) -> dict[bytes, int]:
    """A running node's feed heads, read from its ledger file without disturbing it."""
    import sqlite3

    db = sqlite3.connect(f"file:{pathlib.Path(node_dir) / 'ledger.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT feed, MAX(seq) FROM entries GROUP BY feed").fetchall())
    finally:
        db.close()


def wait_replicated(root: pathlib.Path, timeout: float = 20.0) -> float | None:
    """Seconds until every node's ledger has the same heads (gossip), or None on timeout."""
    t0 = time.monotonic()
    dirs = node_dirs(root)
    while time.monotonic() - t0 < timeout:
        heads = [ledger_heads(d) for d in dirs]
        if all(h == heads[0] for h in heads[1:]):
            return time.monotonic() - t0
        time.sleep(0.2)
    return None
