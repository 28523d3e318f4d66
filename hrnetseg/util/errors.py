"""The user's errors: UserError (a problem the user can fix, printed on one line by run_cli, exit code 2), the
exit codes, and the shortening of a library's exception to a part of a one-line message.

The floor of the house: every module may import it; it imports nothing of ours. Valid Python 3.7.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem the user can fix (bad path, bad file, bad flag); printed on one line, exit code 2."""

    def __init__(self, message: str, exit_code: int = EXIT_USER_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def exception_line(exc: BaseException, limit: int = 300) -> str:
    """A library's exception as a short part of a one-line error: its text on one line (or its type's name
    when it has none), at most `limit` characters."""
    return (one_line(str(exc)) or type(exc).__name__)[:limit]
