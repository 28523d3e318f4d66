"""HRNet_preprocess.py: exact bins, manifest, resume after a kill, settings guard, every error case."""
from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from hrnetseg.bench.reference import reference_preprocess
from hrnetseg.data import cityscapes, preprocess
from hrnetseg.data.manifest import read_manifest
from hrnetseg.util.errors import UserError

from helpers import (
    SAMPLE_IMAGES,
    TINY_HEIGHT,
    TINY_IMAGES,
    TINY_WIDTH,
    assert_user_error,
    bins,
    make_special,
    quiet,
    run_script,
)

SCRIPT = "HRNet_preprocess.py"


def _leftovers(folder: Path) -> list:
    return [p for p in os.listdir(str(folder)) if p.endswith(".tmp")]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, sample_data_root) -> Path:
    out = tmp_path_factory.mktemp("prep") / "prep_dataset"
    result = run_script([SCRIPT, "--src_path", sample_data_root, "--save_path", out])
    assert result.returncode == 0, result.stderr
    assert "3 images" in result.stdout
    return out


def test_float32_bins_are_the_upstream_transform(clean_run, sample_data_root):
    samples = cityscapes.find_images(str(sample_data_root))
    assert sorted(bins(clean_run)) == [s.id + ".bin" for s in samples]
    for sample in samples:
        data = np.fromfile(str(clean_run / (sample.id + ".bin")), dtype=np.float32).reshape(3, 128, 256)
        bgr = cv2.imread(sample.image, cv2.IMREAD_COLOR).astype(np.float64)
        formula = ((bgr[:, :, ::-1] / 255.0 - np.array(cityscapes.MEAN)) / np.array(cityscapes.STD)).transpose(2, 0, 1)
        assert np.abs(data - formula).max() <= 1e-6
        assert np.array_equal(data, cityscapes.reference_transform(cv2.imread(sample.image)))


def test_same_bytes_as_the_reference_method(clean_run, sample_data_root, tmp_path):
    """The ModelZoo scripts' preprocess, restated in hrnetseg.baselines, writes the same bytes."""
    written = reference_preprocess(str(sample_data_root), str(tmp_path / "reference"))
    ours = bins(clean_run)
    assert len(written) == SAMPLE_IMAGES
    for path in written:
        sample_id = os.path.basename(path)[: -len("_gtFine_labelIds.bin")]
        assert Path(path).read_bytes() == ours[sample_id + ".bin"]


