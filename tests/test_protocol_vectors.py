"""docs/protocol.md, its vectors and its second implementation stay in step with the node: the
vectors regenerate byte for byte from the node's code, the second implementation (which imports
nothing from trustgen) re-derives every one and refuses a vector with one byte changed, and every
domain tag the code uses is the one the document lists."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import random
import struct
import subprocess
import sys
import tomllib
from typing import Any

import pytest
import torch

from trustgen.consensus import domains, merkle
from trustgen.consensus.encoding import MAGIC, encode
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import ENTRY_SCHEMAS, entry_hash
from trustgen.consensus.messages import SCHEMAS, MessageError, Signed, message_id, open_payload, open_wire, sign
from trustgen.engines import outputs, sampling, trajectory
from trustgen.engines.registry import model_digest
from trustgen.errors import UsageError
from trustgen.gossip import session
from trustgen.training import aggregate, data, diloco, job, records, spec, spsa, tensors
from trustgen.training.checks import check_arithmetic

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = ROOT / "docs" / "protocol_vectors.json"
DOC = ROOT / "docs" / "protocol.md"
MAKE = ROOT / "scripts" / "make_protocol_vectors.py"
CHECK = ROOT / "scripts" / "check_protocol_vectors.py"


def run(*args: str | pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def checker() -> Any:
    spec = importlib.util.spec_from_file_location("check_protocol_vectors", CHECK)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_regenerating_the_vectors_gives_the_committed_file(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "vectors.json"
    r = run(MAKE, "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == VECTORS.read_bytes(), (
        "the node's bytes drifted from docs/protocol_vectors.json: a protocol change needs the "
        "document, the vectors (scripts/make_protocol_vectors.py) and the second implementation updated"
    )


def test_the_second_implementation_accepts_every_vector() -> None:
    r = run(CHECK, VECTORS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok:")


def test_the_second_implementation_imports_nothing_from_trustgen() -> None:
    source = CHECK.read_text()
    assert "trustgen." not in source.replace("trustgen.v1.", "").replace("trustgen.proto", "")
    assert "import trustgen" not in source


def _flip(doc: dict[str, Any], path: list[str | int]) -> None:
    """Change one byte (the first hex digit) of the hex string at `path`."""
    node: Any = doc
    for k in path[:-1]:
        node = node[k]
    s = node[path[-1]]
    i = s.index(":") + 1 if s.startswith("sha256:") else 0
    node[path[-1]] = s[:i] + ("1" if s[i] == "0" else "0") + s[i + 1 :]


@pytest.mark.parametrize(
    "path, named",
    [
        (["encoding", "valid", 5, "hex"], "encoding 'int min'"),
        (["messages", 0, "payload"], "message 'text task'"),
        (["messages", 7, "sig"], "message 'accepting certificate'"),
        (["messages", 12, "id"], "message 'request Gateway/Join'"),
        (["ledger", "log", 9, "hash"], "ledger entry 9"),
        (["merkle", "inclusion", 4, "proof", 1], "merkle inclusion proof (4, 7)"),
        (["merkle", "consistency", 3, "proof", 0], "merkle consistency proof (3, 7)"),
        (["assignment", 0, "ranking", 2], "assignment 'text task, first-ranked verifier skipped'"),
        (["session", "frames", 2, "tag"], "session frame 2 tag"),
        (["session", "session_key"], "session key"),
        (["gossip_digests", "bucket_digests", 1], "gossip bucket digests"),
        (["sampling", "noise", 3, "words", 0], "sampling noise (seed 42, position 7)"),
        (["outputs", "blobs", 3, "digest"], "blob of 150000 bytes"),
        (["outputs", "model_manifest", "digest"], "model manifest digest"),
        (["fingerprints", "minhash", 0, "fingerprint", "minhash"], "minhash of [464, 318"),
        (["fingerprints", "phash", 0, "phash_rgb"], "phash_rgb of disc"),
        (["messages", 22, "payload"], "message 'delta update trainer0'"),
        (["refused", 0, "payload"], "refused payload 'version encoded as true'"),
        (["training", "jobs", 0, "canonical"], "training job 'spsa job': canonical bytes"),
        (["training", "split", 0, "dataset_digest"], "training split of 40 windows: draws"),
        (["training", "select", 0, "job"], "training selection at step 0"),
        (["training", "spsa_seed", 0, "job"], "training SPSA seed at step 0"),
        (["training", "quantise", 8, "g"], "training quantise"),
        (["training", "scalar", 1, "raw", 0], "training scalar 'an exact sum, not a left-to-right one'"),
        (["training", "tensor_digests", 2, "digest"], "training tensor digest '0-dimensional tensors'"),
        (["training", "tensor_digests", 0, "digest"], "training tensor digest 'tensor set'"),
        (["training", "round", "trainers", 0, "state_digests", 2], "training round, trainer0: inner state digests"),
        (["training", "round", "trainers", 1, "blob"], "training round, trainer1: int8 delta blob"),
        (["training", "round", "updates_digest"], "training round: updates digest"),
        (["training", "updates_digests", 1, "digest"], "training updates digest"),
        (["training", "network_round", "round_targets", 1, "target"], "training round target 1"),
        (["training", "network_round", "assignment", "beacon"], "training network round: ranking"),
        (["training", "network_round", "check_coins", 0, "updates_digest"], "training check coin of trainer0"),
        (["messages", 26, "sig"], "message 'update check verifier0': signature"),
        (["messages", 29, "payload"], "message 'checkpoint vote verifier0': payload"),
    ],
)
def test_the_second_implementation_refuses_a_flipped_byte(tmp_path: pathlib.Path, path: list, named: str) -> None:
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    _flip(doc, path)
    bad = tmp_path / "vectors.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    r = run(CHECK, bad)
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith("MISMATCH ") and named in r.stderr, r.stderr


def test_the_node_refuses_every_refused_payload_with_its_code() -> None:
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert {v["code"] for v in doc["refused"]} == {"malformed", "unsupported_version", "wrong_network", "wrong_type"}
    for v in doc["refused"]:
        with pytest.raises(MessageError) as e:
            open_payload(bytes.fromhex(v["payload"]), bytes.fromhex(v["sig"]), v["open_as"], doc["network"])
        assert e.value.code == v["code"], v["name"]


def test_the_second_implementation_complains_when_a_refused_payload_is_acceptable(tmp_path: pathlib.Path) -> None:
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    valid = next(m for m in doc["messages"] if m["name"] == "spsa update trainer0")
    doc["refused"][0].update(payload=valid["payload"], sig=valid["sig"], open_as="SpsaUpdate", signer="trainer0")
    bad = tmp_path / "vectors.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    r = run(CHECK, bad)
    assert r.returncode == 1 and "must be refused" in r.stderr, r.stderr


def test_domain_tags_are_distinct_and_prefix_free() -> None:
    tags = list(domains.ALL.values())
    for a in tags:
        assert sum(b.startswith(a) for b in tags) == 1, f"{a!r} is a prefix of another tag"
    assert json.loads(VECTORS.read_text(encoding="utf-8"))["domains"] == {k: v.hex() for k, v in domains.ALL.items()}


def test_every_domain_tag_in_use_is_the_listed_one(tmp_path: pathlib.Path) -> None:
    """Consensus and gossip import their tags; engines (which may not import consensus) keep
    copies, checked here, and code that hashes with a literal is checked by what it computes."""
    assert MAGIC == domains.SIGNED_MAGIC
    assert message_id(b"p") == hashlib.sha256(domains.MESSAGE_ID + b"p").digest()
    assert entry_hash(b"p", b"s") == hashlib.sha256(domains.ENTRY_HASH + b"ps").digest()
    assert merkle.leaf_hash(b"d") == hashlib.sha256(domains.MERKLE_LEAF + b"d").digest()
    assert merkle.node_hash(b"l", b"r") == hashlib.sha256(domains.MERKLE_NODE + b"lr").digest()
    assert session._PERSON == domains.GOSSIP_SESSION
    assert sampling._NOISE_DOMAIN == domains.GUMBEL_NOISE
    assert outputs.TEXT_DOMAIN == domains.TEXT_OUTPUT and outputs.IMAGE_DOMAIN == domains.IMAGE_OUTPUT
    assert trajectory.TRAJECTORY_LEAF == domains.TRAJECTORY_LEAF
    assert model_digest(tmp_path) == "sha256:" + hashlib.sha256(domains.MODEL_MANIFEST).hexdigest()
    # Training imports its tags from domains.py under its own names.
    assert spec.JOB_DOMAIN == domains.TRAINING_JOB
    assert (data.SPLIT_DOMAIN, data.SELECT_DOMAIN) == (domains.TRAIN_SPLIT, domains.TRAIN_SELECT)
    assert spsa.Z_DOMAIN == domains.TRAIN_SPSA_Z and tensors.DIGEST_DOMAIN == domains.TENSORS
    assert (diloco.STATE_DOMAIN, diloco.CHALLENGE_DOMAIN) == (domains.TRAIN_INNER_STATE, domains.TRAIN_CHALLENGE)
    assert job.CHECKPOINT_DOMAIN == domains.TRAIN_CHECKPOINT and records.UPDATES_DOMAIN == domains.TRAIN_UPDATES
    assert job.checkpoint_digest({}) == hashlib.sha256(domains.TRAIN_CHECKPOINT).digest()
    assert records.updates_digest([]) == hashlib.sha256(domains.TRAIN_UPDATES + encode([])).digest()
    assert diloco.state_digest({}, 3) == hashlib.sha256(domains.TRAIN_INNER_STATE + (3).to_bytes(8, "big")).digest()
    assert tensors.tensor_digest({}) == hashlib.sha256(domains.TENSORS).digest()


def test_the_document_lists_every_tag_and_type() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for name, tag in domains.ALL.items():
        assert f"`{name}`" in doc, name
        shown = tag.replace(b"\0", b"\\0").replace(b"\n", b"\\n").decode() if tag[0] > 1 else tag.hex()
        assert f"`{shown}`" in doc, (name, shown)
    for t in SCHEMAS:
        assert f"`{t}`" in doc, t
        for field in SCHEMAS[t]:
            assert f"`{field}`" in doc, (t, field)
    for section, fields in spec.SECTIONS.items():
        for field in fields:
            assert f"`{section}.{field}`" in doc, (section, field)
    for name, fields in spec.ALGORITHMS.items():
        assert f'`algorithm.name = "{name}"`' in doc, name
        for field in fields:
            assert f"| `{field}` |" in doc, (name, field)
    for t, schema in ENTRY_SCHEMAS.items():
        assert f"`{t}`" in doc
        for field in schema:
            assert f"`{field}`" in doc, (t, field)


def test_the_second_implementation_shares_the_node_schemas() -> None:
    """Its tables were written from the document; for every type it knows they must be the node's."""
    mod = checker()
    rename = {"dict": "map"}
    for t, schema in mod.SCHEMAS.items():
        assert {f: rename.get(k, k) for f, k in SCHEMAS[t].items()} == schema, t
    for t, schema in mod.ENTRY_BODIES.items():
        assert {f: rename.get(k, k) for f, k in ENTRY_SCHEMAS[t].items()} == schema, t
    assert set(mod.SCHEMAS) == set(SCHEMAS)


