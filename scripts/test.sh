#!/usr/bin/env bash
# Run the test suite in the project's environment (created on first use). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_venv requirements-dev.txt requirements-ray.txt
cd "${REPO_ROOT}"
"${PYTHON}" -m pytest -q "$@"
