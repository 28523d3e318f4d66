"""One writer per output: `<output>.lock` beside a folder or file output, held with fcntl.flock.

Two runs writing the same folder would mix two models' outputs under one summary; the second run stops at
once, naming the first's PID. The lock file sits beside the output (`results/bs1.lock`,
`result.json.lock`), never inside it, holds the owner's PID and is removed when the owner lets go. The
kernel releases a flock when its holder dies, so a killed run never blocks the next one; a lock still held
after its owner died (an orphaned child kept the descriptor) is taken over.

A lock is shared with the owner's descendants: a shell script that holds `results/bs1.lock` (through
`python3 -m hrnetseg.util.locks acquire`) runs `hrnetseg.runner.cli` into that folder without being refused.

Atlas-side module: standard library only, valid Python 3.7 (POSIX; no locking where fcntl is missing).

    python3 -m hrnetseg.util.locks path results/bs1                          # the lock file: .../results/bs1.lock
    python3 -m hrnetseg.util.locks acquire --fd 9 --owner $$ results/bs1     # used by scripts/common.sh
    python3 -m hrnetseg.util.locks run [--parent PID] -- CMD ARGS...         # CMD dies with the calling script
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import stat
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from hrnetseg.util.cli import ArgumentParser, nonnegative_int, positive_int, run_cli
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import (
    FULL_DISK_ERRNOS,
    not_a_folder_above,
    not_regular_reason,
    os_error_reason,
    unwritable_folder_reason,
    write_error,
)
from hrnetseg.util.processes import die_with_parent, is_ancestor, pid_alive

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

LOCK_SUFFIX = ".lock"
EXIT_RETRY = 75          # `acquire`: the lock of a dead owner was removed; reopen the file and try again
_TRIES = 3

_held: Dict[str, int] = {}  # lock path -> how many times this process holds it


def lock_path_for(output: str) -> str:
    """`<output>.lock` beside the real location of a folder or file output (symlinks and a trailing slash
    resolved)."""
    return os.path.realpath(os.fspath(output)) + LOCK_SUFFIX


def held_lock_paths() -> List[str]:
    """The lock files this process holds now (output_lock), which no output of it may replace."""
    return sorted(_held)


def read_owner(lock_path: str) -> Optional[int]:
    try:
        with open(lock_path, "rb") as fh:
            text = fh.read(64).strip()
    except OSError:
        return None
    return int(text) if re.fullmatch(rb"[0-9]+", text) else None


def _busy_error(output: str, owner: Optional[int]) -> UserError:
    who = "PID {}".format(owner) if owner else "a process whose PID is not recorded yet"
    return UserError("{} is being written by another run ({}): wait for it to finish or choose another output "
                     "(lock {})".format(output, who, lock_path_for(output)))


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _record_owner(fd: int, owner: int, lock_path: str) -> None:
    """Write the owner's PID into the lock file we hold. When that fails (a full disk), the file is removed
    (a lock file naming nobody would read as a run that has not started yet) and the run stops in one line."""
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        if os.write(fd, "{}\n".format(owner).encode("ascii")) == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as exc:
        if _same_file(fd, lock_path):
            with contextlib.suppress(OSError):
                os.remove(lock_path)
        raise write_error(exc, lock_path)


def _identity(path: str) -> Optional[Tuple[int, int]]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _remove_dead_owners_lock(lock_path: str, owner: Optional[int], seen: Optional[Tuple[int, int]]) -> bool:
    """Remove a lock file whose recorded owner is dead (its flock kept by an orphan); True if removed.

    `seen`: the file whose owner was read; a file that replaced it since (a new, live owner's) stays."""
    if owner is None or pid_alive(owner):
        return False
    if seen is not None and _identity(lock_path) == seen:
        try:
            os.remove(lock_path)
        except OSError:
            pass
        print("note: took over {} from PID {}, which is no longer running".format(lock_path, owner),
              file=sys.stderr)
    return True


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def check_lock_file(lock_path: str) -> str:
    """`lock_path` when nothing or a regular file is there; a UserError otherwise.

    A lock file is only ever a regular file made by these tools. Opening anything else would go wrong: a FIFO
    blocks the opener (the shell's `exec {fd}>>`), and recording the owner through a symbolic link would
    overwrite its target (a device, or somebody's file)."""
    try:
        mode = os.lstat(lock_path).st_mode
    except OSError:
        return lock_path   # absent (or unreachable: opening it says why)
    if stat.S_ISLNK(mode):
        raise UserError("lock file {} is a symbolic link (to {}); these tools never make one: remove it".format(
            lock_path, os.readlink(lock_path)))
    reason = not_regular_reason(lock_path)
    if reason is not None:
        raise UserError("lock file {} {}; these tools never make one: remove it".format(lock_path, reason))
    return lock_path


class _NoPlaceForLock(Exception):
    """The lock file cannot be made where it belongs: the output's parent folder is not writable to us (or on
    a read-only file system); the message says which."""


def _open_lock_file(lock_path: str) -> int:
    try:
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)   # a folder output's parent, made as it would be
        check_lock_file(lock_path)
        # O_NOFOLLOW and O_NONBLOCK: something swapped in since the check fails here instead of being written
        # through or blocking
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            check_lock_file(lock_path)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not os.path.lexists(lock_path):
            raise _NoPlaceForLock("its folder {}".format(
                "is on a read-only file system" if exc.errno == errno.EROFS else
                unwritable_folder_reason(os.path.dirname(lock_path))))
        if exc.errno in FULL_DISK_ERRNOS:
            raise write_error(exc, lock_path)
        raise UserError("cannot create lock file {}: {}".format(
            lock_path, not_a_folder_above(os.path.dirname(lock_path)) or os_error_reason(exc)))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        check_lock_file(lock_path)
    return fd


