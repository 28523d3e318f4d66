# Shared shell habits for scripts/*.sh; source it, do not run it.
# Strict mode, a message naming the command that failed, flag parsing, and the project's virtual environment.
set -eEuo pipefail
trap 'rc=$?; echo "error: command failed (exit ${rc}): ${BASH_COMMAND}" >&2; exit "${rc}"' ERR

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

log() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 2; }

# step CMD...: log the command, run it, and on failure print it (expanded) and exit with its status.
step() {
  log "$*"
  local rc=0
  "$@" || rc=$?
  [ "${rc}" = 0 ] || { echo "error: command failed (exit ${rc}): $*" >&2; exit "${rc}"; }
}

# usage: the script's header comment (the lines after #!, up to the first line that is not a comment).
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# parse_flags "VALUE NAMES" "SWITCH NAMES" "$@": `--name VALUE` sets the variable `name` for each value
# name, `--name` sets `name=1` for each switch name; hyphens work as underscores; -h/--help prints usage.
parse_flags() {
  local values=" $1 " switches=" $2 " name
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in -h|--help) usage; exit 0 ;; esac
    [[ "$1" =~ ^--[a-z][a-z_-]*$ ]] || die "unknown argument: $1 (see --help)"
    name="${1#--}"
    name="${name//-/_}"
    if [[ "${switches}" == *" ${name} "* ]]; then
      printf -v "${name}" '%s' 1
      shift
      continue
    fi
    [[ "${values}" == *" ${name} "* ]] || die "unknown argument: $1 (see --help)"
    [ $# -ge 2 ] || die "$1 needs a value"
    printf -v "${name}" '%s' "$2"
    shift 2
  done
}

# require_positive_ints FLAG VALUE...: die unless every value is a positive integer.
require_positive_ints() {
  local flag="$1" value
  shift
  [ $# -gt 0 ] || die "${flag} is empty"
  for value in "$@"; do
    [[ "${value}" =~ ^[1-9][0-9]*$ ]] || die "${flag} takes positive integers, not '${value}'"
  done
}

# ensure_venv REQUIREMENTS...: create ${HRNETSEG_VENV:-REPO/.venv} once, reinstall when a requirements
# file changes, and point PYTHON at it. HRNETSEG_VENV=none uses ${PYTHON:-python3} as it is.
# TORCH_INDEX_URL (e.g. the PyTorch CPU wheel index) is passed to pip as an extra index when set.
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
    local args=() req
    for req in "$@"; do args+=(-r "${REPO_ROOT}/${req}"); done
    [ -z "${TORCH_INDEX_URL:-}" ] || args+=(--extra-index-url "${TORCH_INDEX_URL}")
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
    echo "${want}" > "${stamp}"
  fi
  PYTHON="${venv}/bin/python"
}
