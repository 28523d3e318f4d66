"""The label table, finding data and reading its images and labels, the input transform."""
from __future__ import annotations

import os
import shutil
import time

import cv2
import numpy as np
import pytest

from hrnetseg.data import cityscapes, images
from hrnetseg.util.errors import UserError

from helpers import SAMPLE_IMAGES, TINY_IMAGES, load_script
from media_helpers import png_declaring


def test_label_table_matches_cityscapes_scripts():
    from cityscapesscripts.helpers.labels import labels as official

    ours = {(lab.name, lab.id, lab.train_id, tuple(lab.color)) for lab in cityscapes.LABELS}
    theirs = {(lab.name, lab.id, lab.trainId, tuple(lab.color)) for lab in official}
    assert ours == theirs


def test_train_ids_and_class_names():
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for label_id in range(256):
        assert cityscapes.ID_TO_TRAIN[label_id] == expected.get(label_id, 255)
    for label_id, train_id in expected.items():
        assert cityscapes.TRAIN_TO_ID[train_id] == label_id
    assert cityscapes.CLASS_NAMES[:3] == ("road", "sidewalk", "building") and len(cityscapes.CLASS_NAMES) == 19
    assert cityscapes.CLASS_NAMES[-1] == "bicycle"


def test_reference_transform_is_the_formula():
    rng = np.random.RandomState(0)
    bgr = rng.randint(0, 256, size=(8, 16, 3)).astype(np.uint8)
    rgb = bgr[:, :, ::-1].astype(np.float64)
    formula = (rgb / 255.0 - np.array(cityscapes.MEAN)) / np.array(cityscapes.STD)
    ours = cityscapes.reference_transform(bgr)
    assert ours.dtype == np.float32 and ours.shape == (3, 8, 16) and ours.flags.c_contiguous
    assert np.abs(ours - formula.transpose(2, 0, 1)).max() <= 1e-6


def test_transform_table_is_bit_exact():
    every = np.stack(np.meshgrid(np.arange(256), np.arange(3), indexing="ij"), -1)[:, :, 0].astype(np.uint8)
    image = np.repeat(every[:, :1, None], 3, axis=2)  # 256 x 1 x 3, all values in every channel
    reference = cityscapes.reference_transform(image)[:, :, 0]
    assert np.array_equal(cityscapes.transform_lut("float32"), reference)
    assert np.array_equal(cityscapes.transform_lut("float16"), reference.astype(np.float16))


@pytest.mark.parametrize("stem,expected", [
    ("frankfurt_000000_000294", "frankfurt_000000_000294"),
    ("frankfurt_000000_000294_leftImg8bit", "frankfurt_000000_000294"),
    ("frankfurt_000000_000294_gtFine_labelIds", "frankfurt_000000_000294"),
])
def test_image_id(stem, expected):
    assert cityscapes.image_id(stem) == expected


def test_find_images_in_data_or_cityscapes_root(sample_data_root):
    from_data = cityscapes.find_images(str(sample_data_root))
    from_root = cityscapes.find_images(str(sample_data_root / "cityscapes"))
    assert [s.id for s in from_data] == [s.id for s in from_root] == sorted(s.id for s in from_data)
    assert len(from_data) == SAMPLE_IMAGES
    assert all(s.label and os.path.isfile(s.label) and s.label.endswith(cityscapes.LABEL_SUFFIX) for s in from_data)


def test_find_images_errors(tmp_path, sample_data_root):
    with pytest.raises(UserError, match="not found"):
        cityscapes.find_images(str(tmp_path / "nowhere"))
    with pytest.raises(UserError) as info:
        cityscapes.find_images(str(tmp_path))
    message = str(info.value)
    assert "no images" in message and os.path.join("cityscapes", "leftImg8bit", "val") in message
    with pytest.raises(UserError, match="no images"):
        cityscapes.find_images(str(sample_data_root), split="test")


def test_find_labels_in_every_accepted_place(sample_data_root):
    gt_val = sample_data_root / "cityscapes" / "gtFine" / "val"
    expected = cityscapes.find_labels(str(gt_val))
    assert len(expected) == SAMPLE_IMAGES
    assert cityscapes.find_labels(str(sample_data_root / "cityscapes")) == expected
    assert cityscapes.find_labels(str(sample_data_root)) == expected
    city = sorted(os.listdir(str(gt_val)))[0]
    assert set(cityscapes.find_labels(str(gt_val / city))) <= set(expected)
    for sample_id, label in expected.items():
        image = cityscapes.image_for_label(label)
        assert image and os.path.basename(image) == sample_id + cityscapes.IMAGE_SUFFIX


