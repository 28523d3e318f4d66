"""Processes: how many cores this process may use and the CPU's feature flags, how many workers to start for a
number of tasks, whether a process runs or is one of ours, a child's exit status in words, and children that die
with their parent.

Valid Python 3.7, standard library only.
"""
from __future__ import annotations

import os
import signal
import site
import sys
from typing import Dict, FrozenSet, Optional

_ANCESTOR_DEPTH = 64
PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset narrows), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def cpu_flags_reported() -> Optional[FrozenSet[str]]:
    """The feature flags of the first CPU in /proc/cpuinfo (Linux); None where there is no such line to read."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def default_workers(requested: Optional[int], tasks: int) -> int:
    """Parallel workers for `tasks` items: as requested, else one per core; never more than the items."""
    return max(1, min(requested or cpu_cores(), tasks or 1))


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs (on this machine, in this PID namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parent_of(pid: int) -> Optional[int]:
    try:
        with open("/proc/{}/stat".format(pid), "rb") as fh:
            line = fh.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it
    fields = line[line.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def is_ancestor(pid: int) -> bool:
    """Whether pid is this process's parent, grandparent, ... (through /proc; the parent only elsewhere)."""
    parent: Optional[int] = os.getppid()
    for _ in range(_ANCESTOR_DEPTH):
        if parent == pid:
            return True
        if parent is None or parent <= 1:
            return False
        parent = _parent_of(parent)
    return False


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; kept across exec), and exit now if the
    parent is already gone (it died before the request was made).

    The lock of a killed owner is taken over by the next run; a child of the owner that went on writing would
    then write into the same output as that run. The kernel's "parent" is the forking thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def env_for_python_children(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a child `python -m hrnetseg...` that must run this same hrnetseg: `env` (default
    os.environ) with the folder this package was imported from first on PYTHONPATH, unless that folder is a
    site-packages folder (an installed copy: the child finds it there, and site-packages on PYTHONPATH would
    come before the standard library)."""
    env = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    site_folders = set(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    site_folders.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else "")
    if os.path.realpath(root) not in {os.path.realpath(folder) for folder in site_folders if folder}:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def exit_status_text(returncode: int) -> str:
    """A child's exit status in words: "exit code 3", or for one killed by a signal "killed by SIGKILL (out of
    memory?)": the kernel's OOM killer sends SIGKILL, which a bare "exit code -9" hides."""
    if returncode >= 0:
        return "exit code {}".format(returncode)
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "signal {}".format(-returncode)
    return "killed by {}{}".format(name, " (out of memory?)" if -returncode == signal.SIGKILL else "")
