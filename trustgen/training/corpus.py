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
import sysconfig

from trustgen.errors import UsageError

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
BUILTIN = {"stdlib-docs": DATA_DIR / "stdlib-docs.txt", "purple-crosses": DATA_DIR / "purple-crosses"}
MAX_DATASET_BYTES = 256 * 1024 * 1024  # a job's data set is read whole; bound what a spec can name
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
    path = pathlib.Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"data set {source!r} does not exist")
    return path


def dataset_files(path: pathlib.Path) -> list[pathlib.Path]:
    """The files of a data set in canonical order (a single file, or every regular file under a
    directory, hidden ones skipped, sorted by relative POSIX path)."""
    if path.is_file():
        return [path]
    files: list[pathlib.Path] = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(pathlib.Path(root) / n for n in names if not n.startswith("."))
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def dataset_digest(path: pathlib.Path) -> str:
    """`sha256:` + hex over the data set's manifest (relative path, size, sha256 of bytes)."""
    h = hashlib.sha256(b"trustgen/dataset/v1\n")
    total = 0
    for f in dataset_files(path):
        data = f.read_bytes()
        total += len(data)
        if total > MAX_DATASET_BYTES:
            raise UsageError(f"data set {path} is larger than {MAX_DATASET_BYTES >> 20} MiB")
        rel = f.name if path.is_file() else f.relative_to(path).as_posix()
        h.update(f"{rel}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return "sha256:" + h.hexdigest()


def read_text_dataset(path: pathlib.Path) -> str:
    """Every text file of the data set, in canonical order, joined by newlines."""
    parts = []
    for f in dataset_files(path):
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UsageError(f"{f}: not UTF-8 text") from None
    return "\n".join(parts)


def image_files(path: pathlib.Path) -> list[pathlib.Path]:
    files = [f for f in dataset_files(path) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UsageError(f"{path} holds no PNG images")
    return files
