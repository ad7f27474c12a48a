import json
import os
import pathlib
import stat

import pytest

from tests.consensus_fixtures import NET, ident, make_result, make_task, make_vote
from tests.helpers import run_cli
from trustgen.consensus.encoding import MAGIC, EncodingError, decode, encode, parse_signing_bytes, signing_bytes
from trustgen.consensus.identity import Identity, KeyFileError
from trustgen.consensus.messages import MessageError, open_payload, open_wire, sign

VECTORS = json.loads((pathlib.Path(__file__).parent / "vectors" / "consensus.json").read_text())


def test_encoding_by_hand():
    assert encode(None) == b"\x00"
    assert encode(True) == b"\x02" and encode(False) == b"\x01"
    assert encode(1) == b"\x03" + b"\x00" * 7 + b"\x01"
    assert encode(-1) == b"\x03" + b"\xff" * 8
    assert encode(b"ab") == b"\x05\x00\x00\x00\x02ab"
    assert encode("é") == b"\x06\x00\x00\x00\x02\xc3\xa9"
    assert encode({"b": 1, "a": None}) == (
        b"\x08\x00\x00\x00\x02" + b"\x06\x00\x00\x00\x01a\x00" + b"\x06\x00\x00\x00\x01b" + encode(1)
    )
    assert signing_bytes("Vote", "n", {}) == b"TGv1" + encode(["Vote", "n", 1, {}])


@pytest.mark.parametrize(
    "bad",
    [
        encode({"a": 1})[:-1],  # truncated
        encode({"a": 1}) + b"\x00",  # trailing
        b"\x08\x00\x00\x00\x02" + encode("b") + encode(1) + encode("a") + encode(1),  # unsorted keys
        b"\x08\x00\x00\x00\x02" + encode("a") + encode(1) + encode("a") + encode(2),  # duplicate key
        b"\x04" + bytes.fromhex("7ff8000000000000"),  # NaN
        b"\x09",  # unknown tag
        b"\x06\x00\x00\x00\x01\xff",  # invalid UTF-8
        b"\x07" * 40 + b"\x00\x00\x00\x00",  # absurd nesting / bad lengths
    ],
)
def test_decoder_refuses_non_canonical_bytes(bad):
    with pytest.raises(EncodingError):
        decode(bad)


def test_roundtrip_is_identity():
    v = [1, -(2**63), 2**63 - 1, 0.1, "x" * 300, b"\x00" * 70, {"k": [None, True, {"z": {}}]}]
    assert decode(encode(v)) == v
    assert encode(decode(encode(v))) == encode(v)


def test_vectors_are_reproduced_exactly():
    for m in VECTORS["messages"]:
        who = ident(m["seed_byte"])
        msg = open_payload(bytes.fromhex(m["payload_hex"]), bytes.fromhex(m["sig_hex"]), m["type"], NET)
        assert msg.signer == who.public_key
        again = sign(who, m["type"], NET, msg.body)
        assert again.payload.hex() == m["payload_hex"]
        assert again.sig.hex() == m["sig_hex"]  # Ed25519 is deterministic
        assert again.id.hex() == m["id_hex"] and again.wire().hex() == m["wire_hex"]
    for case in VECTORS["encoding"]:
        assert encode(json.loads(case["value"])).hex() == case["hex"]


def test_signature_does_not_transfer_across_types_or_networks():
    client = ident(3)
    task = make_task(client)
    vote = make_vote(ident(10), make_result(ident(2), task), True)
    assert open_wire(vote.wire(), "Vote", NET).body == vote.body
    with pytest.raises(MessageError, match="expected a Task"):
        open_wire(vote.wire(), "Task", NET)
    with pytest.raises(MessageError, match="network"):
        open_wire(vote.wire(), "Vote", "trustgen-other")
    # Re-wrapping the same body under another network changes the signed bytes: the old
    # signature must fail.
    forged = signing_bytes("Vote", "trustgen-other", vote.body)
    with pytest.raises(MessageError, match="signature"):
        open_payload(forged, vote.sig, "Vote", "trustgen-other")


