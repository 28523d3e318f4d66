"""File-system safety for every step: what may be read, what may be replaced, and how outputs are written.

- Inputs are read only when they are regular files (a FIFO named *.png would block a reader forever).
- A file output that exists must be a regular file, or a symbolic link to one (written through, next to
  its target); a device, FIFO, socket or folder is refused before any work.
- No output of a run may be, or resolve to, one of its inputs or a lock it holds (check_outputs_apart).
- Files are written under a temporary name in the target's folder and renamed into place, so a file that
  exists is complete. The temporary name holds the writer's PID, so the leftovers of a killed run are
  recognised and removed by the next run into the same folder.

Atlas-side module: standard library only, valid Python 3.7.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import os
import re
import stat
import uuid
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from hrnetseg.util.errors import EXIT_USER_ERROR, UserError
from hrnetseg.util.processes import pid_alive

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp$")   # ".<name>.<pid>.<random>.tmp"


# --- what a path is ---------------------------------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _missing(path: str, exc: OSError) -> str:
    """Why stat failed, in words: a symlink loop and a broken link are not 'not found'."""
    if exc.errno == errno.ELOOP:
        return "is a symbolic link loop"
    if os.path.islink(path):
        return "is a broken symbolic link (to {})".format(os.readlink(path))
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    if exc.errno == errno.ENOTDIR:
        return "not found (a part of the path is not a folder)"
    return "not found"


def not_regular_reason(path: str) -> Optional[str]:
    """None for a regular file (or a symlink to one); otherwise why it cannot be read as a file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _missing(path, exc)
    if stat.S_ISREG(mode):
        return None
    return "is {}, not a regular file".format(_kind(mode))


def _require_a_path(path: str, what: str) -> None:
    if not path:   # os.stat("") says "not found", which reads as if a file had been named
        raise UserError("no {} given (an empty path)".format(what))


def require_file(path: str, what: str = "file") -> str:
    """`path` when it is a regular file; a one-line UserError saying what it is otherwise."""
    _require_a_path(path, what)
    reason = not_regular_reason(path)
    if reason is not None:
        if reason == "not found":
            raise UserError("{} not found: {}".format(what, path))
        raise UserError("{} {} {}".format(what, path, reason))
    return path


def require_folder(path: str, what: str = "folder") -> str:
    _require_a_path(path, what)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        reason = _missing(path, exc)
        if reason == "not found":
            raise UserError("{} not found: {}".format(what, path))
        raise UserError("{} {} {}".format(what, path, reason))
    if not stat.S_ISDIR(mode):
        raise UserError("{} {} is {}, not a folder".format(what, path, _kind(mode)))
    return path


def not_a_folder_above(path: str) -> Optional[str]:
    """Why `path` can never be a folder: the nearest part of it that exists (path itself included) is not a
    folder, in words ("/data/x.txt is a file, not a folder"); None when that part is a folder."""
    part = os.path.abspath(path)
    while not os.path.lexists(part):
        parent = os.path.dirname(part)
        if parent == part:
            return None
        part = parent
    if os.path.isdir(part):
        return None
    try:
        return "{} is {}, not a folder".format(part, _kind(os.stat(part).st_mode))
    except OSError as exc:
        return "{} {}, not a folder".format(part, _missing(part, exc))


# --- outputs ----------------------------------------------------------------------------------------------

def write_target(path: str) -> str:
    """Where writing `path` lands: the target of a symbolic link (written through), else the path itself."""
    path = os.fspath(path)
    return os.path.realpath(path) if os.path.islink(path) else path


def check_output_file(path: Optional[str], flag: str = "") -> None:
    """Fail before the slow part when an output file cannot be written (None: no output asked for).

    It may be absent, a regular file, or a symlink to either; anything else (a device such as /dev/null,
    a FIFO, a socket, a folder) is refused.
    """
    if path is None:
        return
    what = "{} {}".format(flag, path) if flag else path
    if not path or path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)) or \
            os.path.basename(path) in (".", ".."):
        raise UserError("cannot write {}: give a file name".format(what if path else (flag or "the output") +
                                                                     " (an empty name)"))
    target = write_target(path)
    if os.path.islink(target):
        raise UserError("cannot write {}: it is a symbolic link loop".format(what))
    if os.path.lexists(target):
        mode = os.stat(target).st_mode
        if stat.S_ISDIR(mode):
            raise UserError("cannot write {}: it is a folder; give a file name".format(what))
        if not stat.S_ISREG(mode):
            raise UserError("cannot write {}: it is {}; give a regular file's name".format(what, _kind(mode)))
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        blocked = not_a_folder_above(folder)
        if blocked is not None:
            raise UserError("cannot write {}: {}".format(what, blocked))
        raise UserError("cannot write {}: folder {} does not exist".format(what, folder))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError("cannot write {}: folder {} {}".format(what, folder, unwritable_folder_reason(folder)))


