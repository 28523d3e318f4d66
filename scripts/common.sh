# Shared shell habits for scripts/*.sh; source it, do not run it.
# Strict mode, a message naming the command that failed, and the project's virtual environment.
set -euo pipefail
trap 'rc=$?; echo "error: command failed (exit ${rc}): ${BASH_COMMAND}" >&2; exit "${rc}"' ERR

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

log() { echo "==> $*" >&2; }

# ensure_venv REQUIREMENTS...: create ${HRNETSEG_VENV:-REPO/.venv} once, reinstall when a requirements
# file changes, and point PYTHON at it. HRNETSEG_VENV=none uses ${PYTHON:-python3} as it is.
ensure_venv() {
  local venv="${HRNETSEG_VENV:-${REPO_ROOT}/.venv}"
  if [ "${venv}" = "none" ]; then
    PYTHON="${PYTHON:-python3}"
    return 0
  fi
  local stamp="${venv}/.hrnetseg-stamp-$(echo "$*" | tr ' /' '__')"
  local want
  want="$(cd "${REPO_ROOT}" && cat "$@" requirements.txt | sha256sum | cut -d' ' -f1)"
  if [ ! -x "${venv}/bin/python" ] || [ "$(cat "${stamp}" 2>/dev/null || true)" != "${want}" ]; then
    log "setting up ${venv} from $* (first run only; torch is the large part)"
    [ -x "${venv}/bin/python" ] || "${BOOTSTRAP_PYTHON:-python3}" -m venv "${venv}"
    local args=()
    local req
    for req in "$@"; do args+=(-r "${REPO_ROOT}/${req}"); done
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
    echo "${want}" > "${stamp}"
  fi
  PYTHON="${venv}/bin/python"
}
