"""Hostile or broken input to the training tools: every bad input ends as a TrustgenError (one
`error: ...` line and exit 2 from the CLI), never a traceback, a hang or unbounded memory.

Fast tests: no trainer processes. The run directories here are built by hand from signed
messages (a job, at most one checkpoint), which is all `show`, `replay` and `check-step` read
before they refuse."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pathlib
import re
import socket
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from trustgen.consensus.encoding import encode
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import sign
from trustgen.errors import UsageError
from trustgen.train_cli import _emit
from trustgen.training import corpus, data
from trustgen.training import spec as specs
from trustgen.training.image_objectives import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, load_image
from trustgen.training.plot import loss_plot
from trustgen.training.profile import apply_profile
from trustgen.training.records import BlobDir, RunError, append_line, open_run, updates_digest

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
ROOT = os.geteuid() == 0  # root reads files whatever their mode: permission tests mean nothing
T = TypeVar("T")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trustgen.cli", "train", *args], env=ENV, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = res.stderr.splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def within(fn: Callable[[], T], seconds: float = 60.0) -> T:
    """fn() run on a thread; the test fails if it is still running after `seconds` (a hang, say
    on a FIFO), instead of hanging the suite."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def peak_bytes(fn: Callable[[], object]) -> int:
    """The peak Python allocation while fn() runs (fn's exception, if any, is swallowed)."""
    tracemalloc.start()
    try:
        fn()
    except Exception:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def sparse(path: pathlib.Path, size: int) -> pathlib.Path:
    """A file of `size` bytes that takes no disk (a hole): its stat says big, its reading is slow."""
    with path.open("wb") as f:
        f.truncate(size)
    return path


@pytest.fixture
def bare_run(tmp_path: pathlib.Path) -> Callable[..., tuple[pathlib.Path, Identity, specs.JobSpec]]:
    """A run directory with a signed SPSA job of two trainers and nothing else."""

    def make(**profile: object) -> tuple[pathlib.Path, Identity, specs.JobSpec]:
        raw = specs.as_table(specs.load("spsa").data)
        raw["profile"].update(profile)
        raw["trainers"] = {"keys": [Identity.generate().public_key.hex() for _ in range(2)]}
        spec = specs.from_dict(raw)
        author = Identity.generate()
        root = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        (root / "job.wire").write_bytes(specs.sign_job(author, spec).wire())
        return root, author, spec

    return make


def add_checkpoint(root: pathlib.Path, author: Identity, spec: specs.JobSpec, loss: float) -> None:
    body = {
        "publisher": author.public_key,
        "job": spec.id,
        "step": 0,
        "digest": bytes(32),
        "updates": updates_digest([]),
        "heldout_loss": loss,
    }
    append_line(root / "checkpoints.log", sign(author, "TrainingCheckpoint", spec.network, body))


# -- blobs and job.wire in a run directory ----------------------------------------------------------


def test_blob_dir_reads_regular_files_and_links_to_them(tmp_path: pathlib.Path) -> None:
    blobs = BlobDir(tmp_path / "blobs")
    digest = blobs.put(b"delta bytes")
    assert blobs.get(digest) == b"delta bytes"
    other = tmp_path / "elsewhere"
    other.write_bytes(b"linked bytes")
    linked = hashlib.sha256(b"linked bytes").digest()
    (tmp_path / "blobs" / linked.hex()).symlink_to(other)
    assert blobs.get(linked) == b"linked bytes"
    (tmp_path / "blobs" / digest.hex()).write_bytes(b"other bytes")
    with pytest.raises(RunError, match="corrupted"):
        blobs.get(digest)
    with pytest.raises(RunError, match="missing"):
        blobs.get(bytes(32))