def test_the_second_implementation_shares_the_node_job_spec() -> None:
    """Its job spec tables (type, default, bounds, choices) were written from the document; they
    must be the node's, field for field."""
    mod = checker()

    def table(fields: dict[str, spec.Field]) -> dict[str, tuple]:
        return {k: (f.type.__name__, f.default, f.lo, f.hi, f.choices) for k, f in fields.items()}

    assert mod.SPEC_SECTIONS == {name: table(f) for name, f in spec.SECTIONS.items()}
    assert mod.SPEC_ALGORITHMS == {name: table(f) for name, f in spec.ALGORITHMS.items()}
    assert mod.MAX_TRAINERS == spec.MAX_TRAINERS


def _resigned_spsa_update(doc: dict[str, Any], change: dict[str, Any]) -> tuple[Signed, spec.JobSpec]:
    """trainer0's SpsaUpdate of the vectors with `change` applied to its body, signed again and put
    back in `doc` (so only its arithmetic is wrong), with the node's spec of the spsa job."""
    mod = checker()
    m = next(m for m in doc["messages"] if m["name"] == "spsa update trainer0")
    body = {**mod.from_tagged(m["body"]), **change}
    me = Identity.from_seed(bytes.fromhex(doc["keys"]["trainer0"]["seed"]))
    u = sign(me, "SpsaUpdate", doc["network"], body)
    m.update(body={**m["body"], **change}, payload=u.payload.hex(), sig=u.sig.hex(), id=u.id.hex(), wire=u.wire().hex())
    job_input = next(j["input"] for j in doc["training"]["jobs"] if j["name"] == "spsa job")
    return u, spec.from_dict(job_input)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"q": 6}, "message 'spsa update trainer0': byte of its diffs"),
        ({"diffs": [1.2906, 0.7713, 2.0412]}, "message 'spsa update trainer0': committed samples"),
    ],
)
def test_both_implementations_refuse_an_spsa_byte_its_diffs_do_not_give(
    tmp_path: pathlib.Path, change: dict[str, Any], named: str
) -> None:
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    u, job_spec = _resigned_spsa_update(doc, change)
    res = check_arithmetic(job_spec, u)
    assert res is not None and not res.accept and res.method == "spsa-arithmetic"
    bad = tmp_path / "vectors.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    r = run(CHECK, bad)
    assert r.returncode == 1 and r.stderr.startswith("MISMATCH ") and named in r.stderr, r.stderr


