"""hrnetseg.model.calibration: the images int8 quantisation calibrates and validates on, from a preprocess folder
or a Cityscapes root, evenly spread, and the inputs it refuses in one line."""
from __future__ import annotations

import numpy as np
import pytest

from hrnetseg.data.preprocess import convert, read_rgb
from hrnetseg.model.calibration import read_calibration, read_validation_pairs, spread_indices
from hrnetseg.util.errors import UserError

from helpers import TINY_HEIGHT, TINY_IMAGES, TINY_WIDTH, find_images, manifest_ids


def test_spread_indices_cover_the_set_evenly():
    assert spread_indices(10, 3) == [0, 4, 9]   # round(4.5) is 4: Python rounds half to even
    assert spread_indices(5, 9) == [0, 1, 2, 3, 4]
    assert spread_indices(7, 1) == [0]


def test_bins_are_read_as_the_runner_reads_them(tiny_prep_path):
    images = read_calibration(str(tiny_prep_path), 2, "float32", size=(TINY_HEIGHT, TINY_WIDTH))
    ids = manifest_ids(tiny_prep_path)
    want = [np.fromfile(str(tiny_prep_path / (ids[i] + ".bin")), np.float32) for i in (0, TINY_IMAGES - 1)]
    assert [image.shape for image in images] == [(3, TINY_HEIGHT, TINY_WIDTH)] * 2
    assert all(np.array_equal(got.ravel(), w) for got, w in zip(images, want))   # first and last: spread


def test_a_cityscapes_root_is_transformed_as_the_preprocess_does(tiny_data_root, tiny_prep_path):
    images = read_calibration(str(tiny_data_root), 1, "float32", split="val")
    photo = find_images(tiny_data_root)[0]
    image, order = read_rgb(photo.image)
    assert np.array_equal(images[0], convert(image, "float32", order))
    pairs = read_validation_pairs(str(tiny_data_root), 2, "uint8")
    assert pairs[0][0].dtype == np.uint8 and pairs[0][1].shape == (TINY_HEIGHT, TINY_WIDTH)


def test_resize_to_shrinks_bins_and_photos_before_use(tiny_prep_path, tiny_data_root):
    import cv2

    bins = read_calibration(str(tiny_prep_path), 2, "float32", resize_to=(32, 64))
    full = read_calibration(str(tiny_prep_path), 2, "float32")
    assert [b.shape for b in bins] == [(3, 32, 64)] * 2 and all(np.isfinite(b).all() for b in bins)
    want = cv2.resize(np.ascontiguousarray(full[0].transpose(1, 2, 0)), (64, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal(bins[0], want.transpose(2, 0, 1))
    photos = read_calibration(str(tiny_data_root), 1, "float32", split="val", resize_to=(32, 64))
    image, order = read_rgb(find_images(tiny_data_root)[0].image)
    small = cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal(photos[0], convert(small, "float32", order))
    assert read_calibration(str(tiny_data_root), 1, "uint8", split="val", resize_to=(96, 192))[0].shape == (3, 96, 192)
    with pytest.raises(ValueError, match="exclude each other"):
        read_calibration(str(tiny_prep_path), 1, size=(TINY_HEIGHT, TINY_WIDTH), resize_to=(32, 64))


@pytest.mark.parametrize("spoil, message", [
    ("truncate", "bytes; float32 3x64x128 needs"),
    ("nan", "holds NaN or inf"),
])
def test_a_spoilt_bin_is_refused(prep_copy, spoil, message):
    for path in sorted(prep_copy.glob("*.bin")):
        data = np.fromfile(str(path), np.float32)
        if spoil == "truncate":
            data = data[:-7]
        else:
            data[123] = np.nan
        data.tofile(str(path))
    with pytest.raises(UserError, match=message):
        read_calibration(str(prep_copy), 5, "float32")


def test_bins_of_another_dtype_or_size_are_refused(tiny_prep_path):
    with pytest.raises(UserError, match="are float32 but the model takes uint8"):
        read_calibration(str(tiny_prep_path), 2, "uint8")
    with pytest.raises(UserError, match="model takes 128x256"):
        read_calibration(str(tiny_prep_path), 2, "float32", size=(128, 256))


def test_an_empty_folder_a_file_and_a_bad_count_are_refused(tmp_path, tiny_prep_path, tiny_data_root):
    with pytest.raises(UserError, match="no images found"):
        read_calibration(str(tmp_path), 2)
    with pytest.raises(UserError, match="calibration folder"):
        read_calibration(str(tiny_prep_path / "manifest.json"), 2)
    with pytest.raises(UserError, match="--count must be 1 to 300"):
        read_calibration(str(tiny_prep_path), 0)
    with pytest.raises(UserError, match="is 64x128 but the model takes 32x64"):
        read_calibration(str(tiny_data_root), 1, split="val", size=(32, 64))


def test_validation_needs_labels(tmp_path, tiny_data_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(root))
    shutil.rmtree(str(root / "cityscapes" / "gtFine"))
    with pytest.raises(UserError, match="has no gtFine labelIds label"):
        read_validation_pairs(str(root), 2)
