"""The package itself: version, console script, ``python -m``, dependency policy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import faceaux
from faceaux.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DEPENDENCIES = {"torch", "numpy", "einops", "kornia"}


def test_version_is_pep440_release():
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", faceaux.__version__)


def test_cli_version_prints_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"faceaux {faceaux.__version__}"


def test_cli_without_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: faceaux" in capsys.readouterr().out


def test_python_dash_m_matches_version():
    done = subprocess.run(
        [sys.executable, "-m", "faceaux", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"faceaux {faceaux.__version__}"


def test_runtime_dependencies_are_exactly_the_allowed_four():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert names == RUNTIME_DEPENDENCIES
    assert project["scripts"]["faceaux"] == "faceaux.cli:main"


def test_version_single_source():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'version = { attr = "faceaux.__version__" }' in pyproject


def test_public_names_are_exported():
    for name in faceaux.__all__:
        assert hasattr(faceaux, name), name


def test_py_typed_is_shipped():
    assert (Path(faceaux.__file__).parent / "py.typed").is_file()
