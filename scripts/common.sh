# shellcheck shell=bash
# Shared shell habits for scripts/*.sh; source it, do not run it.
# Strict mode, a message naming the command that failed, flag parsing, the checks of arguments and tools, and the
# project's virtual environment.
# A failure ends a script with one line on stderr: `error: ...` from die (exit 2, a problem the user can fix),
# `error: command failed (exit N): COMMAND` for any other command (the ERR trap, or step with its run time), or
# the one-line error of one of the project's own Python tools (python3 -m hrnetseg.X), which names the problem
# better than its command line: those run as `CMD || exit $?` (or `VAR="$(CMD)" || exit $?`), so that no
# "command failed" line follows theirs.
set -eEuo pipefail
trap 'rc=$?; echo "error: command failed (exit ${rc}): ${BASH_COMMAND}" >&2; exit "${rc}"' ERR

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 2; }

# A positive integer in ASCII digits. The digits are listed, not a range: what a range such as 0-9 takes depends on
# the locale's collation in some C libraries, and other scripts' digits (U+0661, a superscript two) are no number
# the tools that get the value read.
POSITIVE_INT='^[123456789][0123456789]*$'

# step CMD...: log the command, run it, and on failure print it (expanded) with its run time and exit with
# its status.
step() {
  log "$*"
  local rc=0 began="${SECONDS}"
  guard "$@"
  "${GUARDED[@]}" || rc=$?
  [ "${rc}" = 0 ] || failed "${rc}" "${began}" "$*"
}

# guard CMD...: set GUARDED to the command line that runs CMD. Once this script holds or shares an output lock
# (lock_output), that is CMD run so that the kernel kills it when the script dies: the next run takes over the
# lock of a script killed with SIGKILL, and a child left running would write into that run's outputs.
# Run "${GUARDED[@]}" as a command of this shell (in a pipeline too), not inside a function or subshell: the
# kill follows the parent process.
HOLDS_LOCKS=0
GUARDED=()
guard() {
  if [ "${HOLDS_LOCKS}" = 1 ]; then GUARDED=("${PYTHON}" -m hrnetseg.util.locks run --parent "$$" -- "$@"); else GUARDED=("$@"); fi
}

# failed RC BEGAN COMMAND: the one-line report of a failed long step (its run time since BEGAN), then exit RC.
failed() {
  echo "error: command failed (exit $1): $3 (after $((SECONDS - $2)) s)" >&2
  exit "$1"
}

# probe CMD...: a quick check (a tool's --help, npu-smi info) under a timeout, so that a hung tool cannot hang
# the script: HRNETSEG_PROBE_TIMEOUT seconds (default 30), then one line naming the probe and exit 2.
# Returns the command's status; its output (stdout and stderr) is left in PROBE_OUTPUT.
PROBE_OUTPUT=""
probe() {
  local limit="${HRNETSEG_PROBE_TIMEOUT:-30}" rc=0 out
  [[ "${limit}" =~ ${POSITIVE_INT} ]] || die "HRNETSEG_PROBE_TIMEOUT takes a whole number of seconds, not '${limit}'"
  out="$(mktemp)"
  timeout --kill-after=5 "${limit}" "$@" > "${out}" 2>&1 < /dev/null || rc=$?
  # shellcheck disable=SC2034  # read by the script that called probe
  PROBE_OUTPUT="$(cat "${out}")"
  rm -f -- "${out}"
  case "${rc}" in
    124|137) die "'$*' did not answer within ${limit} s (a hung tool or device; HRNETSEG_PROBE_TIMEOUT=S sets the limit)" ;;
  esac
  return "${rc}"
}

# lock_output PATH: hold PATH's lock (PATH.lock beside it; see hrnetseg/util/locks.py) until this script exits, so a
# second run writing PATH stops at once naming this one's PID; the script's children (preprocess, the runner)
# share it. A lock an ancestor script already holds is shared, not taken again.
LOCKED_FILES=()
lock_output() {
  local lock_file fd rc answer
  lock_file="$("${PYTHON}" -m hrnetseg.util.locks path "$1")" || exit $?
  mkdir -p -- "$(dirname -- "${lock_file}")" 2>/dev/null || die "cannot create the folder of lock file ${lock_file}"
  if [ ! -e "${lock_file}" ] && [ ! -w "$(dirname -- "${lock_file}")" ]; then
    # a folder output in a folder we may not write to (a mount point): run, unprotected, and say so
    log "note: $1 is not locked against a second run: cannot create ${lock_file} (its folder is not writable)"
    return 0
  fi
  for _ in 1 2 3 4 5; do
    { exec {fd}>>"${lock_file}"; } 2>/dev/null || lock_failed "${lock_file}"
    rc=0
    answer="$("${PYTHON}" -m hrnetseg.util.locks acquire --fd "${fd}" --owner "$$" "$1")" || rc=$?
    [ "${rc}" = 75 ] || break   # 75: the file was removed (by a finishing or dead owner) since it was opened
    exec {fd}>&-
  done
  [ "${rc}" != 75 ] || die "cannot take the lock ${lock_file}: it keeps being replaced (another run is starting?)"
  [ "${rc}" = 0 ] || exit "${rc}"
  HOLDS_LOCKS=1
  if [ "${answer}" = locked ]; then
    LOCKED_FILES+=("${lock_file}")
  else
    exec {fd}>&-   # shared with the ancestor that holds it
  fi
}
# lock_failed LOCK_FILE: the one line for a lock file that cannot be created, in the system's words (touch says
# why: a full disk, a read-only file system, ...); a full disk exits 1, as the Python tools do, the rest 2.
lock_failed() {
  local why
  why="$(LC_ALL=C touch -- "$1" 2>&1)" || true
  why="${why##*: }"
  echo "error: cannot create lock file $1: ${why:-it cannot be opened}" >&2
  case "${why}" in "No space left on device"|"Disk quota exceeded") exit 1 ;; esac
  exit 2
}
# At exit the lock files go (the descriptors, closed by the exit itself, still hold the locks while they do).
release_outputs() { [ "${#LOCKED_FILES[@]}" = 0 ] || rm -f -- "${LOCKED_FILES[@]}"; }
trap release_outputs EXIT