@pytest.mark.parametrize("kind", ["fifo", "directory", "link-to-fifo", "link-to-device", "link-to-directory"])
def test_blob_that_is_not_a_regular_file_is_refused_without_reading(tmp_path: pathlib.Path, kind: str) -> None:
    blobs = BlobDir(tmp_path / "blobs")
    blobs.root.mkdir()
    digest = hashlib.sha256(kind.encode()).digest()
    path = blobs.root / digest.hex()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "link-to-fifo":
        path.symlink_to(fifo)
    elif kind == "link-to-device":
        path.symlink_to("/dev/zero")  # endless bytes: reading it whole never ends
    else:
        path.symlink_to(tmp_path)
    with pytest.raises(RunError, match=f"blob {digest.hex()[:16]}… in .* is not a regular file"):
        within(lambda: blobs.get(digest))


def test_blob_larger_than_the_cap_is_refused_before_reading(tmp_path: pathlib.Path) -> None:
    blobs = BlobDir(tmp_path)
    big = sparse(tmp_path / bytes(32).hex(), BlobDir.MAX_BYTES + 1)
    assert peak_bytes(lambda: blobs.get(bytes(32))) < 1 << 20  # reading it would allocate a GiB
    with pytest.raises(RunError, match="more than the 1073741824"):
        blobs.get(bytes(32))
    big.unlink()
    small = blobs.put(b"x" * 100)
    with pytest.raises(RunError, match="100 bytes, more than the 99"):
        blobs.get(small, max_bytes=99)
    assert blobs.get(small, max_bytes=100) == b"x" * 100


@pytest.mark.skipif(ROOT, reason="root reads files whatever their mode")
def test_unreadable_blob_is_a_run_error(tmp_path: pathlib.Path) -> None:
    blobs = BlobDir(tmp_path)
    digest = blobs.put(b"secret")
    (tmp_path / digest.hex()).chmod(0)
    with pytest.raises(RunError, match="cannot be read"):
        blobs.get(digest)


@pytest.mark.parametrize(
    "wire",
    [
        encode(5),
        encode([b"payload"]),
        encode("payload"),
        encode({"sig": b""}),
        encode({"payload": 5, "sig": b""}),
        encode({"payload": {"type": "TrainingJob"}, "sig": b""}),
        encode({"payload": [b"x"], "sig": b""}),
        encode({"payload": "text", "sig": b""}),
        encode({"payload": b"not a signed payload", "sig": b""}),
        b"\xff\x00 not the encoding",
    ],
)
def test_job_wire_that_decodes_to_the_wrong_shape_is_a_run_error(tmp_path: pathlib.Path, wire: bytes) -> None:
    (tmp_path / "job.wire").write_bytes(wire)
    with pytest.raises(RunError, match="job.wire is not a signed job"):
        open_run(tmp_path)


# -- data sets ------------------------------------------------------------------------------------------


def test_builtin_data_sets_keep_the_digests_the_shipped_jobs_pin() -> None:
    assert corpus.dataset_digest(corpus.BUILTIN["stdlib-docs"]) == specs.load("spsa").section("data")["digest"]
    images = specs.load("textual-inversion").section("data")["digest"]
    assert corpus.dataset_digest(corpus.BUILTIN["purple-crosses"]) == images


def test_digest_hashes_files_in_chunks_into_the_manifest(tmp_path: pathlib.Path) -> None:
    big = os.urandom(corpus.CHUNK * 2 + 12345)  # several chunks
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_bytes(big)
    (tmp_path / "sub" / "b.txt").write_bytes(b"second\n")
    (tmp_path / ".hidden").write_bytes(b"skipped, as documented")
    h = hashlib.sha256(b"trustgen/dataset/v1\n")
    for rel, body in (("a.txt", big), ("sub/b.txt", b"second\n")):
        h.update(f"{rel}\0{len(body)}\0{hashlib.sha256(body).hexdigest()}\n".encode())
    assert corpus.dataset_digest(tmp_path) == "sha256:" + h.hexdigest()
    second = hashlib.sha256(b"second\n").hexdigest()
    one = hashlib.sha256(b"trustgen/dataset/v1\n")
    one.update(f"b.txt\0{7}\0{second}\n".encode())
    assert corpus.dataset_digest(tmp_path / "sub" / "b.txt") == "sha256:" + one.hexdigest()
    # Chunked: hashing 32 MiB holds a few chunks at a time, not the file.
    sparse(tmp_path / "sub" / "c.bin", 32 << 20)
    assert peak_bytes(lambda: corpus.dataset_digest(tmp_path)) < 8 * corpus.CHUNK