def test_the_second_implementation_computes_the_node_scalar_and_quantise() -> None:
    """Its exact-sum scalar (rationals) and saturating quantise agree with the node's (math.fsum)
    on values across the whole range, signed zeros, subnormals, ties and the ±1e30 clamp."""
    mod = checker()
    rng = random.Random(20261130)
    specials = [0.0, -0.0, 5e-324, -5e-324, spsa.DMAX, -spsa.DMAX, float("nan"), float("inf"), -float("inf"), 1e300]
    scales = [1e-9, 1e-4, 0.05, 0.25, 0.5, 1e6]
    for _ in range(3000):
        raw = [
            rng.choice(specials) if rng.random() < 0.1 else rng.gauss(0, 1) * 10.0 ** rng.randint(-320, 35)
            for _ in range(rng.randint(1, 16))
        ]
        if rng.random() < 0.2:  # exact ties: quarters on a quarter scale
            raw = [rng.randint(-600, 600) / 8 for _ in raw]
        diffs = [spsa.finite(d) for d in raw]
        assert [repr(mod.finite(d)) for d in raw] == [repr(d) for d in diffs]  # repr: -0.0 is not 0.0
        scale = rng.choice(scales)
        assert mod.scalar(diffs, scale) == spsa.scalar(diffs, scale), (diffs, scale)
    for g in [*specials, 31.625, -31.625, 126.5 * 0.25, 127 * 0.25, 1e308]:
        for scale in scales:
            assert mod.quantise(g, scale) == spsa.quantise(g, scale), (g, scale)