# usage: the script's header comment (the lines after #!, up to the first line that is not a comment).
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# parse_flags "VALUE NAMES" "SWITCH NAMES" "$@": `--name VALUE` (or `--name=VALUE`) sets the variable `name` for
# each value name, `--name` sets `name=1` for each switch name; hyphens work as underscores; -h/--help prints usage.
# A value may not be empty (leave the flag out to keep its default), nor one of the flags after `--name ` (a
# forgotten value: `--output_dir --limit 5` would make a folder called --limit).
parse_flags() {
  local values=" $1 " switches=" $2 " flag name value given other
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in -h|--help) usage; exit 0 ;; esac
    given=1
    if [[ "$1" =~ ^(--[a-z][a-z_-]*)=(.*)$ ]]; then
      flag="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}" given=0
    else
      [[ "$1" =~ ^--[a-z][a-z_-]*$ ]] || die "unknown argument: $1 (see --help)"
      flag="$1" value="${2-}"
    fi
    name="${flag#--}"
    name="${name//-/_}"
    if [[ "${switches}" == *" ${name} "* ]]; then
      [ "${given}" = 1 ] || die "${flag} takes no value"
      printf -v "${name}" '%s' 1
      shift
      continue
    fi
    [[ "${values}" == *" ${name} "* ]] || die "unknown argument: ${flag} (see --help)"
    [ "${given}" = 0 ] || [ $# -ge 2 ] || die "${flag} needs a value"
    # an empty value is refused, never taken as "not given": --output_dir "" would put the outputs under /
    [ -n "${value}" ] || die "${flag} needs a value, not an empty string"
    if [ "${given}" = 1 ] && [[ "${value}" =~ ^--[a-z][a-z_-]*(=.*)?$ ]]; then   # --name=--x is taken as said
      other="${value%%=*}"
      other="${other#--}"
      other="${other//-/_}"
      [[ "${values}${switches}" != *" ${other} "* ]] || die "${flag} needs a value, not the flag ${value%%=*}"
    fi
    printf -v "${name}" '%s' "${value}"
    shift "$((1 + given))"   # --name VALUE: two words; --name=VALUE: one
  done
}

# require_file WHAT PATH: die unless PATH is a regular file (or a symlink to one), saying what it is instead.
require_file() {
  local what="$1" path="$2"
  if [ -f "${path}" ]; then return 0; fi
  if [ -L "${path}" ]; then die "${what} ${path} is a broken symbolic link or a symbolic link loop"; fi
  if [ -e "${path}" ]; then die "${what} ${path} is not a regular file"; fi
  die "${what} not found: ${path}"
}

# require_given "FLAG ARG" VALUE WHAT: die unless VALUE is set ("--pth FILE is required (the official checkpoint)").
require_given() {
  [ -n "$2" ] || die "$1 is required ($3)"
}

# require_folder WHAT PATH: die unless PATH is a folder (or a symlink to one).
require_folder() {
  [ -d "$2" ] || die "$1 not found: $2"
}

