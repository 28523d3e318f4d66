"""Preprocess and sample data under hostile input: changed sources, damaged files and manifests, special files,
a second writer, a killed parent, a full disk."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from hrnetseg.data import cityscapes, preprocess, sample_scenes as sample_data
from hrnetseg.util.errors import UserError
from hrnetseg.util.locks import lock_path_for
from hrnetseg.data.manifest import MANIFEST, MANIFEST_VERSION, read_manifest, source_signature

from helpers import REPO, TINY_HEIGHT, TINY_IMAGES, TINY_WIDTH, assert_user_error, lock_held_elsewhere, run_script

SCRIPT = "HRNet_preprocess.py"
FIRST_CITY = "aachen"        # sorts before the synthetic cities: its images come first, where the size is probed


def _quiet(*_args):
    pass


def _bins(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.bin"))}


def _stamps(folder) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(Path(folder).glob("*.bin"))}


def _tree(folder) -> dict:
    """Every path under folder (relative) -> its bytes (None for a folder)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(str(folder)):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), str(folder))] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, str(folder))] = Path(path).read_bytes()
    return found


@pytest.fixture
def data(tiny_data_root, tmp_path) -> Path:
    """A private copy of the tiny scenes (TINY_IMAGES at 64x128), free to damage."""
    root = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(root))
    return root


def _images(root) -> list:
    return cityscapes.find_images(str(root))


def _first_image_path(root) -> Path:
    """Where an image that sorts before all others goes (in a city of its own)."""
    folder = root / "cityscapes" / "leftImg8bit" / "val" / FIRST_CITY
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (FIRST_CITY + "_000000_000019" + cityscapes.IMAGE_SUFFIX)


def _expected_bin(image_path) -> bytes:
    return cityscapes.reference_transform(cv2.imread(str(image_path), cv2.IMREAD_COLOR)).tobytes()


# ------------------------------------------------------------------ resume only from unchanged sources

def test_a_changed_or_touched_image_has_its_bin_redone(data, tmp_path):
    out = tmp_path / "prep"
    preprocess.preprocess(str(data), str(out), workers=1, log=_quiet)
    before, stamps = _bins(out), _stamps(out)
    samples = _images(data)
    changed, touched = samples[1], samples[3]
    cv2.imwrite(changed.image, cv2.flip(cv2.imread(changed.image), 1))     # other pixels, same size
    info = os.stat(touched.image)
    os.utime(touched.image, ns=(info.st_atime_ns, info.st_mtime_ns + 1))  # same bytes, newer

    lines = []
    manifest = preprocess.preprocess(str(data), str(out), workers=1, log=lines.append)
    assert "3 already there, 2 redone as their image changed" in lines[0], lines
    assert "wrote 2 files" in lines[-1] and "2 redone" in lines[-1], lines
    after, new_stamps = _bins(out), _stamps(out)
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
    assert _bins(out) == _bins(tiny_prep_path)
    assert rerun["version"] == 2 and sorted(rerun["sources"]) == rerun["ids"]


