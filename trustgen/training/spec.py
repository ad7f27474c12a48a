"""Training job specifications: TOML in, canonical bytes out, content digest = job id.

Everything a replayer needs is in the spec (base model digest, data set digest and split,
algorithm and every hyperparameter, dtype, execution profile, trainer keys, schedule), so a
replay reads nothing from its environment. Every field is declared below with its type and
bounds, unknown fields are refused, and defaults are filled in before hashing, so two specs
that mean the same job have the same id.
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
import stat
import tomllib
from dataclasses import dataclass
from typing import Any

from trustgen.consensus.domains import TRAINING_JOB as JOB_DOMAIN
from trustgen.consensus.encoding import encode
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.errors import UsageError

SPEC_VERSION = 1
MAX_TRAINERS = 64
JOBS_DIR = pathlib.Path(__file__).resolve().parent / "data" / "jobs"
DEFAULT_JOB = "diloco"
MAX_JOB_BYTES = 1 << 20  # a job file is a page of TOML


@dataclass(frozen=True)
class Field:
    """One spec field: its type, default (None = required) and inclusive bounds or choices."""

    type: type
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    # A field added after jobs were signed: left out of the canonical spec at its default, so
    # every job signed before it existed keeps its bytes and its id.
    omit_default: bool = False

    def check(self, where: str, value: Any) -> Any:
        if value is None:
            if self.default is None:
                raise UsageError(f"{where} is required")
            value = self.default
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise UsageError(f"{where} must be {self.type.__name__}, not {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):  # nan passes every bound check
            raise UsageError(f"{where} = {value} is not a finite number")
        if isinstance(value, (int, float)) and (
            self.lo is not None and value < self.lo or self.hi is not None and value > self.hi
        ):
            raise UsageError(f"{where} = {value} is outside [{self.lo}, {self.hi}]")
        if self.choices and value not in self.choices:
            raise UsageError(f"{where} = {value!r}; choose one of {', '.join(self.choices)}")
        if isinstance(value, str) and len(value) > 4096:
            raise UsageError(f"{where} is too long")
        return value


OBJECTIVES = ("causal-lm", "textual-inversion", "unet-denoise")
SPSA_DIRECTIONS = ("full", "tensor-power")  # the registry's names (directions.DIRECTIONS)
AGGREGATORS = ("trimmed-mean", "screened-trimmed-mean", "median", "centred-clip", "mean")

SECTIONS: dict[str, dict[str, Field]] = {
    "job": {
        "name": Field(str, "job"),
        "network": Field(str, "trustgen-local"),
        "seed": Field(int, 0, 0, 2**62),
    },
    "model": {
        "base": Field(str),
        "digest": Field(str),
        # "fresh" re-initialises the base model's architecture from the job seed.
        "init": Field(str, "pretrained", choices=("pretrained", "fresh")),
        "objective": Field(str, "causal-lm", choices=OBJECTIVES),
        # textual inversion: the new token and the existing word its embedding starts from.
        "token": Field(str, "<new>"),
        "init_token": Field(str, "shape"),
    },
    "data": {
        "source": Field(str),
        "digest": Field(str),
        "block": Field(int, 64, 8, 4096),  # tokens per training window
        "heldout_permille": Field(int, 100, 1, 500),
        "eval_windows": Field(int, 64, 1, 100_000),  # held-out windows every evaluation uses
        "captions": Field(str, "a {token}"),  # image data: the prompt each image trains with
    },
    "profile": {
        "dtype": Field(str, "float32", choices=("float32", "float64")),
        "threads": Field(int, 1, 1, 256),
        "device": Field(str, "cpu"),
        "deterministic": Field(bool, True),
    },
}
ALGORITHMS: dict[str, dict[str, Field]] = {
    "spsa": {
        "steps": Field(int, 200, 1, 1_000_000),
        "batch": Field(int, 8, 1, 1024),
        "lr": Field(float, 1e-4, 0.0, 10.0),
        "eps": Field(float, 1e-3, 1e-8, 1.0),
        # projected gradient per quantisation unit: a byte covers [-127, 127] * scale
        "scale": Field(float, 0.5, 1e-9, 1e6),
        "eval_every": Field(int, 25, 1, 1_000_000),
        "check_probability": Field(float, 0.1, 0.0, 1.0),
        # how step t's shared direction is drawn (training/directions.py)
        "direction": Field(str, "full", choices=SPSA_DIRECTIONS, omit_default=True),
        "direction_power": Field(float, 0.0, 0.0, 1.0, omit_default=True),  # tensor-power: n_b^-p
    },
    "diloco": {
        "rounds": Field(int, 6, 1, 100_000),
        "inner_steps": Field(int, 16, 1, 4096),  # each commits a 32-byte state digest
        "batch": Field(int, 8, 1, 1024),
        "inner_lr": Field(float, 1e-3, 0.0, 10.0),
        "weight_decay": Field(float, 0.0, 0.0, 1.0),
        "outer_lr": Field(float, 0.7, 0.0, 10.0),
        "outer_momentum": Field(float, 0.9, 0.0, 0.999),
        "aggregator": Field(str, "trimmed-mean", choices=AGGREGATORS),
        "trim": Field(float, 0.2, 0.0, 0.49),  # fraction cut from each side (trimmed mean)
        "clip": Field(float, 1.0, 1e-9, 1e9),  # radius for centred clipping, relative to the median norm
        "check_probability": Field(float, 0.5, 0.0, 1.0),
        "delta_format": Field(str, "int8", choices=("int8", "float32")),
    },
}


@dataclass(frozen=True)
class JobSpec:
    """A validated, canonical job specification."""

    data: dict[str, Any]

    @property
    def id(self) -> bytes:
        return hashlib.sha256(JOB_DOMAIN + self.canonical_bytes()).digest()

    def canonical_bytes(self) -> bytes:
        return encode(self.data)

    def section(self, name: str) -> dict[str, Any]:
        return self.data[name]

    @property
    def algorithm(self) -> dict[str, Any]:
        return self.data["algorithm"]

    @property
    def trainers(self) -> list[bytes]:
        return list(self.data["trainers"])

    @property
    def network(self) -> str:
        return self.data["job"]["network"]

    def with_trainers(self, keys: list[bytes]) -> JobSpec:
        return from_dict({**as_table(self.data), "trainers": {"keys": [k.hex() for k in keys]}})

    def to_toml(self) -> str:
        return dump_toml(as_table(self.data))


def as_table(data: dict[str, Any]) -> dict[str, Any]:
    """A canonical spec as the TOML table it reads from (keys as hex): edit it, then from_dict()."""
    out = {k: dict(v) for k, v in data.items() if isinstance(v, dict)}
    out["trainers"] = {"keys": [k.hex() for k in data["trainers"]]}
    return out


def _section(name: str, fields: dict[str, Field], raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"[{name}] must be a table")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UsageError(f"[{name}] has unknown fields: {', '.join(unknown)}")
    out = {k: f.check(f"{name}.{k}", raw.get(k)) for k, f in fields.items()}
    # repr and type: -0.0 is not the default 0.0, as the canonical encoding tells them apart
    return {k: v for k, v in out.items() if not (fields[k].omit_default and _same(v, fields[k].default))}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and repr(a) == repr(b)


def algorithm_values(spec: JobSpec) -> dict[str, Any]:
    """The algorithm's fields with the defaults the canonical spec leaves out filled in."""
    a = spec.algorithm
    return {**{k: f.default for k, f in ALGORITHMS[a["name"]].items()}, **a}


