"""tpu_setup.sh picks a Python >= 3.12 for the venv (or installs one with uv) and says so in --dry-run.

These run the script itself (bash, no jax, well under a second each): it is what a TPU user runs first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run(tmp_path: Path, path: str, **env: str) -> subprocess.CompletedProcess:
    environment = {"HOME": str(tmp_path), "PATH": path, "SORA_VENV": str(tmp_path / "venv"), **env}
    return subprocess.run([shutil.which("bash"), str(REPO / "tpu_setup.sh"), "--dry-run", "--no-smoke"], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=60)


def fake_python(folder: Path, name: str, minor: int) -> Path:
    """An interpreter stand-in that answers the script's version check as Python 3.<minor> would."""
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/sh\n[ {minor} -ge 12 ]\n")
    script.chmod(0o755)
    return script


def test_the_venv_is_made_from_the_python_given(tmp_path):
    result = dry_run(tmp_path, os.environ["PATH"], SORA_PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    assert f"+ {sys.executable} -m venv {tmp_path / 'venv'}" in result.stdout
    assert "uv python install" not in result.stdout


def test_an_old_python_given_is_refused_in_one_line(tmp_path):
    old = fake_python(tmp_path / "bin", "python3.10", 10)
    result = dry_run(tmp_path, os.environ["PATH"], SORA_PYTHON=str(old))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "is not a Python >= 3.12" in result.stderr


def test_with_only_python_3_10_uv_installs_3_12(tmp_path):
    # A TPU VM on Ubuntu 22.04: python3 is 3.10 and there is no python3.12 nor uv on PATH.
    tools = tmp_path / "bin"
    fake_python(tools, "python3", 10)
    for tool in ("cat", "sed"):
        (tools / tool).symlink_to(shutil.which(tool))
    result = dry_run(tmp_path, str(tools))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    install_uv = lines.index("+ python3 -m pip install --quiet --user uv")
    install_python = lines.index(f"+ {tmp_path}/.local/bin/uv python install 3.12")
    make_venv = lines.index(f"+ $(uv python find 3.12) -m venv {tmp_path / 'venv'}")
    assert install_uv < install_python < make_venv
