"""The one reader of structured files (hrnetseg/util/structured.py): size cap, nesting cap, bad UTF-8, damaged or
cut-short JSON, wrong types, each one line naming the file; never a RecursionError."""
from __future__ import annotations

import json

import pytest

from hrnetseg.util.errors import UserError
from hrnetseg.util.structured import (
    MAX_DEPTH,
    nesting_depth,
    read_bytes,
    read_json,
    read_text,
    require_keys,
    require_list_of,
)

DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize("content, fragment", [
    (DEEP.encode(), "nests arrays or objects deeper than 100 levels"),
    (b'{"a": ' * 100000 + b"1" + b"}" * 100000, "deeper than 100 levels"),
    (b"[" * 100000, "deeper than 100 levels"),
    (b'{"ok": 1', "is not JSON (damaged or cut short"),
    (b"", "is not JSON"),
    (b'{"name": "caf\xe9"}', "is not UTF-8 text (byte 0xe9 at offset 13)"),
    (b"[1, 2]", "holds an array where an object belongs"),
    (b'"text"', "holds a string where an object belongs"),
])
def test_bad_json_is_one_line_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "summary.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"^summary {} .*".format(path)) as caught:
        read_json(str(path), "summary")
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_nesting_up_to_the_cap_is_read_and_brackets_in_strings_do_not_count(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"a": "[[[{{{" * 1000, "b": [[1]]}))
    assert read_json(str(path), "file")["b"] == [[1]]
    assert nesting_depth('{"x": "\\"[[["}') == 1
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    path.write_text(nested)
    assert read_json(str(path), "file", expect=list)
    path.write_text("[" + nested + "]")
    with pytest.raises(UserError, match="deeper than 100 levels"):
        read_json(str(path), "file", expect=list)


def test_files_larger_than_the_cap_are_refused_before_they_are_parsed(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"a": "x" * 2000}))
    with pytest.raises(UserError, match="larger than 0 MiB"):
        read_bytes(str(path), "big file", limit=1000)
    assert len(read_bytes(str(path), "big file", limit=4000)) > 2000


def test_not_a_regular_file_is_never_opened(tmp_path):
    import os

    fifo = tmp_path / "fifo.json"
    os.mkfifo(str(fifo))
    with pytest.raises(UserError, match="is a FIFO, not a regular file"):
        read_json(str(fifo), "summary")
    with pytest.raises(UserError, match="summary not found"):
        read_json(str(tmp_path / "absent.json"), "summary")


def test_a_log_may_hold_stray_bytes_when_lenient(tmp_path):
    path = tmp_path / "run.log"
    path.write_bytes(b"\x1b[2K\xff throughput 1000*batchsize.mean(1)/NPU_compute_time.mean(2): 500\n")
    assert "throughput" in read_text(str(path), "log", lenient=True)
    with pytest.raises(UserError, match="is not UTF-8 text"):
        read_text(str(path), "log")


def test_require_keys_names_the_missing_or_mistyped_key():
    spec = {"batch": int, "fps": float, "name": str}
    assert require_keys({"batch": 1, "fps": 2, "name": "a"}, spec, "row", "r.json")   # an integer is a number
    with pytest.raises(UserError, match="row r.json has no 'fps', 'name'"):
        require_keys({"batch": 1}, spec, "row", "r.json")
    with pytest.raises(UserError, match="'batch' is true, not an integer"):
        require_keys({"batch": True, "fps": 1.0, "name": "a"}, spec, "row", "r.json")
    with pytest.raises(UserError, match="'fps' is \"9\", not a number"):
        require_keys({"batch": 1, "fps": "9", "name": "a"}, spec, "row", "r.json")
    with pytest.raises(UserError, match="'note' is an array, not a string or null"):
        require_keys({"batch": 1, "fps": 1.0, "name": "a", "note": []}, spec, "row", "r.json",
                     optional={"note": (str, type(None))})
    with pytest.raises(UserError, match="'ids' is not a list whose items are each a string"):
        require_list_of(["a", 1], str, "part", "p.json", "ids")
