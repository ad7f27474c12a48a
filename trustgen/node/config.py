"""Node configuration (TOML). One process is one node; roles are set here."""

from __future__ import annotations

import pathlib
import tomllib
from dataclasses import dataclass, field
from typing import Any

from trustgen.consensus.ledger import DEFAULT_NETWORK
from trustgen.errors import UsageError
from trustgen.node.adversary import check_mode
from trustgen.training.adversary import MODES as TRAIN_MODES

ROLES = ("gateway", "worker", "verifier", "trainer")
MAX_WORKER_BATCH = 64
MAX_BUDGET = 2**62


@dataclass
class NodeConfig:
    name: str
    data_dir: pathlib.Path
    roles: list[str]
    network: str = DEFAULT_NETWORK
    listen: str = "127.0.0.1:0"
    gateway: str = ""  # where workers and verifiers join
    bootstrap: list[str] = field(default_factory=list)
    text_model: str = "tiny-text"
    image_model: str = "tiny-image"
    threads: int = 1
    metrics_port: int = 0  # 0: ephemeral; -1: off
    events_port: int = 0
    explorer_port: int = 0  # the node's read-only explorer on 127.0.0.1 at this port; 0: off
    insecure: bool = False  # plaintext gRPC only when asked for
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    max_attempts: int = 3
    worker_timeout_s: float = 60.0
    verifier_timeout_s: float = 60.0
    adversary: str = ""  # a cheating mode (trustgen.node.adversary), for tests and demonstrations
    delay_s: float = 0.0  # worker: added latency before each execution (fault-injection tests)
    worker_batch: int = 1  # worker: tasks arriving together run as one engine batch, up to this many
    # Worker budgets: the largest task it takes, in the cost model of engines/kinds.py. Text:
    # (prompt bytes + max_new_tokens) x beams; image: width x height x steps (256 x 256 x 20 here).
    max_text_cost: int = 32_768
    max_image_cost: int = 1_310_720
    # Log file (relative to data_dir; empty: stderr only), rotated at log_max_bytes with
    # log_backups old files kept: a node's logs never take more than (1 + backups) x max bytes.
    log_file: str = ""
    log_max_bytes: int = 10_000_000
    log_backups: int = 3
    verifier_batch: int = 16  # verifier: checks arriving together share one engine call, up to this many
    gossip_interval_s: float = 1.0  # 0: no background rounds (tests and benchmarks drive them)
    gossip_fanout: int = 2
    learn_peers: bool = True  # add peers from NodeJoined entries, not only bootstrap
    train_adversary: str = ""  # a trainer's cheating mode (trustgen.training.adversary), for tests and demos
    training_round_timeout_s: float = 600.0  # gateway: a round closes with the trainers that delivered by then
    # gateway: how long a round keeps being retried while too few verifiers answer (a partition,
    # verifiers down) before the job fails
    training_retry_s: float = 1800.0
    genesis: str = ""  # the network's signed genesis file (consensus/admission.py)
    admissions: list[str] = field(default_factory=list)  # admission files naming this node
    revocations: list[str] = field(default_factory=list)  # revocation files this node spreads
    open_network: bool = False  # a gateway without a genesis admits anyone: tests and development only

    def __post_init__(self) -> None:
        self.data_dir = pathlib.Path(self.data_dir)
        bad = [r for r in self.roles if r not in ROLES]
        if bad:  # no roles at all is a plain replica: it keeps the ledger and gossips
            raise UsageError(f"roles must be some of {', '.join(ROLES)}; got {self.roles}")
        if set(self.roles) & {"worker", "verifier", "trainer"} and not self.gateway and "gateway" not in self.roles:
            raise UsageError('a worker, verifier or trainer needs `gateway = "HOST:PORT"`')
        if self.train_adversary and self.train_adversary not in TRAIN_MODES:
            raise UsageError(f"unknown train_adversary {self.train_adversary!r} (modes: {', '.join(TRAIN_MODES)})")
        if self.training_round_timeout_s <= 0:
            raise UsageError("training_round_timeout_s must be > 0")
        if self.training_retry_s < 0:
            raise UsageError("training_retry_s must be >= 0")
        if not self.insecure and not (self.tls_cert and self.tls_key):
            raise UsageError("set tls_cert and tls_key, or `insecure = true` for plaintext gRPC")
        if "gateway" in self.roles and not self.genesis and not self.open_network:
            raise UsageError('a gateway needs `genesis = "FILE"` (trustgen network init), or `open_network = true`')
        if (self.admissions or self.revocations) and not self.genesis:
            raise UsageError("admissions and revocations need the network's genesis: set `genesis`")
        check_mode(self.adversary)
        if type(self.worker_batch) is not int or not 1 <= self.worker_batch <= MAX_WORKER_BATCH:
            raise UsageError(f"worker_batch must be an integer in [1, {MAX_WORKER_BATCH}]")
        if type(self.explorer_port) is not int or not 0 <= self.explorer_port <= 65535:
            raise UsageError("explorer_port must be an integer in [0, 65535] (0: no explorer)")
        for name in ("max_text_cost", "max_image_cost"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v <= MAX_BUDGET:
                raise UsageError(f"{name} must be an integer in [0, 2^62]")
        if type(self.log_max_bytes) is not int or self.log_max_bytes < 4096:
            raise UsageError("log_max_bytes must be an integer >= 4096")
        if type(self.log_backups) is not int or not 1 <= self.log_backups <= 100:
            raise UsageError("log_backups must be an integer in [1, 100]")
        if type(self.verifier_batch) is not int or not 1 <= self.verifier_batch <= MAX_WORKER_BATCH:
            raise UsageError(f"verifier_batch must be an integer in [1, {MAX_WORKER_BATCH}]")
        if self.gossip_interval_s < 0 or not 1 <= self.gossip_fanout <= 16:
            raise UsageError("gossip_interval_s must be >= 0 and gossip_fanout in [1, 16]")

    @property
    def ledger_path(self) -> pathlib.Path:
        return self.data_dir / "ledger.db"

    @property
    def models(self) -> dict[str, str]:
        """The model this node serves each task kind with."""
        return {"text": self.text_model, "image": self.image_model}

    @property
    def budgets(self) -> dict[str, int]:
        """The largest task cost this worker takes, per kind."""
        return {"text": self.max_text_cost, "image": self.max_image_cost}

    @property
    def log_path(self) -> pathlib.Path | None:
        return self.data_dir / self.log_file if self.log_file else None


def load_config(path: pathlib.Path) -> NodeConfig:
    try:
        raw: dict[str, Any] = tomllib.loads(pathlib.Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read config {path}: {e}") from None
    known = set(NodeConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"{path}: unknown settings {', '.join(unknown)}")
    if "data_dir" in raw and not pathlib.Path(raw["data_dir"]).is_absolute():
        raw["data_dir"] = str(pathlib.Path(path).resolve().parent / raw["data_dir"])
    try:
        return NodeConfig(**raw)
    except TypeError as e:
        raise UsageError(f"{path}: {e}") from None


def dump_config(cfg: dict[str, Any]) -> str:
    """TOML for the flat configs the cluster launcher writes."""
    lines = []
    for k, v in cfg.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v}")
        elif isinstance(v, list):
            lines.append(f"{k} = [{', '.join(repr(str(x)).replace(chr(39), chr(34)) for x in v)}]")
        else:
            lines.append(f'{k} = "{v}"')
    return "\n".join(lines) + "\n"
