"""Preprocess and its source images: a bin is redone when its image changes and never listed stale after a kill;
special, damaged, odd-sized, 16-bit, grey, RGBA and pre-1970 images are named, skipped or read as upstream reads
them."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from hrnetseg.data import cityscapes, images, preprocess
from hrnetseg.data.manifest import MANIFEST, MANIFEST_VERSION, read_manifest, source_signature
from hrnetseg.util.errors import UserError

from helpers import (
    TINY_HEIGHT,
    TINY_IMAGES,
    TINY_WIDTH,
    assert_user_error,
    bins,
    find_images,
    make_special,
    quiet,
    run_script,
)

SCRIPT = "HRNet_preprocess.py"
FIRST_CITY = "aachen"        # sorts before the synthetic cities: its images come first, where the size is probed


def _stamps(folder) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(Path(folder).glob("*.bin"))}


@pytest.fixture
def data(tiny_data_root, tmp_path) -> Path:
    """A private copy of the tiny scenes (TINY_IMAGES at 64x128), free to damage."""
    root = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(root))
    return root


def _first_image_path(root) -> Path:
    """Where an image that sorts before all others goes (in a city of its own)."""
    folder = root / "cityscapes" / "leftImg8bit" / "val" / FIRST_CITY
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (FIRST_CITY + "_000000_000019" + cityscapes.IMAGE_SUFFIX)


def _expected_bin(image_path) -> bytes:
    return cityscapes.reference_transform(cv2.imread(str(image_path), cv2.IMREAD_COLOR)).tobytes()


# --- a rerun uses only bins of unchanged sources ------------------------------------------------------------

def test_a_changed_or_touched_image_has_its_bin_redone(data, tmp_path):
    out = tmp_path / "prep"
    preprocess.preprocess(str(data), str(out), workers=1, log=quiet)
    before, stamps = bins(out), _stamps(out)
    samples = find_images(data)
    changed, touched = samples[1], samples[3]
    cv2.imwrite(changed.image, cv2.flip(cv2.imread(changed.image), 1))     # other pixels, same size
    info = os.stat(touched.image)
    os.utime(touched.image, ns=(info.st_atime_ns, info.st_mtime_ns + 1))  # same bytes, newer

    lines = []
    manifest = preprocess.preprocess(str(data), str(out), workers=1, log=lines.append)
    assert "3 already there, 2 redone as their image changed" in lines[0], lines
    assert "wrote 2 files" in lines[-1] and "2 redone" in lines[-1], lines
    after, new_stamps = bins(out), _stamps(out)
    redone = {name for name in stamps if new_stamps[name] != stamps[name]}
    assert redone == {changed.id + ".bin", touched.id + ".bin"}
    assert after[changed.id + ".bin"] != before[changed.id + ".bin"]
    assert after[changed.id + ".bin"] == _expected_bin(changed.image)
    assert manifest["sources"][changed.id] == source_signature(changed.image)
    assert read_manifest(str(out))["sources"] == manifest["sources"]
    assert len(manifest["ids"]) == TINY_IMAGES and manifest["version"] == MANIFEST_VERSION


def test_bins_of_a_manifest_without_sources_are_all_redone(tiny_prep_path, tiny_data_root, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(str(tiny_prep_path), str(out))
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["version"] = 1
    del manifest["sources"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    stamps = _stamps(out)
    lines = []
    rerun = preprocess.preprocess(str(tiny_data_root), str(out), workers=1, log=lines.append)
    assert "predates source tracking: its {} bins are redone".format(TINY_IMAGES) in lines[0], lines
    assert all(_stamps(out)[name] != stamp for name, stamp in stamps.items())
    assert bins(out) == bins(tiny_prep_path)
    assert rerun["version"] == 2 and sorted(rerun["sources"]) == rerun["ids"]


def test_a_rerun_killed_at_any_point_never_lists_a_stale_bin(data, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    preprocess.preprocess(str(data), str(out), workers=1, log=quiet)
    changed = find_images(data)[2]
    cv2.imwrite(changed.image, cv2.flip(cv2.imread(changed.image), 0))

    def killed(*_args):
        raise KeyboardInterrupt   # the window between the first manifest and removing the stale bin

    monkeypatch.setattr(preprocess, "_remove_bins", killed)
    with pytest.raises(KeyboardInterrupt):
        preprocess.preprocess(str(data), str(out), workers=1, log=quiet)
    monkeypatch.undo()
    manifest = read_manifest(str(out), require_complete=False)
    assert changed.id not in manifest["ids"] and changed.id not in manifest["sources"]
    assert len(manifest["ids"]) == TINY_IMAGES - 1 and manifest["complete"] is False

    args = [SCRIPT, "--src_path", data, "--save_path", out, "--workers", "1"]
    killed_run = run_script(args, env={preprocess.KILL_AFTER_ENV: "0"})   # killed before its first bin lands
    assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr
    manifest = read_manifest(str(out), require_complete=False)
    assert changed.id not in manifest["ids"] and not (out / (changed.id + ".bin")).exists()
    resumed = run_script(args)
    assert resumed.returncode == 0, resumed.stderr
    assert "4 already there, 0 redone" in resumed.stdout
    assert bins(out)[changed.id + ".bin"] == _expected_bin(changed.image)
    assert len(read_manifest(str(out))["ids"]) == TINY_IMAGES


def test_an_image_dated_before_1970_gives_a_manifest_the_tools_accept(tiny_data_root, tmp_path):
    """Its modification time is negative: the manifest recorded it and then refused itself as damaged, on the
    rerun and in the runner."""
    data = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(data))
    samples = cityscapes.find_images(str(data))
    os.utime(samples[0].image, ns=(-86400 * 10 ** 9, -86400 * 10 ** 9))
    out = str(tmp_path / "prep")
    first = preprocess.preprocess(str(data), out, workers=1, log=quiet)
    assert first["sources"][samples[0].id][1] < 0
    assert read_manifest(out)["ids"] == first["ids"]
    os.utime(samples[0].image, ns=(-2 * 86400 * 10 ** 9, -2 * 86400 * 10 ** 9))
    logged = []
    preprocess.preprocess(str(data), out, workers=1, log=logged.append)
    assert "4 already there, 1 redone as their image changed" in logged[-1]


# --- damaged and special images ------------------------------------------------------------------------------

def test_special_files_among_the_images_are_never_opened(data, tmp_path):
    """A FIFO first (where the size is probed) and another later: an error naming it, or skipped and listed."""
    first = _first_image_path(data)
    make_special(first, "FIFO")
    later = Path(find_images(data)[3].image)
    make_special(later, "FIFO")
    label = Path(find_images(data)[2].label)
    make_special(label, "FIFO")          # labels are not preprocess's business: never touched
    result = run_script([SCRIPT, "--src_path", data, "--save_path", tmp_path / "a"], timeout=60)
    assert_user_error(result, str(first), "is a FIFO, not a regular file", "--skip_bad")
    assert not list((tmp_path / "a").glob("*"))

    result = run_script([SCRIPT, "--src_path", data, "--save_path", tmp_path / "b", "--skip_bad"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "skipped 2 unreadable images" in result.stderr
    assert "{} is a FIFO".format(first) in result.stderr and "{} is a FIFO".format(later) in result.stderr
    manifest = read_manifest(str(tmp_path / "b"))
    assert manifest["skipped"] == sorted([first.name[:-len(cityscapes.IMAGE_SUFFIX)],
                                          later.name[:-len(cityscapes.IMAGE_SUFFIX)]])
    assert len(manifest["ids"]) == TINY_IMAGES - 1


@pytest.mark.parametrize("kind,fragment", [
    ("folder", "is a folder, not a regular file"),
    ("symbolic link loop", "is a symbolic link loop"),
    ("broken symbolic link", "is a broken symbolic link (to nowhere.png)"),
    ("empty", "cannot be decoded"),
])
def test_unusable_first_image_is_named_or_skipped(kind, fragment, data, tmp_path):
    first = _first_image_path(data)
    make_special(first, kind)
    with pytest.raises(UserError) as info:
        preprocess.preprocess(str(data), str(tmp_path / "a"), workers=1, log=quiet)
    assert str(first) in str(info.value) and fragment in str(info.value) and "--skip_bad" in str(info.value)
    manifest = preprocess.preprocess(str(data), str(tmp_path / "b"), workers=1, skip_bad=True, log=quiet)
    assert manifest["skipped"] == [FIRST_CITY + "_000000_000019"] and len(manifest["ids"]) == TINY_IMAGES
    assert manifest["shape"] == [3, TINY_HEIGHT, TINY_WIDTH]


def _pcx(path: Path, height: int, width: int) -> None:
    """An image PIL sizes from its header but OpenCV cannot decode."""
    from PIL import Image

    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(str(path), format="PCX")


@pytest.mark.parametrize("damage", ["truncated", "undecodable"])
def test_first_image_whose_header_reads_but_pixels_do_not(damage, data, tmp_path):
    first = _first_image_path(data)
    if damage == "truncated":
        first.write_bytes(Path(find_images(data)[1].image).read_bytes()[:400])
    else:
        _pcx(first, TINY_HEIGHT, TINY_WIDTH)
    assert images.image_size(str(first)) == (TINY_HEIGHT, TINY_WIDTH)
    with pytest.raises(UserError, match="cannot use image {}: cannot be decoded".format(first)):
        preprocess.preprocess(str(data), str(tmp_path / "a"), workers=2, log=quiet)
    manifest = preprocess.preprocess(str(data), str(tmp_path / "b"), workers=2, skip_bad=True, log=quiet)
    assert manifest["skipped"] == [FIRST_CITY + "_000000_000019"] and len(manifest["ids"]) == TINY_IMAGES


def test_an_odd_size_first_image_does_not_set_the_size(data, tmp_path):
    first = _first_image_path(data)
    cv2.imwrite(str(first), np.full((TINY_HEIGHT, TINY_HEIGHT, 3), 90, dtype=np.uint8))
    with pytest.raises(UserError) as info:
        preprocess.preprocess(str(data), str(tmp_path / "a"), log=quiet)
    assert "cannot use image {}: is 64x64 but 5 of the 6 images are 64x128".format(first) in str(info.value)
    assert not (tmp_path / "a").exists()         # found from the headers, before any work
    manifest = preprocess.preprocess(str(data), str(tmp_path / "b"), workers=1, skip_bad=True, log=quiet)
    assert manifest["shape"] == [3, TINY_HEIGHT, TINY_WIDTH] and len(manifest["ids"]) == TINY_IMAGES


def test_16_bit_grey_and_rgba_images_convert_as_upstream_reads_them(data, tmp_path):
    """cv2.imread(IMREAD_COLOR), as the upstream loader: 16-bit scaled to 8, grey repeated, alpha dropped."""
    samples = find_images(data)
    bgr = cv2.imread(samples[0].image)
    variants = {0: (bgr.astype(np.uint16) * 257 + 3), 1: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
                2: cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)}
    for index, image in variants.items():
        cv2.imwrite(samples[index].image, image)
    preprocess.preprocess(str(data), str(tmp_path), workers=1, log=quiet)
    for index in variants:
        assert bins(tmp_path)[samples[index].id + ".bin"] == _expected_bin(samples[index].image)
