"""The preprocess manifest (manifest.json): missing, damaged, or not a regular file, it is one line naming the file,
also when it stops a rerun."""
from __future__ import annotations

import json
import shutil

import pytest

from hrnetseg.data.manifest import MANIFEST, read_manifest
from hrnetseg.util.errors import UserError

from helpers import assert_user_error, bins, make_special, run_script

SCRIPT = "HRNet_preprocess.py"


def test_read_manifest_errors(tmp_path):
    with pytest.raises(UserError, match="no manifest.json"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="is not JSON"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"ids": []}))
    with pytest.raises(UserError, match="not a usable preprocess manifest: keys shape, .* missing"):
        read_manifest(str(tmp_path))


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not JSON (damaged or cut short"),
    ("[" * 100000 + "]" * 100000, "nests arrays or objects deeper than 100 levels"),
    (b"\xff\xfe{}", "is not UTF-8 text (byte 0xff at offset 0)"),
    ([], "holds a JSON list instead of an object"),
    ('{"ids": []}', "keys shape, dtype, layout, normalization, split are missing"),
    ({"format": "ais_bench"}, "format is 'ais_bench'"),
    ({"ids": "a,b"}, "ids is not a list"),
    ({"ids": ["a", 3]}, "ids holds 3, not an image id"),
    ({"ids": ["../../etc/passwd"]}, "not an image id"),
    ({"ids": ["a", "a"]}, "ids lists an image twice"),
    ({"shape": [3, 64]}, "shape must be 3 positive integers"),
    ({"shape": [3, 0, 128]}, "shape must be 3 positive integers"),
    ({"shape": [3, True, "128"]}, "shape must be 3 positive integers"),
    ({"dtype": "float64"}, "dtype must be one of float32, float16, uint8, got \"float64\""),
    ({"dtype": ["float32"]}, "dtype must be one of"),
    ({"layout": None}, "layout is not a string"),
    ({"normalization": [1, 2]}, "normalization is neither null nor an object"),
    ({"complete": "yes"}, "complete is not true or false"),
    ({"skipped": {}}, "skipped is not a list"),
    ({"version": "2"}, "version is not an integer"),
    ({"sources": []}, "sources is not an object"),
    ({"sources": {"a": [1]}}, "sources['a'] is not [size, modification time in ns]"),
])
def test_damaged_manifest_is_one_line_naming_the_file(content, fragment, tiny_prep_path, tmp_path):
    """Text is written as it is; a dict replaces keys of a sound manifest."""
    path = tmp_path / MANIFEST
    if isinstance(content, dict):
        manifest = json.loads((tiny_prep_path / MANIFEST).read_text())
        manifest.update(content)
        content = json.dumps(manifest)
    elif isinstance(content, list):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError) as info:
        read_manifest(str(tmp_path))
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message


@pytest.mark.parametrize("kind,fragment", [("FIFO", "is a FIFO, not a regular file"),
                                           ("folder", "is a folder, not a regular file")])
def test_manifest_that_is_not_a_file_is_never_opened(kind, fragment, tmp_path):
    make_special(tmp_path / MANIFEST, kind)
    with pytest.raises(UserError, match=fragment):
        read_manifest(str(tmp_path))


def test_damaged_manifest_stops_a_rerun_in_one_line(tiny_prep_path, tiny_data_root, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(str(tiny_prep_path), str(out))
    (out / MANIFEST).write_text(json.dumps({"ids": 5}))
    result = run_script([SCRIPT, "--src_path", tiny_data_root, "--save_path", out])
    assert_user_error(result, str(out / MANIFEST), "keys")
    assert bins(out) == bins(tiny_prep_path)
