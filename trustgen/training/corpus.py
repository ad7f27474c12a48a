"""Training data sets: a content digest over the bytes, and the default corpus the package ships.

The default corpus is English prose the Python standard library carries: the docstrings of a
fixed list of modules, extracted with `ast` (no import, no execution). `build_stdlib_corpus()`
rebuilds it offline; the shipped file `data/stdlib-docs.txt` is its output on Python 3.11, and
the default job pins that file's digest, so a replayer on another Python version still reads
the same bytes (other versions' docstrings differ, and a rebuilt file would be refused by
digest, never silently used).
"""

from __future__ import annotations

import ast
import hashlib
import os
import pathlib
import stat
import sysconfig
from collections.abc import Iterator

from trustgen.errors import UsageError

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
BUILTIN = {"stdlib-docs": DATA_DIR / "stdlib-docs.txt", "purple-crosses": DATA_DIR / "purple-crosses"}
MAX_DATASET_BYTES = 256 * 1024 * 1024  # a job's data set is read whole; bound what a spec can name
MAX_DATASET_FILES = 1_000_000  # the file list is held in memory while the tree is walked
CHUNK = 1 << 20
IMAGE_SUFFIXES = (".png",)

# Modules whose docstrings make the default corpus, in this order.
STDLIB_MODULES = (
    "argparse textwrap string heapq bisect fractions decimal statistics random difflib shlex json/__init__ "
    "csv calendar datetime functools collections/__init__ contextlib dataclasses enum pathlib shutil tempfile "
    "typing inspect pprint queue sched secrets zipfile tarfile gzip base64 hashlib hmac uuid ipaddress "
    "fnmatch glob locale gettext logging/__init__ unittest/case doctest pdb timeit trace traceback warnings"
).split()
MIN_DOC_CHARS = 80
MAX_CORPUS_CHARS = 240_000


def build_stdlib_corpus(stdlib: pathlib.Path | None = None) -> str:
    """The default corpus from this interpreter's standard library sources: one docstring per
    paragraph, whitespace normalised, capped at MAX_CORPUS_CHARS."""
    root = pathlib.Path(stdlib or sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    size = 0
    for mod in STDLIB_MODULES:
        src = root / f"{mod}.py"
        if not src.is_file():
            continue
        tree = ast.parse(src.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOC_CHARS:
                    para = " ".join(doc.split())
                    if size + len(para) > MAX_CORPUS_CHARS:
                        return "\n".join(out) + "\n"
                    out.append(para)
                    size += len(para) + 1
    return "\n".join(out) + "\n"


def dataset_path(source: str) -> pathlib.Path:
    """Where a spec's `data.source` points: `builtin:NAME` or a local file or directory."""
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in BUILTIN:
            raise UsageError(f"unknown built-in data set {name!r} (known: {', '.join(sorted(BUILTIN))})")
        return BUILTIN[name]
    try:
        path = pathlib.Path(source).expanduser()
        exists = path.exists()
    except (OSError, ValueError, RuntimeError) as e:  # unreadable parent, NUL byte, unknown ~user
        raise UsageError(f"data set {source!r} cannot be opened ({e})") from None
    if not exists:
        raise UsageError(f"data set {source!r} does not exist")
    return path


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _stat(path: pathlib.Path) -> os.stat_result:
    """The file a data set entry names (a link counts as its target: a link to a FIFO is a FIFO)."""
    try:
        return path.stat()
    except FileNotFoundError:
        raise UsageError(f"data set entry {path} does not exist (a dangling link?)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"data set entry {path} cannot be read ({e})") from None


def _entries(path: pathlib.Path) -> list[tuple[pathlib.Path, int]]:
    """The data set's regular files with the sizes stat gives, in canonical order. Anything else
    (FIFO, socket, device, dangling link, link to a directory, unreadable directory) is refused:
    skipping it would give the data set a digest that silently leaves part of it out."""
    st = _stat(path)
    if stat.S_ISREG(st.st_mode):
        return [(path, st.st_size)]
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"data set {path} is {_kind(st.st_mode)}, not a file or a directory")

    def unreadable(e: OSError) -> None:
        raise UsageError(f"data set directory {e.filename} cannot be read ({e.strerror})")

    out: list[tuple[pathlib.Path, int]] = []
    for root, dirs, names in os.walk(path, onerror=unreadable):
        here = pathlib.Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in dirs:
            if (here / d).is_symlink():  # os.walk would list it and never enter it
                raise UsageError(f"data set entry {here / d} is a link to a directory; a data set holds regular files")
        for n in names:
            if n.startswith("."):
                continue
            f = here / n
            st = _stat(f)
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"data set entry {f} is {_kind(st.st_mode)}; a data set holds regular files only")
            out.append((f, st.st_size))
            if len(out) > MAX_DATASET_FILES:
                raise UsageError(f"data set {path} has more than {MAX_DATASET_FILES} files")
    return sorted(out, key=lambda e: e[0].relative_to(path).as_posix())


def _sized_entries(path: pathlib.Path) -> list[tuple[pathlib.Path, int]]:
    """`_entries`, refused before any byte is read when their sizes add up to more than the cap."""
    entries = _entries(path)
    if sum(size for _, size in entries) > MAX_DATASET_BYTES:
        raise UsageError(f"data set {path} is larger than {MAX_DATASET_BYTES >> 20} MiB")
    return entries


def _chunks(f: pathlib.Path, size: int) -> Iterator[bytes]:
    """The file's bytes, in chunks; exactly the `size` bytes its stat promised, or a UsageError.
    Opened non-blocking so a file swapped for a FIFO after the stat cannot hang the read."""
    try:
        fd = os.open(f, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UsageError(f"data set entry {f} cannot be read ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"data set entry {f} changed into something that is not a regular file")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        left = size
        while left >= 0:
            try:
                chunk = fh.read(min(CHUNK, left + 1))
            except OSError as e:
                raise UsageError(f"data set entry {f} cannot be read ({e.strerror})") from None
            if not chunk:
                break
            left -= len(chunk)
            if left < 0:
                break
            yield chunk
        if left != 0:
            raise UsageError(f"data set entry {f} changed size while it was being read")


def dataset_files(path: pathlib.Path) -> list[pathlib.Path]:
    """The files of a data set in canonical order (a single file, or every regular file under a
    directory, hidden ones skipped, sorted by relative POSIX path)."""
    return [f for f, _ in _entries(path)]


def dataset_digest(path: pathlib.Path) -> str:
    """`sha256:` + hex over the data set's manifest (relative path, size, sha256 of bytes)."""
    h = hashlib.sha256(b"trustgen/dataset/v1\n")
    for f, size in _sized_entries(path):
        fh = hashlib.sha256()
        for chunk in _chunks(f, size):
            fh.update(chunk)
        rel = f.name if f == path else f.relative_to(path).as_posix()  # f == path: a one-file data set
        h.update(f"{rel}\0{size}\0{fh.hexdigest()}\n".encode())
    return "sha256:" + h.hexdigest()


def read_text_dataset(path: pathlib.Path) -> str:
    """Every text file of the data set, in canonical order, joined by newlines."""
    parts = []
    for f, size in _sized_entries(path):
        try:
            parts.append(b"".join(_chunks(f, size)).decode("utf-8"))
        except UnicodeDecodeError:
            raise UsageError(f"{f}: not UTF-8 text") from None
    return "\n".join(parts)


def image_files(path: pathlib.Path) -> list[pathlib.Path]:
    files = [f for f in dataset_files(path) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UsageError(f"{path} holds no PNG images")
    return files