def test_find_labels_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        cityscapes.find_labels(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no labels found"):
        cityscapes.find_labels(str(tmp_path))


def test_split_and_data_folder_names_are_literal(tiny_data_root, tmp_path):
    with pytest.raises(UserError, match="no images found"):
        cityscapes.find_images(str(tiny_data_root), split="*")   # not every split at once
    odd = tmp_path / "data[1]"
    shutil.copytree(str(tiny_data_root / "cityscapes"), str(odd / "cityscapes"))
    assert len(cityscapes.find_images(str(odd))) == TINY_IMAGES
    assert len(cityscapes.find_labels(str(odd))) == TINY_IMAGES


def test_damaged_pngs_are_refused_quietly(sample_data_root, tmp_path, capfd):
    sample = cityscapes.find_images(str(sample_data_root))[0]
    data = open(sample.image, "rb").read()
    assert images.png_intact(data)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    for name, broken in (("cut.png", data[: len(data) // 2]), ("flip.png", bytes(flipped)), ("text.png", b"hello")):
        (tmp_path / name).write_bytes(broken)
        assert images.read_image(str(tmp_path / name), cv2.IMREAD_COLOR) is None
    assert images.read_image(str(tmp_path / "missing.png"), cv2.IMREAD_COLOR) is None
    assert capfd.readouterr().err == ""
    assert np.array_equal(images.read_image(sample.image, cv2.IMREAD_COLOR), cv2.imread(sample.image))


def test_find_images_names_what_the_data_path_is(tmp_path, sample_data_root):
    (tmp_path / "file").write_text("x")
    os.symlink("loop", str(tmp_path / "loop"))
    with pytest.raises(UserError, match="data folder .*file is a file, not a folder"):
        cityscapes.find_images(str(tmp_path / "file"))
    with pytest.raises(UserError, match="data folder .*loop is a symbolic link loop"):
        cityscapes.find_images(str(tmp_path / "loop"))
    labels_only = tmp_path / "labels_only" / "cityscapes"
    shutil.copytree(str(sample_data_root / "cityscapes" / "gtFine"), str(labels_only / "gtFine"))
    with pytest.raises(UserError, match="no images found .* holds gtFine labels but no leftImg8bit folder"):
        cityscapes.find_images(str(tmp_path / "labels_only"))


def test_a_label_that_is_not_a_regular_file_is_found_but_never_read(sample_data_root, tmp_path):
    """Found, so that a reader names what it is (a FIFO) instead of calling the label missing."""
    root = tmp_path / "data"
    shutil.copytree(str(sample_data_root), str(root))
    label = cityscapes.find_images(str(root))[0].label
    os.remove(label)
    os.mkfifo(label)
    assert cityscapes.find_images(str(root))[0].label == label
    assert images.read_image(label, cv2.IMREAD_UNCHANGED) is None and images.image_size(label) is None
    assert images.unreadable_reason(label) == "is a FIFO, not a regular file"


def test_unreadable_reason_says_permission_denied(sample_data_root, monkeypatch):
    image = cityscapes.find_images(str(sample_data_root))[0].image
    assert images.unreadable_reason(image).startswith("cannot be decoded")
    monkeypatch.setattr(images.os, "access", lambda path, mode: False)   # as a user without read access
    assert images.unreadable_reason(image) == "cannot be read: permission denied"


def test_a_png_declaring_more_pixels_than_the_budget_is_refused_from_its_header(tmp_path):
    """A 280 kB PNG declaring 12000 x 8000 pixels (23 GB once predicted): refused before anything is decoded."""
    big = str(png_declaring(tmp_path / "big.png", 8000, 12000))
    began = time.perf_counter()
    assert images.image_size(big) is None
    assert images.read_image(big, cv2.IMREAD_COLOR) is None
    reason = images.unreadable_reason(big)
    assert time.perf_counter() - began < 0.5
    assert reason == "declares 8000x12000 pixels (96.0 Mpx), above the limit of 50.0 Mpx (--max_pixels raises it)"
    huge = str(png_declaring(tmp_path / "huge.png", 20000, 20000))   # beyond PIL's own decompression-bomb limit
    assert images.image_size(huge) is None and "above the limit of 50.0 Mpx" in images.unreadable_reason(huge)
    try:
        images.set_max_pixels(400000000)
        assert images.image_size(big) == (8000, 12000) and images.image_size(huge) == (20000, 20000)
    finally:
        images.set_max_pixels(images.DEFAULT_MAX_PIXELS)
    assert images.image_size(big) is None


@pytest.mark.parametrize("script", ["HRNet_preprocess.py", "HRNet_postprocess.py", "hrnetseg.evaluate",
                                    "hrnetseg.predict"])
def test_every_tool_that_decodes_images_takes_max_pixels(script):
    import importlib

    module = load_script(script) if script.endswith(".py") else importlib.import_module(
        {"hrnetseg.evaluate": "hrnetseg.evaluation.cli", "hrnetseg.predict": "hrnetseg.prediction.cli"}[script])
    action = next(a for a in module.build_parser()._actions if a.dest == "max_pixels")
    assert action.default == images.DEFAULT_MAX_PIXELS and "--max_pixels" in action.option_strings