def from_dict(raw: dict[str, Any]) -> JobSpec:
    """Validate a parsed TOML document (or its equivalent dict) into a canonical spec."""
    if not isinstance(raw, dict):
        raise UsageError("a job spec must be a table")
    known = set(SECTIONS) | {"algorithm", "trainers"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"unknown sections: {', '.join(unknown)}")
    data: dict[str, Any] = {name: _section(name, fields, raw.get(name)) for name, fields in SECTIONS.items()}
    algo = raw.get("algorithm")
    if not isinstance(algo, dict) or not isinstance(algo.get("name"), str) or algo["name"] not in ALGORITHMS:
        raise UsageError(f"[algorithm].name must be one of {', '.join(ALGORITHMS)}")
    rest = {k: v for k, v in algo.items() if k != "name"}
    data["algorithm"] = {"name": algo["name"], **_section("algorithm", ALGORITHMS[algo["name"]], rest)}
    if data["profile"]["device"].split(":")[0] not in ("cpu", "cuda"):
        raise UsageError("profile.device must be cpu, cuda or cuda:N")
    if not data["model"]["digest"].startswith("sha256:") or not data["data"]["digest"].startswith("sha256:"):
        raise UsageError("model.digest and data.digest must be sha256: digests")
    data["trainers"] = _trainer_keys(raw.get("trainers"))
    data["version"] = SPEC_VERSION
    return JobSpec(data)


