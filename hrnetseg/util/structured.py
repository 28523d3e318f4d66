"""One reader for the structured files the tools read: JSON (the runner's and ais_bench's summaries, the preprocess
manifest, the .om sidecar, the CI gate's rows, the result files, the device processes' parts and reports), text
(logs) and the bytes of binary archives (confusion shards).

Every such file is read the same way, and every problem with it is one line naming the file (a UserError):
- not a regular file (a FIFO is never opened), unreadable, or larger than MAX_BYTES (64 MiB; the largest file
  the tools write, a summary of 5000 images, is a few MB);
- not UTF-8 (text and JSON), or not JSON: damaged or cut short;
- JSON nested deeper than MAX_DEPTH (100) levels: refused by a scan of its brackets before json.loads, whose
  recursion such a file would exhaust (RecursionError);
- the wrong kind of value at the top (an array where an object belongs), and with require_keys, a key missing
  or of the wrong type.

Atlas-side module: standard library only, valid Python 3.7.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional, Sequence, Tuple, Type, Union

from hrnetseg.util.errors import UserError
from hrnetseg.util.files import os_error_reason, require_file

MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 100

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)   # a JSON string, escapes included
_BRACKET = re.compile(r"[\[\]{}]")
_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", type(None): "null"}

Types = Union[Type, Tuple[Type, ...]]


def read_bytes(path: str, what: str, limit: int = MAX_BYTES) -> bytes:
    """The bytes of the regular file `path` (`what` names it in messages), at most `limit` of them."""
    require_file(path, what)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise UserError("cannot read {} {}: {}".format(what, path, os_error_reason(exc)))
    if len(data) > limit:
        raise UserError("{} {} is larger than {} MiB, more than such a file ever holds: not the file it should "
                        "be".format(what, path, limit // (1024 * 1024)))
    return data


def read_text(path: str, what: str, limit: int = MAX_BYTES, lenient: bool = False) -> str:
    """The UTF-8 text of `path`. lenient: bytes that are not UTF-8 become U+FFFD instead of an error (a tool's
    log, whose figures are ASCII, may hold a stray byte from a progress bar)."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8", errors="replace" if lenient else "strict")
    except UnicodeDecodeError as exc:
        raise UserError("{} {} is not UTF-8 text (byte 0x{:02x} at offset {}): damaged, or not the file it should "
                        "be".format(what, path, data[exc.start], exc.start))


def nesting_depth(text: str, stop: int = MAX_DEPTH) -> int:
    """How deep the arrays and objects of JSON `text` nest (strings left out); counting stops past `stop`."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop:
                    break
        else:
            depth -= 1
    return deepest


def parse_json(text: str, what: str, path: str, expect: Optional[Types] = dict) -> Any:
    """JSON `text` of file `path`, parsed; expect: the type its top level must have (None: any)."""
    if nesting_depth(text) > MAX_DEPTH:
        raise UserError("{} {} nests arrays or objects deeper than {} levels: not the file it should be".format(
            what, path, MAX_DEPTH))
    try:
        data = json.loads(text)
    except RecursionError:   # the scan above keeps it away; a second line of defence
        raise UserError("{} {} nests too deeply to read".format(what, path))
    except ValueError as exc:
        raise UserError("{} {} is not JSON (damaged or cut short: {})".format(what, path, exc))
    if expect is not None and not _is_a(data, expect):
        raise UserError("{} {} holds {} where {} belongs".format(what, path, type_name(data), _names(expect)))
    return data


def read_json(path: str, what: str, expect: Optional[Types] = dict, limit: int = MAX_BYTES) -> Any:
    """The JSON file `path` parsed, its top level of type `expect` (an object by default)."""
    return parse_json(read_text(path, what, limit), what, path, expect)


def type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _names(types: Types) -> str:
    listed = types if isinstance(types, tuple) else (types,)
    return " or ".join(_TYPE_NAMES.get(kind, kind.__name__) for kind in listed)


def _is_a(value: Any, types: Types) -> bool:
    """isinstance, except that true and false are no numbers unless bool is asked for."""
    listed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in listed
    return isinstance(value, listed)


def require_keys(data: Mapping, required: Mapping[str, Types], what: str, path: str,
                 optional: Optional[Mapping[str, Types]] = None) -> Mapping:
    """`data` (a parsed JSON object) when each required key is there and each key of `required` and `optional`
    that is there has one of its types (int means an integer, never true or false; float alone takes integers
    too, as JSON writes 1.0 as 1 in some tools); a one-line UserError naming the key otherwise."""
    missing = [key for key in required if key not in data]
    if missing:
        raise UserError("{} {} has no {}: damaged, or not the file it should be".format(
            what, path, ", ".join(repr(key) for key in missing)))
    for key, types in list(required.items()) + list((optional or {}).items()):
        if key in data and not _is_a(data[key], _with_int(types)):
            raise UserError("{} {}: {!r} is {}, not {}".format(what, path, key, _shown(data[key]), _names(types)))
    return data


def _with_int(types: Types) -> Tuple[Type, ...]:
    listed = types if isinstance(types, tuple) else (types,)
    return listed + (int,) if float in listed and int not in listed else listed


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type_name(value)
    return text if len(text) <= 60 else text[:57] + "..."


def require_list_of(values: Sequence, types: Types, what: str, path: str, key: str) -> Sequence:
    """`values` (the value of `key`) when it is a list whose items all have one of `types`."""
    if not isinstance(values, list) or not all(_is_a(value, _with_int(types)) for value in values):
        raise UserError("{} {}: {!r} is not a list whose items are each {}".format(what, path, key, _names(types)))
    return values
