"""Shared test helpers: run the CLIs as a user would, share expensive artefacts per session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(args: Sequence[str], cwd: Path = REPO, env: dict = None, timeout: float = 600,
               input_text: str = None) -> subprocess.CompletedProcess:
    """Run `python <args>` (a top-level script or `-m module`) and capture text output."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("HRNETSEG_PROGRESS", "0")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, *map(str, args)], cwd=str(cwd), env=full_env, capture_output=True,
                          text=True, timeout=timeout, input=input_text)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1 and "error" in lines[-1].lower(), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


@pytest.fixture
def run():
    return run_script