def make_output_folder(path: Optional[str], flag: str = "") -> bool:
    """Create an output folder (parents too) or accept an existing one; True if this call created it."""
    if path is None:
        return False
    if not path:
        raise UserError("{} is empty: give a folder name".format(flag or "the output folder"))
    what = "{} {}".format(flag, path) if flag else path
    if os.path.lexists(path) and not os.path.isdir(path):
        try:
            kind = _kind(os.stat(path).st_mode)
        except OSError as exc:
            raise UserError("{} {}".format(what, _missing(path, exc)))
        raise UserError("{} exists and is {}, not a folder".format(what, kind))
    created = not os.path.isdir(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError("cannot create output folder {}: {}".format(what, not_a_folder_above(path) or
                                                                       os_error_reason(exc)))
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError("cannot write to output folder {}: it {}".format(what, unwritable_folder_reason(path)))
    return created


def os_error_reason(exc: OSError) -> str:
    """An OSError's cause in words: a read-only file system is not a permission problem (chmod cannot fix it)."""
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def unwritable_folder_reason(folder: str) -> str:
    """Why a folder that os.access calls unwritable is so: on a read-only file system (a read-only mount), or
    not writable to us (its permissions)."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1))
    except OSError:
        read_only = False
    return "is on a read-only file system" if read_only else "is not writable"


def describe_os_error(exc: OSError, path: str) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device while writing {}".format(path)
    return "cannot write {}: {}".format(path, os_error_reason(exc))


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def write_error(exc: OSError, path: str) -> UserError:
    """A failed write of `path` as a one-line UserError: a full disk (or quota) exits 1, as a failed check does
    (no flag can fix it); the rest 2."""
    return UserError(describe_os_error(exc, path), exit_code=1 if exc.errno in FULL_DISK_ERRNOS else EXIT_USER_ERROR)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it into place only when the block succeeds.

    An interrupted or failed write leaves nothing behind, so a file that exists is complete. A symlink is
    written through (the temporary file goes next to its target); a target that exists and is not a
    regular file is never replaced.
    """
    path = os.fspath(path)
    target = write_target(path)
    if os.path.lexists(target) and not os.path.isfile(target):
        raise UserError("cannot write {}: it exists and is not a regular file".format(path))
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise UserError("cannot write {}: folder {} does not exist".format(path, folder))
    # named before it is created (not tempfile.mkstemp): a Ctrl-C that lands just as the file appears still
    # knows what to remove
    tmp = os.path.join(folder, temporary_name(target))
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_current_umask())
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        if created or not isinstance(exc, FileExistsError):   # a file of that name that is not ours stays
            remove_quietly(tmp)
        raise write_error(exc, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def temporary_name(target: str) -> str:
    """`.<name>.<pid>.<random>.tmp` for a file or folder written in place of `target` (what is_stale_temporary
    recognises)."""
    return ".{}.{}.{}.tmp".format(os.path.basename(target), os.getpid(), uuid.uuid4().hex[:12])


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def remove_stale_temporaries(folder: str, names: str = "*") -> int:
    """Remove the temporary files that killed runs left in `folder` (their writer's PID is gone).

    names: a glob of the files whose temporaries go (`*`: every one, for folders the tools own). Files of a
    writer that is still running are kept. Returns how many were removed.
    """
    removed = 0
    for path in glob.glob(os.path.join(glob.escape(folder), ".*.tmp")):
        if is_stale_temporary(path, names) and os.path.isfile(path):
            remove_quietly(path)
            removed += 1
    return removed


def is_stale_temporary(path: str, names: str = "*") -> bool:
    """Whether `path` is named as the temporaries of this module are, for a file like `names` (a glob), by a
    writer whose PID is gone."""
    match = _TEMPORARY.match(os.path.basename(path))
    return bool(match) and fnmatch.fnmatchcase(match.group("name"), names) and not pid_alive(int(match.group("pid")))


def remove_stale_temporaries_beside(path: str) -> int:
    """The killed runs' temporaries of files like `path` (same extension) in its target's folder: a file output
    may sit in a folder the tools do not own (the current one), where other programs' `.x.123.y.tmp` stay."""
    target = os.path.abspath(write_target(path))
    extension = os.path.splitext(target)[1]
    return remove_stale_temporaries(os.path.dirname(target), "*" + extension if extension else
                                    glob.escape(os.path.basename(target)))


# --- outputs apart from inputs ----------------------------------------------------------------------------

BREAKS_LOCK = "writing it would break the lock"
Paths = Union[None, str, Iterable[Optional[str]]]   # one path (str or os.PathLike), several, or none


def _listed(paths: Paths) -> List[str]:
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(path) for path in paths if path is not None]


