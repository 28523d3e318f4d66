"""Shared CLI habits: one-line errors with exit code 2, atomic writes, progress bars.

Valid Python 3.7 and free of torch: the Atlas-side scripts use it.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import tempfile
from typing import Callable, Iterator, Optional, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem the user can fix (bad path, bad file, bad flag); printed on one line, exit code 2."""

    def __init__(self, message: str, exit_code: int = EXIT_USER_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> None:
    """Run a script's main(); user errors become one line on stderr, never a traceback."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "hrnetseg"
    try:
        code = main(argv)
    except UserError as exc:
        print("{}: error: {}".format(prog, one_line(str(exc))), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("{}: interrupted".format(prog), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or 0)


def describe_os_error(exc: OSError, path: str) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device while writing {}".format(path)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "cannot write {}: permission denied".format(path)
    return "cannot write {}: {}".format(path, exc.strerror or exc)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it into place only when the block succeeds.

    An interrupted or failed write leaves nothing behind, so a file that exists is complete.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError("cannot write {}: folder {} does not exist".format(path, folder))
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise UserError(describe_os_error(exc, path))
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise UserError(describe_os_error(exc, path))
    except BaseException:
        _remove_quietly(tmp)
        raise


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


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def require_file(path: str, what: str = "file") -> str:
    if not os.path.exists(path):
        raise UserError("{} not found: {}".format(what, path))
    if not os.path.isfile(path):
        raise UserError("{} is not a file: {}".format(what, path))
    return path


def progress(iterable=None, total: Optional[int] = None, desc: str = "", unit: str = "img", disable: Optional[bool] = None):
    """A tqdm bar on stderr; hidden when stderr is not a terminal unless HRNETSEG_PROGRESS=1."""
    from tqdm import tqdm

    if disable is None:
        forced = os.environ.get("HRNETSEG_PROGRESS")
        disable = (forced == "0") if forced is not None else not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer, got {!r}".format(text))
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, got {!r}".format(text))
    return value


def add_alias_flags(parser: argparse.ArgumentParser) -> None:
    """Accept --some-flag for every --some_flag (the seed uses underscores; hyphens are common too)."""
    for action in list(parser._actions):
        extra = [s.replace("_", "-") for s in action.option_strings if s.startswith("--") and "_" in s]
        for alias in extra:
            if alias not in parser._option_string_actions:
                parser._option_string_actions[alias] = action
                action.option_strings.append(alias)


def check_writable(path: Optional[str], flag: str = "") -> None:
    """Fail before the slow part when an output file cannot be written (None: no output asked for)."""
    if path is None:
        return
    what = "{} {}".format(flag, path) if flag else path
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError("cannot write {}: it is a folder; give a file name".format(what))
    if not os.path.isdir(folder):
        raise UserError("cannot write {}: folder {} does not exist".format(what, folder))
    if not os.access(folder, os.W_OK):
        raise UserError("cannot write {}: folder {} is not writable".format(what, folder))