def _socket(path: pathlib.Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


@pytest.mark.parametrize(
    "kind, make, says",
    [
        ("fifo", lambda p: os.mkfifo(p), "is a FIFO"),
        ("socket", _socket, "is a socket"),
        ("device", lambda p: p.symlink_to("/dev/zero"), "is a character device"),
        ("dangling link", lambda p: p.symlink_to(p.parent / "nowhere"), "does not exist"),
        ("link to a directory", lambda p: p.symlink_to(p.parent.parent), "is a link to a directory"),
    ],
)
def test_data_set_holding_anything_but_regular_files_is_refused(
    tmp_path: pathlib.Path, kind: str, make: Callable[[pathlib.Path], None], says: str
) -> None:
    root = tmp_path / "d"
    (root / "s").mkdir(parents=True)
    (root / "a.txt").write_text("some text\n")
    bad = root / "s" / "x"
    make(bad)
    for read in (corpus.dataset_files, corpus.dataset_digest, corpus.read_text_dataset, corpus.image_files):
        with pytest.raises(UsageError, match=re.escape(f"data set entry {bad} {says}")):
            within(functools.partial(read, root))


def test_data_set_that_is_itself_a_fifo_is_refused_not_digested_as_empty(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match=re.escape(f"data set {fifo} is a FIFO, not a file or a directory")):
        within(lambda: corpus.dataset_digest(fifo))
    with pytest.raises(UsageError, match="data set '~no-such-user-here/x' cannot be opened"):
        corpus.dataset_path("~no-such-user-here/x")


def test_data_set_over_the_cap_is_refused_from_its_size_before_reading(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.txt").write_text("fine\n")
    sparse(tmp_path / "b.txt", corpus.MAX_DATASET_BYTES)  # 1 byte over, with a.txt
    for read in (corpus.dataset_digest, corpus.read_text_dataset):
        with pytest.raises(UsageError, match=re.escape(f"data set {tmp_path} is larger than 256 MiB")):
            read(tmp_path)
        assert peak_bytes(functools.partial(read, tmp_path)) < 1 << 20  # reading it would allocate 256 MiB


@pytest.mark.skipif(ROOT, reason="root reads directories whatever their mode")
def test_unreadable_directory_in_a_data_set_is_refused_not_skipped(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.txt").write_text("fine\n")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0)
    try:
        with pytest.raises(UsageError, match="locked cannot be read"):
            corpus.dataset_digest(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o700)


# -- images ---------------------------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds almost no data (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _png(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, body, says",
    [
        ("garbage", b"not an image at all", "not a readable PNG image"),
        ("jpeg", _png(np.zeros((8, 8, 3), np.uint8), "JPEG"), "not a readable PNG image"),
        ("truncated", _png(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))[:-40], "not a readable PNG"),
        ("bad data", png_header(16, 16), "not a readable PNG image"),
        ("pillow's bomb", png_header(100_000, 100_000), "DecompressionBombError"),
        ("over the pixel bound", png_header(2100, 2100), "2100x2100 image is outside the bounds"),
        ("over the side bound", png_header(MAX_IMAGE_SIDE + 1, 1), f"{MAX_IMAGE_SIDE + 1}x1 image is outside"),
    ],
)
def test_malformed_or_oversized_png_is_a_usage_error_naming_the_file(
    tmp_path: pathlib.Path, name: str, body: bytes, says: str
) -> None:
    path = tmp_path / f"{name}.png"
    path.write_bytes(body)
    with pytest.raises(UsageError, match=f"^{re.escape(str(path))}: .*{says}") as e:
        load_image(path, (8, 8))
    assert "\n" not in str(e.value)
    assert MAX_IMAGE_PIXELS < 2100 * 2100 < (Image.MAX_IMAGE_PIXELS or 0)  # the bound is ours, below Pillow's


# -- job specs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float_fields_are_refused_with_the_field_named(value: float) -> None:
    raw = specs.as_table(specs.load("spsa").data)
    raw["algorithm"]["lr"] = value
    with pytest.raises(UsageError, match=f"algorithm.lr = {value} is not a finite number"):
        specs.from_dict(raw)


def test_non_finite_float_in_a_toml_job_is_refused(tmp_path: pathlib.Path) -> None:
    text = specs.load("spsa").to_toml().replace("check_probability = 0.1", "check_probability = nan")
    assert "nan" in text
    (tmp_path / "job.toml").write_text(text)
    with pytest.raises(UsageError, match="algorithm.check_probability = nan is not a finite number"):
        specs.load(tmp_path / "job.toml")


@pytest.mark.parametrize("name", [["spsa"], {"spsa": 1}, 5, None])
def test_algorithm_name_that_is_not_a_string_is_a_usage_error(name: object) -> None:
    raw = specs.as_table(specs.load("spsa").data)
    raw["algorithm"]["name"] = name
    with pytest.raises(UsageError, match=r"\[algorithm\].name must be one of spsa, diloco"):
        specs.from_dict(raw)


def test_job_path_that_is_not_a_regular_bounded_file_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UsageError, match=f"job file {tmp_path} is a directory"):
        specs.load(tmp_path)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match=f"job file {fifo} is not a regular file"):
        within(lambda: specs.load(fifo))
    big = sparse(tmp_path / "big.toml", specs.MAX_JOB_BYTES + 1)
    with pytest.raises(UsageError, match="is larger than 1024 KiB"):
        specs.load(big)
    with pytest.raises(UsageError, match="no job file"):
        specs.load(tmp_path / "absent.toml")
    assert specs.load("spsa").algorithm["name"] == "spsa"  # a shipped name still resolves