class _Resolver(object):
    """os.path.realpath for many files of few folders: each folder is resolved once, then only the file itself
    is looked at (a symbolic link resolved in full)."""

    def __init__(self) -> None:
        self._folders: Dict[str, str] = {}

    def __call__(self, path: str) -> str:
        absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
        folder, name = os.path.split(absolute)
        if name in ("", ".", ".."):
            return os.path.realpath(absolute)
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder)
        joined = os.path.join(self._folders[folder], name)
        return os.path.realpath(joined) if os.path.islink(joined) else joined


def _file_key(path: str, resolve: _Resolver) -> Tuple:
    """What makes two names one file: (device, inode) of an existing file, so symbolic and hard links count;
    the resolved path of one not there yet (a lock file before it is taken, a link to nothing)."""
    try:
        info = os.stat(path)
    except OSError:
        return ("path", resolve(path))
    return ("file", info.st_dev, info.st_ino)


def check_outputs_apart(outputs: Mapping[str, Paths], inputs: Optional[Mapping[str, Paths]] = None,
                        locked: Optional[Mapping[str, Paths]] = None) -> None:
    """Refuse, before any work, a file the run would write that is one of the files it reads or a lock it holds.

    outputs: role -> the file(s) the run writes ("--save_path", "a --save_vis picture"); no two may be one file.
    inputs: role -> the file(s) it reads ("the model", "a label"): the files the run lists, never a folder
    walked again. locked: role -> the folder outputs it locks. The lock (`<output>.lock`) of each output named
    on its own, of each locked folder, and every lock this process holds are protected too.
    A name is compared by what it is: the same (device, inode) for files that exist (symbolic and hard links
    count), the same resolved path for one that does not exist yet. Raises a one-line UserError naming both
    roles.
    """
    from hrnetseg.util.locks import held_lock_paths, lock_path_for  # locks.py builds on this module

    resolve = _Resolver()
    protected: Dict[Tuple, Tuple[str, str, str]] = {}   # key -> (what the file is, its name, what writing would do)

    def protect(path: str, what: str, harm: str) -> None:
        protected.setdefault(_file_key(path, resolve), (what, path, harm))

    for role, paths in (inputs or {}).items():
        for path in _listed(paths):
            protect(path, "is {} of this run".format(role), "writing it would replace that input")
    # the locks a run takes: one per file output named on its own (`--save_path`), one per locked folder; the
    # files of a list (pictures, bins) are held through their folder's
    single = [(role, path) for role, path in outputs.items() if isinstance(path, (str, os.PathLike))]
    for role, paths in single + list((locked or {}).items()):
        for path in _listed(paths):
            protect(lock_path_for(path), "is the lock file of {} {}".format(role, path), BREAKS_LOCK)
    for lock in held_lock_paths():
        protect(lock, "is a lock file this run holds", BREAKS_LOCK)
    written: Dict[Tuple, str] = {}
    for role, paths in outputs.items():
        for path in _listed(paths):
            key = _file_key(path, resolve)
            if key in protected:
                what, name, harm = protected[key]
                shown = "" if os.path.abspath(name) == os.path.abspath(path) else " ({})".format(name)
                raise UserError("{} {} {}{}: {}; give it another name".format(role, path, what, shown, harm))
            if key in written:
                raise UserError("{} and {} {} are the same file: give two names".format(written[key], role, path))
            written[key] = "{} {}".format(role, path)