def test_a_rerun_killed_at_any_point_never_lists_a_stale_bin(data, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    preprocess.preprocess(str(data), str(out), workers=1, log=_quiet)
    changed = _images(data)[2]
    cv2.imwrite(changed.image, cv2.flip(cv2.imread(changed.image), 0))

    def killed(*_args):
        raise KeyboardInterrupt   # the window between the first manifest and removing the stale bin

    monkeypatch.setattr(preprocess, "_remove_bins", killed)
    with pytest.raises(KeyboardInterrupt):
        preprocess.preprocess(str(data), str(out), workers=1, log=_quiet)
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
    assert _bins(out)[changed.id + ".bin"] == _expected_bin(changed.image)
    assert len(read_manifest(str(out))["ids"]) == TINY_IMAGES


# ------------------------------------------------------------------ damaged and special input files

def _special(path: Path, kind: str) -> None:
    if path.exists():
        path.unlink()
    if kind == "FIFO":
        os.mkfifo(str(path))
    elif kind == "folder":
        path.mkdir()
    elif kind == "symbolic link loop":
        os.symlink(path.name, str(path))
    elif kind == "broken symbolic link":
        os.symlink("nowhere.png", str(path))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise AssertionError(kind)


def test_special_files_among_the_images_are_never_opened(data, tmp_path):
    """A FIFO first (where the size is probed) and another later: an error naming it, or skipped and listed."""
    first = _first_image_path(data)
    _special(first, "FIFO")
    later = Path(_images(data)[3].image)
    _special(later, "FIFO")
    label = Path(_images(data)[2].label)
    _special(label, "FIFO")          # labels are not preprocess's business: never touched
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
    _special(first, kind)
    with pytest.raises(UserError) as info:
        preprocess.preprocess(str(data), str(tmp_path / "a"), workers=1, log=_quiet)
    assert str(first) in str(info.value) and fragment in str(info.value) and "--skip_bad" in str(info.value)
    manifest = preprocess.preprocess(str(data), str(tmp_path / "b"), workers=1, skip_bad=True, log=_quiet)
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
        first.write_bytes(Path(_images(data)[1].image).read_bytes()[:400])
    else:
        _pcx(first, TINY_HEIGHT, TINY_WIDTH)
    assert cityscapes.image_size(str(first)) == (TINY_HEIGHT, TINY_WIDTH)
    with pytest.raises(UserError, match="cannot use image {}: cannot be decoded".format(first)):
        preprocess.preprocess(str(data), str(tmp_path / "a"), workers=2, log=_quiet)
    manifest = preprocess.preprocess(str(data), str(tmp_path / "b"), workers=2, skip_bad=True, log=_quiet)
    assert manifest["skipped"] == [FIRST_CITY + "_000000_000019"] and len(manifest["ids"]) == TINY_IMAGES


def test_an_odd_size_first_image_does_not_set_the_size(data, tmp_path):
    first = _first_image_path(data)
    cv2.imwrite(str(first), np.full((TINY_HEIGHT, TINY_HEIGHT, 3), 90, dtype=np.uint8))
    with pytest.raises(UserError) as info:
        preprocess.preprocess(str(data), str(tmp_path / "a"), log=_quiet)
    assert "cannot use image {}: is 64x64 but 5 of the 6 images are 64x128".format(first) in str(info.value)
    assert not (tmp_path / "a").exists()         # found from the headers, before any work
    manifest = preprocess.preprocess(str(data), str(tmp_path / "b"), workers=1, skip_bad=True, log=_quiet)
    assert manifest["shape"] == [3, TINY_HEIGHT, TINY_WIDTH] and len(manifest["ids"]) == TINY_IMAGES


def test_16_bit_grey_and_rgba_images_convert_as_upstream_reads_them(data, tmp_path):
    """cv2.imread(IMREAD_COLOR), as the upstream loader: 16-bit scaled to 8, grey repeated, alpha dropped."""
    samples = _images(data)
    bgr = cv2.imread(samples[0].image)
    variants = {0: (bgr.astype(np.uint16) * 257 + 3), 1: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
                2: cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)}
    for index, image in variants.items():
        cv2.imwrite(samples[index].image, image)
    preprocess.preprocess(str(data), str(tmp_path), workers=1, log=_quiet)
    for index in variants:
        assert _bins(tmp_path)[samples[index].id + ".bin"] == _expected_bin(samples[index].image)


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "cannot read"),
    ("[" * 100000, "cannot read"),
    (b"\xff\xfe{}", "cannot read"),
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
    _special(tmp_path / MANIFEST, kind)
    with pytest.raises(UserError, match=fragment):
        read_manifest(str(tmp_path))