def _base(doc: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The parameters the delta blob vectors are decoded against, as the node's tensors."""
    return {p["name"]: torch.zeros(p["shape"], dtype=torch.float32) for p in doc["training"]["delta_blobs"]["params"]}


def test_the_node_decides_every_training_refusal_as_the_vectors_say() -> None:
    """The vectors the generator asserted, checked again from the file: the node's trimmed_k, its
    delta decoding, its spec parser, open_job and replay's SpsaState give what each vector says."""
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    t = doc["training"]
    for row in t["trimmed_k"]:
        assert [aggregate.trimmed_k(n, row["trim"]) for n in row["n"]] == row["k"], row["trim"]
    base = _base(doc)
    for v in t["delta_blobs"]["blobs"]:
        blob = bytes.fromhex(v["blob"])
        if not v["accept"]:
            with pytest.raises(tensors.TensorError):
                diloco.decode_delta(blob, base, v["format"], v["name"])
            continue
        got = diloco.decode_delta(blob, base, v["format"], v["name"])
        for want in v["decoded"]:
            have = got[want["name"]].flatten().tolist()
            assert [struct.pack(">d", x) for x in have] == [struct.pack(">d", x) for x in want["values"]], v["name"]
    for v in t["refused_specs"]:
        with pytest.raises(UsageError):
            spec.from_dict(tomllib.loads(v["toml"]))
    for v in t["refused_jobs"]:
        with pytest.raises(MessageError):
            spec.open_job(bytes.fromhex(v["wire"]), doc["network"])
    spsa_spec = spec.from_dict(next(j["input"] for j in t["jobs"] if j["name"] == "spsa job"))
    for v in t["refused_updates"]:
        ups = [open_wire(bytes.fromhex(u["wire"]), "SpsaUpdate", doc["network"]) for u in v["updates"]]
        state = job.SpsaState(spsa_spec, {n: x.clone() for n, x in base.items()}, step=v["step"])
        with pytest.raises(job.UpdateError) as e:
            state.apply(ups, {n: torch.zeros_like(x) for n, x in base.items()})
        assert e.value.code == v["code"], v["name"]


def _training_vector(doc: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    items = doc["training"][key]["blobs"] if key == "delta_blobs" else doc["training"][key]
    return next(v for v in items if v["name"] == name)


def _accept_a_refused_blob(doc: dict[str, Any]) -> None:
    v = _training_vector(doc, "delta_blobs", "int8: a negative scale")
    v["blob"] = _training_vector(doc, "delta_blobs", "int8: the largest scale (127 of it decodes to exactly 1e6)")[
        "blob"
    ]


def _accept_a_refused_job_file(doc: dict[str, Any]) -> None:
    v = _training_vector(doc, "refused_specs", "inner_steps above 4096")
    v["toml"] = v["toml"].replace("inner_steps = 4097", "inner_steps = 4096")


def _accept_a_refused_job(doc: dict[str, Any]) -> None:
    valid = next(m for m in doc["messages"] if m["name"] == "training spsa job")
    _training_vector(doc, "refused_jobs", "a float field signed as an int")["wire"] = valid["wire"]


def _accept_refused_updates(doc: dict[str, Any]) -> None:
    valid = next(m for m in doc["messages"] if m["name"] == "spsa update trainer0")
    v = _training_vector(doc, "refused_updates", "a byte its samples do not give")
    v["updates"] = [{"signer": "trainer0", "body": valid["body"], "wire": valid["wire"]}]


def _change(key: str, name: str, field: str, value: Any) -> Any:
    return lambda doc: _training_vector(doc, key, name).__setitem__(field, value)


def _change_k(doc: dict[str, Any]) -> None:
    row = next(r for r in doc["training"]["trimmed_k"] if r["trim"] == 0.2)
    row["k"][row["n"].index(4)] = 0  # floor(0.2 * 4) = 0, but four trainers cut one from each side


def _change_decoded(doc: dict[str, Any]) -> None:
    v = _training_vector(doc, "delta_blobs", "int8: a scale of -0.0 is a zero scale")
    v["decoded"][1]["values"][0] = 0.0  # 1 · -0.0 is -0.0


@pytest.mark.parametrize(
    "change, named",
    [
        (_change_k, "training trimmed_k at trim 0.2"),
        (_accept_a_refused_blob, "delta blob 'int8: a negative scale': accepted, but it must be refused"),
        (_change_decoded, "delta blob 'int8: a scale of -0.0 is a zero scale': decoded"),
        (_change("delta_blobs", "int8: a NaN scale", "reason", "scale"), "delta blob 'int8: a NaN scale': reason"),
        (
            _change("delta_blobs", "float32: the next binary32 above 1e6", "reason", "not_finite"),
            "delta blob 'float32: the next binary32 above 1e6': reason",
        ),
        (_accept_a_refused_job_file, "job file 'inner_steps above 4096': accepted, but it must be refused"),
        (_accept_a_refused_job, "job 'a float field signed as an int': its spec is accepted"),
        (
            _change("refused_jobs", "a field left out (its default not filled in)", "reason", "invalid"),
            "job 'a field left out (its default not filled in)': reason",
        ),
        (_accept_refused_updates, "updates 'a byte its samples do not give': applied, but they must be refused"),
        (
            _change("refused_updates", "two updates from one trainer in one step", "code", "wrong_scalar"),
            "updates 'two updates from one trainer in one step': code",
        ),
    ],
)
def test_the_second_implementation_holds_the_training_refusals(tmp_path: pathlib.Path, change: Any, named: str) -> None:
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    change(doc)
    bad = tmp_path / "vectors.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    r = run(CHECK, bad)
    assert r.returncode == 1 and r.stderr.startswith("MISMATCH ") and named in r.stderr, r.stderr


def test_the_second_implementation_computes_the_node_trimmed_k() -> None:
    mod = checker()
    rng = random.Random(20261201)
    trims = [0.0, 0.49, 5e-324, 0.2, 0.25, 1 / 3, *(rng.uniform(0, 0.49) for _ in range(200))]
    for trim in trims:
        for n in range(1, spec.MAX_TRAINERS + 1):
            assert mod.trimmed_k(n, trim) == aggregate.trimmed_k(n, trim), (n, trim)


def _node_reason(blob: bytes, base: dict[str, torch.Tensor], fmt: str) -> tuple[str | None, dict[str, list[float]]]:
    """The node's decision on a delta blob, named as the vectors name it."""
    try:
        got = diloco.decode_delta(blob, base, fmt, "blob")
    except tensors.TensorError as e:
        for words, reason in (
            ("non-finite", "not_finite"),
            ("negative or out of range", "scale"),
            ("not finite or exceeds", "too_large"),
        ):
            if words in str(e):
                return reason, {}
        return "layout", {}
    return None, {n: t.flatten().tolist() for n, t in got.items()}


def test_the_second_implementation_decodes_delta_blobs_like_the_node() -> None:
    """Random int8 and float32 blobs, scales and values around every bound and special value: the
    second implementation accepts, refuses (for the same reason) and decodes as the node does."""
    mod = checker()
    assert mod.MAX_DELTA_ABS == diloco.MAX_DELTA_ABS
    rng = random.Random(20261202)
    base = {"a": torch.zeros(3), "b.w": torch.zeros(2, 2)}
    bound = torch.tensor(diloco.MAX_DELTA_ABS / diloco.QMAX, dtype=torch.float32)
    big = torch.tensor(diloco.MAX_DELTA_ABS, dtype=torch.float32)
    scales = [
        0.0, -0.0, 1e-30, 0.5, float(bound), float(torch.nextafter(bound, torch.tensor(1e9))),
        -1e-45, float("nan"), float("inf"), -float("inf"), 3e38,
    ]  # fmt: skip
    values = [
        0.0, -0.0, 1.5, -2.25, 5e-45, float(big), -float(big), float(torch.nextafter(big, torch.tensor(2e6))),
        float("nan"), float("inf"), -float("inf"), 3e38,
    ]  # fmt: skip
    seen = set()
    for _ in range(400):
        if rng.random() < 0.5:
            ts = {}
            for n, p in base.items():
                ts["q/" + n] = torch.tensor([rng.randint(-128, 127) for _ in range(p.numel())], dtype=torch.int8)
                ts["q/" + n] = ts["q/" + n].reshape(p.shape)
                ts["s/" + n] = torch.tensor(
                    rng.choice(scales) if rng.random() < 0.3 else rng.random(), dtype=torch.float32
                )
            fmt = "int8"
        else:
            ts = {
                "f/" + n: torch.tensor(
                    [rng.choice(values) if rng.random() < 0.2 else rng.gauss(0, 100) for _ in range(p.numel())],
                    dtype=torch.float32,
                ).reshape(p.shape)
                for n, p in base.items()
            }
            fmt = "float32"
        if rng.random() < 0.1:  # a layout the format does not have
            ts.pop(rng.choice(sorted(ts)))
        blob = tensors.to_bytes(ts)
        want, decoded = _node_reason(blob, base, fmt)
        got, mine = mod.decode_delta(blob, {n: list(p.shape) for n, p in base.items()}, fmt)
        assert got == want, (fmt, ts)
        seen.add(want)
        for n in decoded:
            assert [struct.pack(">d", x) for x in mine[n]] == [struct.pack(">d", x) for x in decoded[n]], (n, ts)
    assert seen == {None, "layout", "not_finite", "scale", "too_large"}, seen