def test_manifest(clean_run):
    manifest = read_manifest(str(clean_run))
    assert manifest["ids"] == sorted(manifest["ids"]) and len(manifest["ids"]) == SAMPLE_IMAGES
    assert manifest["shape"] == [3, 128, 256] and manifest["dtype"] == "float32" and manifest["layout"] == "NCHW"
    assert manifest["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                         "scale": 255.0, "channel_order": "RGB"}
    assert manifest["split"] == "val" and manifest["complete"] is True and manifest["skipped"] == []


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_other_dtypes(dtype, sample_data_root, tmp_path):
    manifest = preprocess.preprocess(str(sample_data_root / "cityscapes"), str(tmp_path), dtype=dtype, workers=2,
                                     log=quiet)
    assert manifest["dtype"] == dtype
    assert (manifest["normalization"] is None) == (dtype == "uint8")
    for sample in cityscapes.find_images(str(sample_data_root)):
        data = np.fromfile(str(tmp_path / (sample.id + ".bin")), dtype=dtype).reshape(3, 128, 256)
        bgr = cv2.imread(sample.image, cv2.IMREAD_COLOR)
        if dtype == "uint8":
            expected = bgr[:, :, ::-1].transpose(2, 0, 1)
        else:
            expected = cityscapes.reference_transform(bgr).astype(np.float16)
        assert np.array_equal(data, expected)


def test_rerun_skips_finished_files_and_redoes_damaged_ones(clean_run, sample_data_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(str(clean_run), str(out))
    names = sorted(bins(out))
    keep, damaged = out / names[0], out / names[1]
    stamp = os.stat(str(keep)).st_mtime_ns
    damaged.write_bytes(b"short")
    result = run_script([SCRIPT, "--src_path", sample_data_root, "--save_path", out])
    assert result.returncode == 0, result.stderr
    assert "2 already there" in result.stdout
    assert os.stat(str(keep)).st_mtime_ns == stamp
    assert bins(out) == bins(clean_run)


def test_killed_run_resumes_to_the_same_bins(clean_run, sample_data_root, tmp_path):
    out = tmp_path / "out"
    args = [SCRIPT, "--src_path", sample_data_root, "--save_path", out, "--workers", "1"]
    killed = run_script(args, env={preprocess.KILL_AFTER_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL
    assert len(bins(out)) == 1 and _leftovers(out), "the kill comes between writing a file and renaming it"
    with pytest.raises(UserError, match="did not finish"):
        read_manifest(str(out))
    resumed = run_script(args)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 already there" in resumed.stdout
    assert bins(out) == bins(clean_run) and not _leftovers(out)
    assert read_manifest(str(out))["ids"] == read_manifest(str(clean_run))["ids"]


def test_limit_then_the_rest(sample_data_root, tmp_path, clean_run):
    first = preprocess.preprocess(str(sample_data_root), str(tmp_path), limit=1, log=quiet)
    assert len(first["ids"]) == 1
    rest = preprocess.preprocess(str(sample_data_root), str(tmp_path), log=quiet)
    assert rest["ids"] == read_manifest(str(clean_run))["ids"]
    assert bins(tmp_path) == bins(clean_run)
    again = preprocess.preprocess(str(sample_data_root), str(tmp_path), limit=1, log=quiet)
    assert again["ids"] == rest["ids"][:1]   # a limited rerun lists its own images, not every bin present


def test_refuses_to_mix_settings(clean_run, sample_data_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(str(clean_run), str(out))
    result = run_script([SCRIPT, "--src_path", sample_data_root, "--save_path", out, "--dtype", "uint8"])
    assert_user_error(result, "float32", "uint8")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.bin").write_bytes(b"1234")
    assert_user_error(run_script([SCRIPT, "--src_path", sample_data_root, "--save_path", foreign]),
                      "no manifest.json")


def test_refuses_the_same_ids_from_another_data_set(clean_run, tmp_path):
    """Synthetic data reuses real Cityscapes ids: a rerun from other data must not keep the old bins."""
    from hrnetseg.data.sample_scenes import generate

    other = tmp_path / "other_data"
    generate(str(other), n=SAMPLE_IMAGES, height=128, width=256, seed=99)
    out = tmp_path / "out"
    shutil.copytree(str(clean_run), str(out))
    result = run_script([SCRIPT, "--src_path", other, "--save_path", out])
    assert_user_error(result, "from " + os.path.realpath(str(other / "cityscapes")))


def test_a_stray_test_hook_value_is_ignored(tiny_data_root, tmp_path, monkeypatch):
    monkeypatch.setenv(preprocess.KILL_AFTER_ENV, "x")      # was a ValueError traceback from the first write
    manifest = preprocess.preprocess(str(tiny_data_root), str(tmp_path / "prep"), workers=1, log=quiet)
    assert manifest["complete"] and len(manifest["ids"]) == len(cityscapes.find_images(str(tiny_data_root)))


def test_missing_data_names_the_patterns(tmp_path):
    assert_user_error(run_script([SCRIPT, "--src_path", tmp_path / "nope", "--save_path", tmp_path / "out"]),
                      "not found", "nope")
    result = run_script([SCRIPT, "--src_path", tmp_path, "--save_path", tmp_path / "out"])
    assert_user_error(result, "no images found", os.path.join("cityscapes", "leftImg8bit", "val", "*"))
    assert not (tmp_path / "out").exists()


@pytest.fixture
def data_with_bad_image(sample_data_root, tmp_path) -> tuple:
    data = tmp_path / "data"
    shutil.copytree(str(sample_data_root), str(data))
    samples = cityscapes.find_images(str(data))
    bad = Path(samples[1].image)
    bad.write_bytes(bad.read_bytes()[:2000])  # truncated: the header reads, the pixels do not
    return data, samples[1]


def test_corrupt_image_is_named(data_with_bad_image, tmp_path):
    data, bad = data_with_bad_image
    result = run_script([SCRIPT, "--src_path", data, "--save_path", tmp_path / "out", "--workers", "2"])
    assert_user_error(result, bad.image, "--skip_bad")
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert not _leftovers(tmp_path / "out")


def test_skip_bad_goes_on_and_lists_them(data_with_bad_image, tmp_path):
    data, bad = data_with_bad_image
    result = run_script([SCRIPT, "--src_path", data, "--save_path", tmp_path / "out", "--skip_bad"])
    assert result.returncode == 0, result.stderr
    assert "skipped 1 unreadable image" in result.stderr and bad.image in result.stderr
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["skipped"] == [bad.id] and bad.id not in manifest["ids"] and len(manifest["ids"]) == 2


def test_unwritable_output(sample_data_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run_script([SCRIPT, "--src_path", sample_data_root, "--save_path", blocker / "out"]),
                      "cannot create output folder")
    assert_user_error(run_script([SCRIPT, "--src_path", sample_data_root, "--save_path", blocker]),
                      "not a folder")


@pytest.mark.parametrize("kind,fragment", [("FIFO", "exists and is a FIFO, not a folder"),
                                           ("symbolic link loop", "is a symbolic link loop")])
def test_save_path_must_be_a_folder(kind, fragment, tiny_data_root, tmp_path):
    out = tmp_path / "out"
    make_special(out, kind)
    with pytest.raises(UserError, match="--save_path {} {}".format(out, fragment)):
        preprocess.preprocess(str(tiny_data_root), str(out), log=quiet)


def test_full_disk_mid_file_leaves_nothing_partial(sample_data_root, tmp_path, monkeypatch, capsys):
    import HRNet_preprocess

    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith(".tmp") and ".bin." in str(path):
            handle.write(b"partial")
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return handle

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(SystemExit) as info:
        preprocess_cli = HRNet_preprocess.main
        from hrnetseg.util.cli import run_cli

        run_cli(preprocess_cli, ["--src_path", str(sample_data_root), "--save_path", str(tmp_path / "out"),
                                 "--workers", "1"])
    monkeypatch.undo()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0]
    assert not bins(tmp_path / "out") and not _leftovers(tmp_path / "out")


def test_not_enough_space_is_found_before_writing(sample_data_root, tmp_path, monkeypatch):
    usage = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(UserError, match="not enough disk space"):
        preprocess.preprocess(str(sample_data_root), str(tmp_path / "out"), log=quiet)
    assert not bins(tmp_path / "out")


def test_not_enough_space_says_the_real_figures(tiny_data_root, tmp_path, monkeypatch):
    usage = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    needed = TINY_IMAGES * 3 * TINY_HEIGHT * TINY_WIDTH * 4
    with pytest.raises(UserError) as info:
        preprocess.preprocess(str(tiny_data_root), str(tmp_path / "out"), log=quiet)
    assert "{:.1f} kB needed, 1.0 kB free ({:.1f} kB short)".format(needed / 1e3, (needed - 1000) / 1e3) in str(
        info.value)
    assert [preprocess.size_text(n) for n in (0, 999, 3.1e6, 2.5e9)] == ["0 bytes", "999 bytes", "3.1 MB", "2.5 GB"]


def test_image_of_another_size_is_named(sample_data_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(str(sample_data_root), str(data))
    odd = cityscapes.find_images(str(data))[2]
    cv2.imwrite(odd.image, cv2.resize(cv2.imread(odd.image), (128, 64)))
    result = run_script([SCRIPT, "--src_path", data, "--save_path", tmp_path / "out"])
    assert_user_error(result, odd.image, "64x128", "128x256")


def test_older_opencv_without_rgb_decoding(clean_run, sample_data_root, tmp_path, monkeypatch):
    monkeypatch.delattr(cv2, "IMREAD_COLOR_RGB", raising=False)
    sample = cityscapes.find_images(str(sample_data_root))[0]
    assert preprocess.read_rgb(sample.image)[1] == "BGR"
    preprocess.preprocess(str(sample_data_root), str(tmp_path), workers=2, log=quiet)
    assert bins(tmp_path) == bins(clean_run)