@contextlib.contextmanager
def output_lock(output: Optional[str]) -> Iterator[None]:
    """Hold `<output>.lock` for the block, or stop at once with a UserError naming the holder's PID.

    None: nothing to lock. Re-entrant within a process; a lock held by an ancestor process counts as held.
    """
    if output is None or fcntl is None:
        yield
        return
    lock_path = lock_path_for(output)
    if lock_path in _held:
        _held[lock_path] += 1
        try:
            yield
        finally:
            _held[lock_path] -= 1
        return
    try:
        fd = _acquire(output, lock_path)
    except _NoPlaceForLock as why:
        # a folder output in a folder we may not write to (an output folder on a mount point, `.` in a home
        # folder): the output itself is writable, so run, unprotected, and say so
        print("note: {} is not locked against a second run: cannot create {} ({})".format(
            output, lock_path, why), file=sys.stderr)
        fd = None
    _held[lock_path] = 1
    try:
        yield
    finally:
        del _held[lock_path]
        if fd is not None:
            if _same_file(fd, lock_path):
                try:
                    os.remove(lock_path)   # before closing: nobody can lock a file we are about to remove
                except OSError:
                    pass
            os.close(fd)


def _acquire(output: str, lock_path: str) -> Optional[int]:
    """The locked descriptor, or None when an ancestor process holds the lock for us."""
    for _ in range(_TRIES):
        fd = _open_lock_file(lock_path)
        if _try_lock(fd):
            if _same_file(fd, lock_path):   # not a file the previous holder removed meanwhile
                try:
                    _record_owner(fd, os.getpid(), lock_path)
                except UserError:
                    os.close(fd)
                    raise
                return fd
            os.close(fd)
            continue
        seen = _identity(lock_path)
        os.close(fd)
        owner = read_owner(lock_path)
        if owner is not None and is_ancestor(owner):
            return None
        if not _remove_dead_owners_lock(lock_path, owner, seen):
            raise _busy_error(output, owner)
    raise _busy_error(output, read_owner(lock_path))


@contextlib.contextmanager
def output_locks(*outputs: Optional[str]) -> Iterator[None]:
    """output_lock for each output given (None entries are skipped), all held for the block."""
    with contextlib.ExitStack() as stack:
        for output in outputs:
            stack.enter_context(output_lock(output))
        yield


# --- python3 -m hrnetseg.util.locks acquire: a lock for a shell script, on a descriptor the script opened ---------

def acquire_on_descriptor(fd: int, output: str, owner: int) -> str:
    """Lock the open file description behind `fd` (the script's; it keeps the lock after we exit).

    Returns "locked", or "shared" when an ancestor of ours holds it; "retry" when a dead owner's lock file
    was removed and the script should reopen it. Raises UserError when another run holds it.
    """
    lock_path = check_lock_file(lock_path_for(output))
    if not _same_file(fd, lock_path):   # the previous owner removed it since the script opened it
        return "retry"
    if _try_lock(fd):
        if not _same_file(fd, lock_path):   # removed between the check and the lock: not the lock any more
            return "retry"
        _record_owner(fd, owner, lock_path)
        return "locked"
    seen = _identity(lock_path)
    holder = read_owner(lock_path)
    if holder is not None and is_ancestor(holder):
        return "shared"
    if _remove_dead_owners_lock(lock_path, holder, seen):
        return "retry"
    raise _busy_error(output, holder)


# --- python3 -m hrnetseg.util.locks run -- CMD: a script's child that dies with the script --------------------------

def run_dying_with_parent(command: Sequence[str], parent: Optional[int] = None) -> None:
    """Become `command` (exec), which the kernel kills when the calling script dies: a script that holds output
    locks runs its long steps so, and a SIGKILL of the script leaves none of them writing.

    parent: the script's PID as it knows it (`$$`): a script that died before we asked is noticed then."""
    if not command:
        raise UserError("run: give the command to run after --")
    die_with_parent(os.getppid() if parent is None else parent)
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        raise UserError("cannot run {}: {}".format(command[0], exc.strerror or exc), exit_code=127)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    path = commands.add_parser("path", help="print the lock file of OUTPUT (exit 2 when something other than a "
                                             "regular file is at its name)")
    path.add_argument("output", help="the folder or file to protect")
    acquire = commands.add_parser("acquire", help="lock OUTPUT.lock through descriptor FD, opened by the caller")
    acquire.add_argument("--fd", type=nonnegative_int, required=True,
                         help="descriptor open on OUTPUT.lock (kept by the caller)")
    acquire.add_argument("--owner", type=positive_int, required=True, help="PID to record as the owner (the caller's)")
    acquire.add_argument("output", help="the folder or file to protect")
    commands.add_parser("run", help="run [--parent PID] -- CMD ARGS...: become CMD, which dies with the calling "
                                    "script (PID: the script's own, to notice one that is already gone)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:   # taken literally: CMD's own flags are not this parser's
        rest, parent = argv[1:], None
        if rest[:1] == ["--parent"] and len(rest) > 1 and re.fullmatch(r"[0-9]+", rest[1]):
            rest, parent = rest[2:], int(rest[1])
        run_dying_with_parent(rest[1:] if rest[:1] == ["--"] else rest, parent)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "path":
        print(check_lock_file(lock_path_for(args.output)))
        return 0
    if args.command != "acquire":
        parser.error("choose a command: path or acquire")
    answer = "locked" if fcntl is None else acquire_on_descriptor(args.fd, args.output, args.owner)
    print(answer)
    return EXIT_RETRY if answer == "retry" else 0


if __name__ == "__main__":
    run_cli(main)
