"""The .om sidecar (python3 -m hrnetseg.atlas.om_sidecar) under hostile input: bins that do not fit the .om, an .om
rebuilt after its sidecar, damaged sidecars and sidecars that are not regular files. Each case: a pass, a warning,
or one line naming the problem."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hrnetseg.atlas import om_sidecar
from hrnetseg.util.errors import UserError

from helpers import TINY_HEIGHT, TINY_WIDTH, assert_user_error, run_script


@pytest.fixture
def om(tmp_path) -> Path:
    path = tmp_path / "hrnet_bs4.om"
    path.write_bytes(b"om")
    om_sidecar.write_sidecar(str(path), 4, TINY_HEIGHT, TINY_WIDTH, "float32")
    return path


def test_a_sidecar_that_fits_passes_and_a_missing_one_is_a_warning(om, tiny_prep_path, tmp_path):
    assert json.loads(Path(str(om) + ".json").read_text()) == {
        "batch": 4, "height": TINY_HEIGHT, "width": TINY_WIDTH, "input_format": "NCHW", "input_dtype": "float32"}
    assert om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 4) is None
    os.remove(str(om) + ".json")
    result = run_script(["-m", "hrnetseg.atlas.om_sidecar", "check", om, "--prep", tiny_prep_path, "--batch", "4"])
    assert result.returncode == 0 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("warning: no hrnet_bs4.om.json beside {}".format(om))


def test_an_om_rebuilt_after_its_sidecar_is_named_and_still_checked(om, tiny_prep_path):
    """atc run by hand after pth2om.sh: the sidecar may describe the earlier build; a copy that lands the .om a
    little after its sidecar is no rebuild."""
    sidecar = str(om) + ".json"
    written = os.path.getmtime(sidecar)
    os.utime(str(om), (written + 5, written + 5))
    assert om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 4) is None
    os.utime(str(om), (written + 600, written + 600))
    warning = om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 4)
    assert warning.startswith("warning: {} is newer than its sidecar".format(om)) and "\n" not in warning
    with pytest.raises(UserError, match="built for batch size 4"):   # the sidecar's figures still hold
        om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 1)


def _prep_copy(tiny_prep_path: Path, tmp_path: Path, **manifest_changes) -> Path:
    """The tiny preprocess folder's manifest (no bins: the check reads only the manifest), changed."""
    prep = tmp_path / "prep"
    prep.mkdir()
    manifest = json.loads((tiny_prep_path / "manifest.json").read_text())
    manifest.update(manifest_changes)
    (prep / "manifest.json").write_text(json.dumps(manifest))
    return prep


@pytest.mark.parametrize("changes, batch, match", [
    ({"dtype": "float16"}, 4, "are float16 NCHW 3x64x128 but .*hrnet_bs4.om takes float32 NCHW 3x64x128"),
    ({"dtype": "uint8"}, 4, "make the bins with --input_format float32"),
    ({"shape": [3, 64, 256]}, 4, "3x64x256 but .* takes float32 NCHW 3x64x128"),
    ({"layout": "NHWC"}, 4, "NHWC"),
    ({}, 1, "built for batch size 4 .*, not 1"),
], ids=["float16_bins", "uint8_bins", "size", "layout", "batch"])
def test_bins_that_do_not_fit_the_om_are_one_line(changes, batch, match, om, tiny_prep_path, tmp_path):
    prep = _prep_copy(tiny_prep_path, tmp_path, **changes)
    with pytest.raises(UserError, match=match):
        om_sidecar.check_bins_fit(str(om), str(prep), batch)


@pytest.mark.parametrize("content, match", [
    (b"", ".om sidecar .*json is not JSON"),
    (b"{not json", "is not JSON"),
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"[1, 2]", "holds an array where an object belongs"),
    (b"[" * 100000 + b"]" * 100000, "nests arrays or objects deeper than 100 levels"),
    (b'{"batch": 4}', "height, width, input_format, input_dtype missing"),
    (b'{"batch": "4", "height": 64, "width": 128, "input_format": "NCHW", "input_dtype": "float32"}',
     "batch is '4', not a positive integer"),
    (b'{"batch": true, "height": 64, "width": 128, "input_format": "NCHW", "input_dtype": "float32"}',
     "batch is True"),
    (b'{"batch": 4, "height": 0, "width": 128, "input_format": "NCHW", "input_dtype": "float32"}', "height is 0"),
    (b'{"batch": 4, "height": 64, "width": 128, "input_format": "NCHW", "input_dtype": "float64"}',
     "input_dtype is 'float64'"),
    (b'{"batch": 4, "height": 64, "width": 128, "input_format": 1, "input_dtype": "float32"}', "input_format is 1"),
], ids=["empty", "not_json", "not_utf8", "list", "deep", "keys", "string", "bool", "zero", "dtype", "format"])
def test_damaged_sidecars_are_one_line(content, match, om, tiny_prep_path):
    Path(str(om) + ".json").write_bytes(content)
    with pytest.raises(UserError, match=match):
        om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 4)


def test_a_sidecar_that_is_not_a_regular_file_is_never_opened(om, tiny_prep_path, tmp_path):
    sidecar = Path(str(om) + ".json")
    sidecar.unlink()
    os.mkfifo(str(sidecar))                     # opening it would block
    result = run_script(["-m", "hrnetseg.atlas.om_sidecar", "check", om, "--prep", tiny_prep_path, "--batch", "4"],
                        timeout=60)
    assert_user_error(result, ".om sidecar {}".format(sidecar), "FIFO")
    result = run_script(["-m", "hrnetseg.atlas.om_sidecar", "write", om, "--batch", "4", "--height", "64", "--width",
                         "128",
                         "--input_dtype", "float32"], timeout=60)
    assert_user_error(result, "not a regular file")                  # never replaced either
    assert sidecar.is_fifo()


def test_a_sidecar_name_that_links_to_the_om_is_never_written_into_it(om):
    before = om.read_bytes()
    os.remove(str(om) + ".json")
    os.symlink(om.name, str(om) + ".json")
    with pytest.raises(UserError, match="the sidecar {}.json is the .om of this run".format(om)):
        om_sidecar.write_sidecar(str(om), 4, TINY_HEIGHT, TINY_WIDTH, "float32")
    assert om.read_bytes() == before
