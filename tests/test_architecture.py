"""The house's shape is enforced: imports flow one way (import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def lint_imports(cwd: pathlib.Path, pythonpath: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    exe = pathlib.Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else ["lint-imports"]
    return subprocess.run(cmd + ["--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold() -> None:
    r = lint_imports(ROOT, ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broken" in r.stdout and " 0 broken" in r.stdout


def test_a_back_arrow_breaks_the_contracts(tmp_path: pathlib.Path) -> None:
    """A copy of the package with one upward import (engines -> node) fails the check."""
    shutil.copytree(ROOT / "trustgen", tmp_path / "trustgen", ignore=shutil.ignore_patterns("models", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "trustgen" / "engines" / "back_arrow.py").write_text("import trustgen.node.daemon  # noqa: F401\n")
    r = lint_imports(tmp_path, tmp_path)
    assert r.returncode != 0, r.stdout
    assert "trustgen.engines.back_arrow -> trustgen.node.daemon" in r.stdout


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("cli_net", "trustgen.cli"),  # a command group reaching up to the module that assembles them
        ("cli_local", "trustgen.cli_net"),  # one command group importing another
        ("cli_shared", "trustgen.cli_local"),  # the shared helpers reaching up to a group
    ],
)
def test_the_cli_modules_are_layered_too(tmp_path: pathlib.Path, module: str, target: str) -> None:
    """The split command line keeps one direction: cli > command groups (independent) > cli_shared."""
    shutil.copytree(ROOT / "trustgen", tmp_path / "trustgen", ignore=shutil.ignore_patterns("models", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "trustgen" / f"{module}.py"
    path.write_text(path.read_text() + f"\nimport {target}  # noqa: E402, F401\n")
    r = lint_imports(tmp_path, tmp_path)
    assert r.returncode != 0, r.stdout
    assert f"trustgen.{module} -> {target}" in r.stdout