# -- data split, profile, plot, JSON ----------------------------------------------------------------


def test_data_set_too_small_to_split_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="the data set has 1 samples: too few"):
        data.split("sha256:" + "0" * 64, 1, 100, 10)


@pytest.mark.parametrize("device", ["cuda:x", "cuda:-1"])
def test_profile_device_that_cannot_be_used_is_a_usage_error(device: str) -> None:
    raw = specs.as_table(specs.load("spsa").data)
    raw["profile"]["device"] = device
    with pytest.raises(UsageError, match=f"profile.device '{device}' cannot be used here"):
        apply_profile(specs.from_dict(raw))


def test_profile_cuda_without_cuda_is_a_usage_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    raw = specs.as_table(specs.load("spsa").data)
    raw["profile"]["device"] = "cuda"
    with pytest.raises(UsageError, match="CUDA is not available"):
        apply_profile(specs.from_dict(raw))


def test_replay_thread_count_out_of_bounds_is_a_usage_error() -> None:
    for threads in (-1, 257):
        with pytest.raises(UsageError, match=f"--threads = {threads} is outside"):
            apply_profile(specs.load("spsa"), threads)


def test_plot_refuses_what_it_cannot_draw_and_skips_non_finite_points(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UsageError, match="must end in .png"):
        loss_plot({"a": [(0, 1.0)]}, tmp_path / "loss.svg", "t", "step")
    with pytest.raises(UsageError, match="nothing to plot"):
        loss_plot({"a": []}, tmp_path / "loss.png", "t", "step")
    with pytest.raises(UsageError, match="nothing to plot"):
        loss_plot({"a": [(0, float("nan")), (1, float("inf"))]}, tmp_path / "loss.png", "t", "step")
    with pytest.raises(UsageError, match="cannot be scaled"):
        loss_plot({"a": [(0, -1e308), (1, 1e308)]}, tmp_path / "loss.png", "t", "step")
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(UsageError, match="cannot be written"):
        loss_plot({"a": [(0, 1.0)]}, tmp_path / "taken.png", "t", "step")
    loss_plot({"a": [(0, 2.0), (1, float("inf")), (2, 1.0)]}, tmp_path / "ok.png", "t", "step")
    with Image.open(tmp_path / "ok.png") as im:
        assert im.format == "PNG"