# require_choice FLAG VALUE CHOICE...: die unless VALUE is one of the CHOICEs ("--input_format is float32 or
# uint8, not 'x'").
require_choice() {
  local flag="$1" value="$2" choice listed="" i
  shift 2
  for choice in "$@"; do
    [ "${value}" != "${choice}" ] || return 0
  done
  for (( i = 1; i <= $#; i++ )); do
    if [ "${i}" = 1 ]; then listed="${!i}"; elif [ "${i}" = $# ]; then listed+=" or ${!i}"; else listed+=", ${!i}"; fi
  done
  die "${flag} is ${listed}, not '${value}'"
}

# require_command NAME HINT: die unless the command NAME is on PATH ("atc not found: HINT").
require_command() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}

# require_output_folder FLAG PATH: die unless PATH is a folder or does not exist yet (the script makes it).
require_output_folder() {
  [ ! -e "$2" ] || [ -d "$2" ] || die "$1 $2 exists and is not a folder"
}

# require_positive_ints FLAG VALUE...: die unless every value is a positive integer in ASCII digits.
require_positive_ints() {
  local flag="$1" value
  shift
  [ $# -gt 0 ] || die "${flag} is empty"
  for value in "$@"; do
    [[ "${value}" =~ ${POSITIVE_INT} ]] || die "${flag} takes positive integers (ASCII digits), not '${value}'"
  done
}

# ensure_venv REQUIREMENTS...: create ${HRNETSEG_VENV:-REPO/.venv} once, install the requirements files and this
# checkout (editable, pyproject.toml) into it, again when one of them changes, and point PYTHON at it.
# HRNETSEG_VENV=none uses ${PYTHON:-python3} as it is (require_project_python checks it).
# TORCH_INDEX_URL (e.g. the PyTorch CPU wheel index) is passed to pip as an extra index when set.
ensure_venv() {
  local venv="${HRNETSEG_VENV:-${REPO_ROOT}/.venv}"
  if [ "${venv}" = "none" ]; then
    PYTHON="${PYTHON:-python3}"
    require_project_python
    return 0
  fi
  local stamp want
  stamp="${venv}/.hrnetseg-stamp-$(echo "$*" | tr ' /' '__')"
  # the requirements, the project's metadata (its commands and modules) and the checkout it is installed from
  want="$(cd "${REPO_ROOT}" && { cat "$@" requirements.txt pyproject.toml; echo "${REPO_ROOT}"; } | sha256sum | cut -d' ' -f1)"
  if [ ! -x "${venv}/bin/python" ] || [ "$(cat "${stamp}" 2>/dev/null || true)" != "${want}" ]; then
    log "setting up ${venv} from $* (first run only; torch is the large part)"
    [ -x "${venv}/bin/python" ] || "${BOOTSTRAP_PYTHON:-python3}" -m venv "${venv}"
    local args=() req
    for req in "$@"; do args+=(-r "${REPO_ROOT}/${req}"); done
    [ -z "${TORCH_INDEX_URL:-}" ] || args+=(--extra-index-url "${TORCH_INDEX_URL}")
    # setuptools >= 70.1 builds the editable install below by itself (older ones need the wheel package)
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}" "setuptools>=70.1"
    # this checkout, editable: imports need neither the current folder nor PYTHONPATH, and edits show at once
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
      -e "${REPO_ROOT}"
    echo "${want}" > "${stamp}"
  fi
  PYTHON="${venv}/bin/python"
  require_project_python
}

# require_project_python: die unless ${PYTHON} imports hrnetseg from this checkout (an editable install, or a copy
# installed from it that still matches it), whatever the current folder: the scripts run `${PYTHON} -m hrnetseg.X`
# and set no PYTHONPATH. Checked once per Python and checkout, the scripts that a script starts included.
require_project_python() {
  local checked="${PYTHON}:${REPO_ROOT}" problem rc=0
  [ "${HRNETSEG_CHECKED_PYTHON:-}" != "${checked}" ] || return 0
  command -v "${PYTHON}" >/dev/null 2>&1 || die "${PYTHON} not found: set PYTHON to the Python to run the steps with"
  problem="$("${PYTHON}" -c "${PROJECT_CHECK}" "${REPO_ROOT}" 2>&1)" || rc=$?
  problem="${problem##*$'\n'}"   # its last line: the one the check prints, after any warnings of the Python
  [ "${rc}" = 0 ] || die "${PYTHON} ${problem:-cannot run (exit ${rc})}: install this checkout into it: \
'${PYTHON} -m pip install -e ${REPO_ROOT}' (or a copy: '${PYTHON} -m pip install --no-deps ${REPO_ROOT}' after \
its requirements, e.g. -r ${REPO_ROOT}/requirements-atlas.txt on the Atlas host)"
  export HRNETSEG_CHECKED_PYTHON="${checked}"
}
# Python 3.7 and standard library only (the Atlas host's Python). Exit 0 when hrnetseg is this checkout's; else
# one line saying what it imports instead.
PROJECT_CHECK='
import os, sys
sys.path[:] = [p for p in sys.path if p not in ("", ".")]   # not the current folder, as from any other folder
repo = os.path.realpath(sys.argv[1])
try:
    import hrnetseg
except ImportError as exc:
    sys.exit("cannot import hrnetseg ({})".format(exc))
found = os.path.dirname(os.path.realpath(hrnetseg.__file__))
if os.path.dirname(found) == repo:
    sys.exit(0)
ours = os.path.join(repo, "hrnetseg")
stale = []
for folder, _, names in os.walk(ours):
    for name in sorted(n for n in names if n.endswith(".py")):
        mine = os.path.join(folder, name)
        copy = os.path.join(found, os.path.relpath(mine, ours))
        try:
            with open(mine, "rb") as a, open(copy, "rb") as b:
                same = a.read() == b.read()
        except OSError:
            same = False
        if not same:
            stale.append(os.path.relpath(mine, repo))
if stale:
    sys.exit("imports hrnetseg from {}, not this checkout ({} of its files differ, e.g. {})".format(
        found, len(stale), stale[0]))
'
