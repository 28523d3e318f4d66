"""Shared CLI habits: one-line errors with exit code 2 (the errors themselves: errors.py), progress bars, argparse
types, and the ArgumentParser every command line is built with (`--some-flag` accepted for every `--some_flag`).

Valid Python 3.7 and free of torch: the Atlas-side scripts use it.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Optional, Sequence, Tuple

from hrnetseg.util.errors import EXIT_INTERRUPTED, UserError, one_line


def program_name() -> str:
    """How the user started this program, for usage and error lines: `python3 -m hrnetseg.infer` for a module
    run with -m (a package's __main__ named by its package), the file's name for a script (HRNet_preprocess.py)
    or a console script (hrnetseg-infer)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None) or ""
    if name.split(".")[0] == "hrnetseg":
        return "python3 -m " + (name[:-len(".__main__")] if name.endswith(".__main__") else name)
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "hrnetseg"


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> None:
    """Run a script's main(); user errors become one line on stderr, never a traceback."""
    prog = program_name()
    printable_names()
    try:
        code = main(argv)
    except UserError as exc:
        print("{}: error: {}".format(prog, one_line(str(exc))), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("{}: interrupted".format(prog), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or 0)


def printable_names() -> None:
    """A file name that is not valid UTF-8 (Python keeps its bytes as lone surrogates) prints as escapes
    instead of stopping the tool with UnicodeEncodeError on a terminal that takes strict UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def progress(iterable=None, total: Optional[int] = None, desc: str = "", unit: str = "img",
             disable: Optional[bool] = None):
    """A tqdm bar on stderr; hidden when stderr is not a terminal unless HRNETSEG_PROGRESS=1."""
    from tqdm import tqdm

    if disable is None:
        forced = os.environ.get("HRNETSEG_PROGRESS")
        disable = (forced == "0") if forced is not None else not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True)


def whole_number(text: str, minimum: int = 0, maximum: Optional[int] = None, what: str = "") -> int:
    """argparse type body: a whole number written in ASCII digits within [minimum, maximum]. int() alone also
    reads "1_0" as 10, " 1" as 1 and other scripts' digits."""
    if not re.fullmatch(r"[0-9]+", text) or int(text) < minimum or (maximum is not None and int(text) > maximum):
        raise argparse.ArgumentTypeError("expected {}, got {!r}".format(
            what or ("an integer >= {}".format(minimum) if maximum is None else
                     "an integer from {} to {}".format(minimum, maximum)), text))
    return int(text)


_DECIMAL = re.compile(r"([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?")


def plain_decimal(text: str) -> Optional[float]:
    """The value of a plain decimal number written in ASCII (digits, a point, an exponent: 0.5, 1e-3, .75), None
    for anything else. float() alone also reads "1_0" as 10, " 1", "nan", "inf" and other scripts' digits
    ("\u0661" as 1), none of which a number typed as a flag or read from a log may be."""
    return float(text) if _DECIMAL.fullmatch(text) else None


def decimal_number(text: str, minimum: float = 0.0, above: bool = False, what: str = "") -> float:
    """argparse type body: a plain ASCII decimal number (plain_decimal) >= minimum (> minimum with `above`), finite."""
    value = plain_decimal(text)
    if value is None or value == float("inf") or value < minimum or (above and value == minimum):
        raise argparse.ArgumentTypeError("expected {}, got {!r}".format(
            what or "a number {} {:g}".format(">" if above else ">=", minimum), text))
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1, what="a positive integer")


def nonnegative_int(text: str) -> int:
    return whole_number(text, 0, what="an integer >= 0")


def image_size(text: str) -> Tuple[int, int]:
    """argparse type body: an image size HEIGHTxWIDTH in pixels, both >= 8 ("512x1024")."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(re.fullmatch(r"[0-9]+", part) and int(part) >= 8 for part in parts):
        raise argparse.ArgumentTypeError("expected HEIGHTxWIDTH in pixels, both at least 8 (512x1024), got {!r}".format(
            text))
    return int(parts[0]), int(parts[1])


def output_index(text: str) -> int:
    """A model output number, ais_bench's 0-based numbering (0 = aux, 1 = main for HRNet-OCR)."""
    return whole_number(text, 0, what="an output number 0, 1, ...")


def with_hyphenated_spellings(names: Sequence[str]) -> Tuple[str, ...]:
    """An argument's option strings, each `--some_flag` followed by its `--some-flag` spelling."""
    aliases = [name.replace("_", "-") for name in names if name.startswith("--") and "_" in name]
    return tuple(names) + tuple(alias for alias in aliases if alias not in names)


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser that accepts `--some-flag` (and `--some-flag=VALUE`) for every `--some_flag`: the
    ModelZoo scripts spell their flags with underscores, hyphens are common too.

    The hyphenated spelling is a second option string of the same argument, given to argparse's add_argument:
    usage lines show the underscore spelling, help and error messages name both (`--save_path/--save-path`).
    Argument groups, mutually exclusive groups and subcommands (add_subparsers makes them of this class) get the
    same; parents=[...] copies the parents' arguments with the spellings they have.
    """

    def __init__(self, *args, **kwargs) -> None:
        if not args:   # one spelling of the program's name for every tool: program_name()
            kwargs.setdefault("prog", program_name())
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: str, **kwargs):
        return super().add_argument(*with_hyphenated_spellings(names), **kwargs)

    def add_argument_group(self, *args, **kwargs):
        return _adding_hyphenated_spellings(super().add_argument_group(*args, **kwargs))

    def add_mutually_exclusive_group(self, **kwargs):
        return _adding_hyphenated_spellings(super().add_mutually_exclusive_group(**kwargs))


def _adding_hyphenated_spellings(group):
    """`group` (an argument group of an ArgumentParser) with its add_argument and group makers wrapped so that
    they add the hyphenated spellings too. argparse creates groups itself, so a subclass cannot reach them."""
    add_argument = group.add_argument
    add_argument_group = group.add_argument_group
    add_mutually_exclusive_group = group.add_mutually_exclusive_group

    def add_argument_with_spellings(*names: str, **kwargs):
        return add_argument(*with_hyphenated_spellings(names), **kwargs)

    def add_argument_group_with_spellings(*args, **kwargs):
        return _adding_hyphenated_spellings(add_argument_group(*args, **kwargs))

    def add_mutually_exclusive_group_with_spellings(**kwargs):
        return _adding_hyphenated_spellings(add_mutually_exclusive_group(**kwargs))

    group.add_argument = add_argument_with_spellings
    group.add_argument_group = add_argument_group_with_spellings
    group.add_mutually_exclusive_group = add_mutually_exclusive_group_with_spellings
    return group


def plain_name(text: str) -> str:
    """A folder name such as a split (`val`) or an output dirname: no path separators, not `.` or `..`."""
    if not text or text in (".", "..") or "/" in text or os.sep in text or (os.altsep and os.altsep in text):
        raise argparse.ArgumentTypeError(
            "expected a plain name (no path separators, not . or ..), got {!r}".format(text))
    return text
