"""pyproject.toml against the pinned requirements files and the code, and the scripts' check that their Python
imports this checkout (they set no PYTHONPATH)."""
from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest
import tomllib

from helpers import REPO, assert_user_error

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(name: str) -> dict:
    """package name -> its specifier, of one requirements file (without the files it includes)."""
    found = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            package, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line).groups()
            found[package.lower()] = spec
    return found


def specifiers(listed) -> dict:
    return {m.group(1).lower(): m.group(2) for m in (re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", s) for s in listed)}


def test_the_dependencies_are_the_atlas_side_minimum():
    assert specifiers(PROJECT["dependencies"]) == requirements("requirements-atlas.txt")


def test_the_extras_agree_with_the_pinned_files():
    pinned = {**requirements("requirements.txt"), **requirements("requirements-ray.txt"),
              **requirements("requirements-dev.txt"), **requirements("requirements-int8.txt")}
    for extra, listed in PROJECT["optional-dependencies"].items():
        for package, spec in specifiers(listed).items():
            version = pinned[package].lstrip("=")
            # torch exactly as tested (the export's numerics); ray the same on every node; nncf as tested (its
            # ONNX API moves between minor versions); the dev tools pinned
            exact = package in ("torch", "ray", "nncf") or extra == "dev"
            assert spec == ("==" if exact else ">=") + version, (extra, package, spec, pinned[package])


@pytest.mark.parametrize("command, target", sorted(PROJECT["scripts"].items()))
def test_every_command_runs_main_under_run_cli(command, target):
    module_name, function = target.split(":")
    module = importlib.import_module(module_name)
    assert function == "run" and callable(module.run) and callable(module.main), command
    source = (REPO / (module_name.replace(".", "/") + ".py")).read_text()
    assert "def run() -> None:\n" in source and "    run_cli(main)\n" in source


# --- the scripts' check of their Python ------------------------------------------------------------------

CHECK = 'source "{}"\nPYTHON="$1"\nrequire_project_python\necho "checked"\n'


def check_python(tmp_path, python: str, env: dict = None) -> subprocess.CompletedProcess:
    script = tmp_path / "check.sh"
    script.write_text(CHECK.format(REPO / "scripts" / "common.sh"))
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HRNETSEG_CHECKED_PYTHON")}
    return subprocess.run(["bash", str(script), python], cwd=str(tmp_path), env=dict(full_env, **(env or {})),
                          capture_output=True, text=True, timeout=60)


def python_without_site(tmp_path) -> str:
    """This Python without site-packages (-S): it cannot import the editable install."""
    wrapper = tmp_path / "python_no_site"
    wrapper.write_text('#!/bin/sh\nexec "{}" -S "$@"\n'.format(sys.executable))
    wrapper.chmod(0o755)
    return str(wrapper)


def test_the_check_passes_the_installed_checkout_from_any_folder(tmp_path):
    result = check_python(tmp_path, sys.executable)
    assert result.returncode == 0 and result.stdout == "checked\n", result.stderr


def test_a_python_without_this_checkout_is_one_line_saying_how_to_install_it(tmp_path):
    result = check_python(tmp_path, python_without_site(tmp_path))
    assert_user_error(result, "cannot import hrnetseg", "pip install -e {}".format(REPO), "--no-deps")
    # the current folder does not count: the scripts' commands run from anywhere
    shutil.copytree(REPO / "hrnetseg", tmp_path / "hrnetseg")
    assert_user_error(check_python(tmp_path, python_without_site(tmp_path)), "cannot import hrnetseg")


def test_a_copy_installed_from_this_checkout_passes_while_it_matches(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(REPO / "hrnetseg", site / "hrnetseg", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(site)}
    assert check_python(tmp_path, python_without_site(tmp_path), env).returncode == 0
    (site / "hrnetseg" / "util" / "cli.py").write_text("# an older version\n")
    result = check_python(tmp_path, python_without_site(tmp_path), env)
    assert_user_error(result, "imports hrnetseg from {}".format(site / "hrnetseg"), "hrnetseg/util/cli.py")