def test_damaged_manifest_stops_a_rerun_in_one_line(tiny_prep_path, tiny_data_root, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(str(tiny_prep_path), str(out))
    (out / MANIFEST).write_text(json.dumps({"ids": 5}))
    result = run_script([SCRIPT, "--src_path", tiny_data_root, "--save_path", out])
    assert_user_error(result, str(out / MANIFEST), "keys")
    assert _bins(out) == _bins(tiny_prep_path)


# ------------------------------------------------------------------ outputs, names and sizes

@pytest.mark.parametrize("kind,fragment", [("FIFO", "exists and is a FIFO, not a folder"),
                                           ("symbolic link loop", "is a symbolic link loop")])
def test_save_path_must_be_a_folder(kind, fragment, tiny_data_root, tmp_path):
    out = tmp_path / "out"
    _special(out, kind)
    with pytest.raises(UserError, match="--save_path {} {}".format(out, fragment)):
        preprocess.preprocess(str(tiny_data_root), str(out), log=_quiet)


@pytest.mark.parametrize("parser_module,argv", [
    ("HRNet_preprocess", ["--src_path", "d", "--save_path", "o", "--split", "../val"]),
    ("hrnetseg.data.sample_scenes", ["d", "--split", "val/frankfurt"]),
    ("hrnetseg.data.sample_scenes", ["d", "--seed", "-1"]),
    ("hrnetseg.data.sample_scenes", ["d", "--seed", str(2 ** 32)]),
    ("hrnetseg.data.sample_scenes", ["d", "--seed", "0x10"]),
])
def test_flags_out_of_range_are_refused_by_the_parser(parser_module, argv, capsys):
    import importlib

    parser = importlib.import_module(parser_module).build_parser()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument --s" in error and ("plain name" in error or "0 to 4294967295" in error)


def test_seed_out_of_range_through_the_cli(tmp_path):
    assert_user_error(run_script(["-m", "hrnetseg.sample_data", tmp_path / "d", "--seed", "-5"]),
                      "--seed", "0 to 4294967295")
    assert not (tmp_path / "d").exists()
    with pytest.raises(UserError, match="--seed must be an integer from 0 to 4294967295"):
        sample_data.generate(str(tmp_path / "d"), n=1, height=64, width=128, seed=2 ** 32)


def test_split_and_data_folder_names_are_literal(tiny_data_root, tmp_path):
    with pytest.raises(UserError, match="no images found"):
        cityscapes.find_images(str(tiny_data_root), split="*")   # not every split at once
    odd = tmp_path / "data[1]"
    shutil.copytree(str(tiny_data_root / "cityscapes"), str(odd / "cityscapes"))
    assert len(cityscapes.find_images(str(odd))) == TINY_IMAGES
    assert len(cityscapes.find_labels(str(odd))) == TINY_IMAGES


def test_not_enough_space_says_the_real_figures(tiny_data_root, tmp_path, monkeypatch):
    usage = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    needed = TINY_IMAGES * 3 * TINY_HEIGHT * TINY_WIDTH * 4
    with pytest.raises(UserError) as info:
        preprocess.preprocess(str(tiny_data_root), str(tmp_path / "out"), log=_quiet)
    assert "{:.1f} kB needed, 1.0 kB free ({:.1f} kB short)".format(needed / 1e3, (needed - 1000) / 1e3) in str(
        info.value)
    assert [preprocess.size_text(n) for n in (0, 999, 3.1e6, 2.5e9)] == ["0 bytes", "999 bytes", "3.1 MB", "2.5 GB"]


# ------------------------------------------------------------------ one writer; workers die with the run

def test_a_second_preprocess_into_the_folder_stops_at_once(tiny_prep_path, tiny_data_root, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(str(tiny_prep_path), str(out))
    before = _tree(out)
    with lock_held_elsewhere(out) as pid:
        began = time.monotonic()
        with pytest.raises(UserError, match=r"is being written by another run \(PID {}\)".format(pid)):
            preprocess.preprocess(str(tiny_data_root), str(out), log=_quiet)
        assert time.monotonic() - began < 2
        assert _tree(out) == before
    preprocess.preprocess(str(tiny_data_root), str(out), log=_quiet)
    assert _tree(out) == before and not os.path.exists(lock_path_for(str(out)))   # nothing inside, none left


SLOW_RUN = """
import sys, time
from hrnetseg.data import preprocess
from hrnetseg.util.cli import run_cli
import HRNet_preprocess

convert = preprocess.convert
def slow_convert(*args):
    time.sleep(0.2)
    return convert(*args)
preprocess.convert = slow_convert
run_cli(HRNet_preprocess.main, sys.argv[1:])
"""


def _children(pid: int) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/{}/stat".format(entry), "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait a while for its new parent to reap it)."""
    try:
        with open("/proc/{}/stat".format(pid), "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] not in (b"Z", b"X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_workers_die_with_a_killed_parent(tiny_data_root, tmp_path):
    """--workers 5 runs in processes; a SIGKILLed parent leaves no worker converting the queued images."""
    source = _images(tiny_data_root)[0].image
    city = tmp_path / "data" / "leftImg8bit" / "val" / "aachen"
    city.mkdir(parents=True)
    for index in range(40):
        os.link(source, str(city / "aachen_{:06d}_000019{}".format(index, cityscapes.IMAGE_SUFFIX)))
    out = tmp_path / "prep"
    env = dict(os.environ, PYTHONPATH=str(REPO), HRNETSEG_PROGRESS="0")
    run = subprocess.Popen([sys.executable, "-c", SLOW_RUN, "--src_path", str(tmp_path / "data"), "--save_path",
                            str(out), "--workers", "5"], env=env, cwd=str(REPO),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while len(_bins(out) if out.is_dir() else ()) < 2:
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read() if run.poll() else "slow"
            time.sleep(0.02)
        workers = _children(run.pid)
        assert len(workers) == 5
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        written = set(_bins(out))     # each worker is within its 0.2 s image: an orphan would finish and write it
        deadline = time.monotonic() + 5
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [pid for pid in workers if _running(pid)], "orphaned workers"
        time.sleep(0.3)
        assert set(_bins(out)) == written and len(written) < 40
    finally:
        for pid in [run.pid] + workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        run.wait()


# ------------------------------------------------------------------ sample data on a full disk

def test_sample_data_on_a_full_disk_removes_what_it_wrote(tmp_path, monkeypatch):
    root = tmp_path / "data"
    sample_data.generate(str(root), n=1, height=64, width=128, seed=0)     # a scene from before
    before = _tree(root)
    real_open = open
    temporaries = []

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".tmp"):
            temporaries.append(path)
            if len(temporaries) == 4:     # the second scene's label
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(UserError, match="no space left on the device while writing .*lindau"):
        sample_data.generate(str(root), n=3, height=64, width=128, seed=0)
    monkeypatch.undo()
    assert _tree(root) == before

    fresh = tmp_path / "fresh" / "data"
    monkeypatch.setattr("builtins.open", full_disk_open)
    temporaries.clear()
    with pytest.raises(UserError, match="no space left"):
        sample_data.generate(str(fresh), n=3, height=64, width=128, seed=0)
    monkeypatch.undo()
    assert not (tmp_path / "fresh").exists()