def _trainer_keys(raw: Any) -> list[bytes]:
    if raw is None:
        return []
    if isinstance(raw, dict) and set(raw) - {"keys"}:
        raise UsageError(f"[trainers] has unknown fields: {', '.join(sorted(set(raw) - {'keys'}))}")
    keys = raw.get("keys", []) if isinstance(raw, dict) else None
    if not isinstance(keys, list) or len(keys) > MAX_TRAINERS:
        raise UsageError(f"[trainers].keys must be a list of at most {MAX_TRAINERS} hex public keys")
    out = []
    for k in keys:
        try:
            b = bytes.fromhex(k) if isinstance(k, str) else b""
        except ValueError:
            b = b""
        if len(b) != 32:
            raise UsageError(f"trainer key {k!r} is not 64 hex digits")
        out.append(b)
    if len(set(out)) != len(out):
        raise UsageError("a trainer key is listed twice")
    return out


def shipped_jobs() -> list[str]:
    return sorted(p.stem for p in JOBS_DIR.glob("*.toml"))


def load(path: str | pathlib.Path) -> JobSpec:
    """A job file, or the name of a job the package ships (`trustgen train run spsa`)."""
    p = pathlib.Path(path)
    if str(path) in shipped_jobs() and not p.exists():  # a bare name: nothing to stat but the cwd
        p = JOBS_DIR / f"{path}.toml"
    try:
        # Non-blocking open, then fstat: a FIFO or device given as the job neither hangs nor
        # streams forever, and only a regular file of bounded size is read.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UsageError(f"no job file at {p} (shipped jobs: {', '.join(shipped_jobs())})") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"job file {p} cannot be opened ({e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise UsageError(f"job file {p} is {kind}")
        if st.st_size > MAX_JOB_BYTES:
            raise UsageError(f"job file {p} is larger than {MAX_JOB_BYTES >> 10} KiB")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            data = f.read(MAX_JOB_BYTES + 1)
        except OSError as e:
            raise UsageError(f"job file {p} cannot be read ({e.strerror})") from None
    if len(data) > MAX_JOB_BYTES:
        raise UsageError(f"job file {p} is larger than {MAX_JOB_BYTES >> 10} KiB")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: not a TOML job file ({' '.join(str(e).split())})") from None
    return from_dict(raw)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(doc: dict[str, Any]) -> str:
    lines = []
    for name, table in doc.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


# -- signed jobs ----------------------------------------------------------------------------------


def sign_job(author: Identity, spec: JobSpec) -> Signed:
    """The job as its author publishes it: the canonical spec under the author's signature."""
    return sign(author, "TrainingJob", spec.network, {"author": author.public_key, "spec": spec.data})


def open_job(wire: bytes, network: str) -> tuple[Signed, JobSpec]:
    """Verify a signed job and re-validate its spec (a peer's spec is hostile until checked)."""
    msg = open_wire(wire, "TrainingJob", network)
    spec_data = msg.body["spec"]
    try:
        spec = from_dict(_tomlish_from_canonical(spec_data))
    except UsageError as e:
        raise MessageError(f"TrainingJob spec is invalid: {e}") from None
    if encode(spec.data) != encode(spec_data):  # bytes, not ==: 1 == 1.0 == True in Python
        raise MessageError("TrainingJob spec is not in canonical form")
    if spec.network != msg.network:
        raise MessageError(f"TrainingJob was signed for network {msg.network!r} but its spec names {spec.network!r}")
    return msg, spec


def _tomlish_from_canonical(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("trainers"), list):
        raise UsageError("spec is not a table with a trainer list")
    if data.get("version") != SPEC_VERSION:
        raise UsageError(f"spec version {data.get('version')!r} is not supported")
    out = {k: v for k, v in data.items() if k not in ("trainers", "version")}
    keys = data["trainers"]
    if not all(isinstance(k, bytes) for k in keys):
        raise UsageError("trainer keys must be bytes")
    out["trainers"] = {"keys": [k.hex() for k in keys]}
    return out