def test_json_output_is_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    _emit({"distance": float("inf"), "losses": [1.5, float("nan")], "nested": {"x": (float("-inf"), 2)}}, True)
    out = capsys.readouterr().out
    refuse = lambda c: pytest.fail(f"non-standard JSON constant {c}")  # noqa: E731
    assert json.loads(out, parse_constant=refuse) == {
        "distance": None,
        "losses": [1.5, None],
        "nested": {"x": [None, 2]},
    }


# -- the CLI: one line, exit 2 ------------------------------------------------------------------------


def test_cli_run_refuses_bad_jobs_and_outputs_in_one_line(tmp_path: pathlib.Path) -> None:
    out = str(tmp_path / "out")
    assert_one_line_error(cli("run", str(tmp_path), "--out", out), f"job file {tmp_path} is a directory")
    fifo = tmp_path / "job.toml"
    os.mkfifo(fifo)
    assert_one_line_error(cli("run", str(fifo), "--out", out), "is not a regular file")
    nan_job = tmp_path / "nan.toml"
    text, n = re.subn(r"(?m)^lr = .*$", "lr = inf", specs.load("spsa").to_toml())
    assert n == 1  # else the job is valid and the CLI would train it
    nan_job.write_text(text)
    assert_one_line_error(cli("run", str(nan_job), "--out", out), "algorithm.lr = inf is not a finite number")
    taken = tmp_path / "a-file"
    taken.write_text("")
    assert_one_line_error(cli("run", "--default", "--out", str(taken)), "exists and is not a directory")
    assert_one_line_error(cli("run", "--default", "--out", str(taken / "run")), "is not a directory this user")
    for count in ("0", "-1", "65"):
        assert_one_line_error(cli("run", "--default", "--trainers", count, "--out", out), "--trainers must be between")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_cli_on_a_run_with_nothing_to_show_or_a_bad_trainer_answers_in_one_line(bare_run: Any) -> None:
    root, _, _ = bare_run()
    assert_one_line_error(cli("show", str(root)), "records no checkpoint yet")
    for who in ("²", "٣", "0x1", "", "1 "):
        assert_one_line_error(
            cli("check-step", str(root), "--step", "0", "--trainer", who), "must be a trainer index or a hex"
        )


def test_check_step_with_a_digit_like_trainer_names_no_trainer(bare_run: Any) -> None:
    from trustgen.training.replay import check_step

    root, _, _ = bare_run()
    with pytest.raises(RunError, match="names no single trainer"):
        check_step(root, 0, "²")  # str.isdigit accepts it, int() does not


def test_cli_show_with_a_bad_plot_or_run_json_answers_in_one_line(bare_run: Any) -> None:
    root, author, spec = bare_run()
    add_checkpoint(root, author, spec, 3.25)
    assert_one_line_error(cli("show", str(root), "--plot", str(root / "loss.svg")), "must end in .png")
    # run.json is the run's unsigned notes: broken notes read as none, the signed records still show
    for broken in ("[1, 2]", "{not json"):
        (root / "run.json").write_text(broken)
        res = cli("show", str(root), "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["checkpoints"][0]["heldout_loss"] == 3.25, res.stderr
    # run.json is written with Python's json, which spells an infinite loss `Infinity`.
    (root / "run.json").write_text(json.dumps({"final_step": 0, "rejected": [{"distance": float("inf")}]}))
    res = cli("show", str(root), "--json")
    assert res.returncode == 0, res.stderr
    refuse = lambda c: pytest.fail(f"non-standard JSON constant {c}")  # noqa: E731
    shown = json.loads(res.stdout, parse_constant=refuse)
    assert shown["rejected"] == [{"distance": None}] and shown["checkpoints"][0]["heldout_loss"] == 3.25


def test_cli_replay_under_an_unusable_device_or_thread_count_answers_in_one_line(bare_run: Any) -> None:
    root, _, _ = bare_run(device="cuda:x")
    assert_one_line_error(cli("replay", str(root)), "profile.device 'cuda:x' cannot be used here")
    root, _, _ = bare_run()
    assert_one_line_error(cli("replay", str(root), "--threads", "-1"), "--threads = -1 is outside")