def test_forged_and_malformed_messages_are_refused():
    task = make_task(ident(3))
    sig = bytearray(task.sig)
    sig[0] ^= 1
    with pytest.raises(MessageError, match="signature"):
        open_payload(task.payload, bytes(sig), "Task", NET)
    with pytest.raises(MessageError, match="malformed"):
        open_wire(b"\x08garbage", "Task", NET)
    with pytest.raises(MessageError, match="must be the signer"):
        sign(ident(4), "Task", NET, task.body)
    body = dict(task.body)
    body["extra"] = 1
    with pytest.raises(MessageError, match="unexpected"):
        sign(ident(3), "Task", NET, body)


def test_a_version_encoded_as_true_is_refused():
    """`true` (0x02) and `1` (0x03 ..01) are two encodings; accepting the boolean would let a signer
    make a second payload, and a second id, for one message."""
    client = ident(3)
    task = make_task(client)
    as_bool = MAGIC + encode(["Task", NET, True, task.body])
    assert as_bool != task.payload and decode(as_bool[len(MAGIC) :])[2] is True
    with pytest.raises(EncodingError, match="header"):
        parse_signing_bytes(as_bool)
    with pytest.raises(MessageError, match="malformed") as e:
        open_payload(as_bool, client.sign(as_bool), "Task", NET)  # validly signed, still refused
    assert e.value.code == MessageError.MALFORMED
    with pytest.raises(EncodingError, match="version"):
        signing_bytes("Task", NET, task.body, version=True)
    assert parse_signing_bytes(task.payload)[2] == 1


def test_training_messages_sign_open_and_refuse_a_boolean_count():
    trainer = ident(32)
    body = {"trainer": trainer.public_key, "job": b"\x07" * 32, "step": 4, "q": -127, "diffs": [-1e30, 0.5]}
    msg = sign(trainer, "SpsaUpdate", NET, body)
    assert open_wire(msg.wire(), "SpsaUpdate", NET).body == body
    with pytest.raises(MessageError, match="expected a DeltaUpdate, got a SpsaUpdate"):
        open_wire(msg.wire(), "DeltaUpdate", NET)
    with pytest.raises(MessageError, match=r"SpsaUpdate\.step must be int"):
        sign(trainer, "SpsaUpdate", NET, {**body, "step": True})
    forged = signing_bytes("SpsaUpdate", NET, {**body, "q": True})
    with pytest.raises(MessageError, match=r"SpsaUpdate\.q must be int"):
        open_payload(forged, trainer.sign(forged), "SpsaUpdate", NET)


def test_key_files_are_0600_never_leak_and_can_be_encrypted(tmp_path):
    a = Identity.generate()
    path = a.save(tmp_path / "a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(tmp_path / "a").public_key == a.public_key
    seed_hex = json.loads(path.read_text())["seed"]
    assert seed_hex not in repr(a) and seed_hex not in str(a)

    b = Identity.generate()
    b.save(tmp_path / "b", passphrase=b"correct horse")
    assert "seed" not in json.loads((tmp_path / "b" / "node.key").read_text())
    assert Identity.load(tmp_path / "b", b"correct horse").public_key == b.public_key
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        Identity.load(tmp_path / "b", b"wrong")
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        Identity.load(tmp_path / "b")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        Identity.load(tmp_path / "a")


def test_keys_cli(tmp_path):
    home = tmp_path / "node"
    res = run_cli("keys", "new", "--home", str(home), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert stat.S_IMODE((home / "node.key").stat().st_mode) == 0o600
    seed = json.loads((home / "node.key").read_text())["seed"]
    assert seed not in res.stdout + res.stderr
    shown = json.loads(run_cli("keys", "show", "--home", str(home), "--json").stdout)
    assert shown["node_id"] == info["node_id"]
    again = run_cli("keys", "new", "--home", str(home))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    enc = run_cli(
        "keys",
        "new",
        "--home",
        str(tmp_path / "enc"),
        "--passphrase-env",
        "TG_PASS",
        "--json",
        env={**os.environ, "TG_PASS": "s3cret"},
    )
    assert enc.returncode == 0 and json.loads(enc.stdout)["encrypted"] is True
    wrong = run_cli(
        "keys",
        "show",
        "--home",
        str(tmp_path / "enc"),
        "--passphrase-env",
        "TG_PASS",
        env={**os.environ, "TG_PASS": "nope"},
    )
    assert wrong.returncode == 2 and "wrong passphrase" in wrong.stderr
