"""Cityscapes facts: the label table, where images and labels live, the model's input transform, and
reading labelIds PNGs (decoded through hrnetseg.data.images, which holds the pixel budget).

Atlas-side module: numpy and opencv only (pillow through images), valid Python 3.7.
"""
from __future__ import annotations

import glob
import os
from collections import namedtuple
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.data.images import image_size, read_image, unreadable_reason
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import require_folder

Label = namedtuple("Label", ["name", "id", "train_id", "color"])

IGNORE = 255
NUM_CLASSES = 19

# name, labelId, trainId (255 = ignored in evaluation), colour (RGB)
LABELS = (
    Label("unlabeled", 0, IGNORE, (0, 0, 0)),
    Label("ego vehicle", 1, IGNORE, (0, 0, 0)),
    Label("rectification border", 2, IGNORE, (0, 0, 0)),
    Label("out of roi", 3, IGNORE, (0, 0, 0)),
    Label("static", 4, IGNORE, (0, 0, 0)),
    Label("dynamic", 5, IGNORE, (111, 74, 0)),
    Label("ground", 6, IGNORE, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, IGNORE, (250, 170, 160)),
    Label("rail track", 10, IGNORE, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, IGNORE, (180, 165, 180)),
    Label("bridge", 15, IGNORE, (150, 100, 100)),
    Label("tunnel", 16, IGNORE, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, IGNORE, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, IGNORE, (0, 0, 90)),
    Label("trailer", 30, IGNORE, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
    Label("license plate", -1, -1, (0, 0, 142)),
)

EVAL_LABELS = tuple(sorted((lab for lab in LABELS if 0 <= lab.train_id < NUM_CLASSES), key=lambda lab: lab.train_id))
CLASS_NAMES = tuple(lab.name for lab in EVAL_LABELS)


def _build_tables() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    id_to_train = np.full(256, IGNORE, dtype=np.uint8)
    for lab in LABELS:
        if lab.id >= 0 and 0 <= lab.train_id < NUM_CLASSES:
            id_to_train[lab.id] = lab.train_id
    train_to_id = np.zeros(256, dtype=np.uint8)  # predictions outside 0..18 become "unlabeled"
    train_palette = np.zeros((256, 3), dtype=np.uint8)  # RGB; 255 (ignored) stays black
    for lab in EVAL_LABELS:
        train_to_id[lab.train_id] = lab.id
        train_palette[lab.train_id] = lab.color
    return id_to_train, train_to_id, train_palette


ID_TO_TRAIN, TRAIN_TO_ID, TRAIN_PALETTE = _build_tables()
# cityscapesScripts stops with "Unknown label with id N" for a labelIds value it does not know
LAST_LABEL_ID = max(label.id for label in LABELS)

# Normalization of the upstream input transform (ImageNet statistics, RGB order, after /255).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NORMALIZATION = {"mean": list(MEAN), "std": list(STD), "scale": 255.0, "channel_order": "RGB"}

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
# Stems other tools give the same image (the ModelZoo scripts named bins after the label file).
ID_SUFFIXES = ("_leftImg8bit", "_gtFine_labelIds", "_gtFine_labelTrainIds", "_labelIds")


def labels_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """labelId map (uint8) -> trainId map (uint8, 255 = ignored)."""
    return ID_TO_TRAIN[label_ids]


def image_id(stem: str) -> str:
    """`frankfurt_000000_000294_leftImg8bit` (or the gtFine stem, or the id itself) -> the image id."""
    for suffix in ID_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


# --- the upstream input transform -------------------------------------------------------------------

def reference_transform(bgr: np.ndarray) -> np.ndarray:
    """The upstream `input_transform`, operation for operation, then HWC -> CHW (float32, RGB).

    This is the definition the fast path must match bit for bit; it is slow, use `TransformLUT`.
    """
    image = bgr.astype(np.float32)[:, :, ::-1]
    image = image / 255.0
    image -= list(MEAN)
    image /= list(STD)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def transform_lut(dtype: str = "float32") -> np.ndarray:
    """3 x 256 table: value of RGB channel c for pixel value v, made by the reference transform itself.

    The transform works on each pixel value alone, so looking values up in this table gives exactly the
    bytes of `reference_transform` (float16: the float32 result rounded, as `astype` would).
    """
    every_value = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1 x 256 x 3 "BGR"
    table = reference_transform(every_value)[:, 0, :]  # 3 x 256, RGB
    return np.ascontiguousarray(table.astype(dtype))


# --- finding the data ----------------------------------------------------------------------------

Sample = namedtuple("Sample", ["id", "image", "label"])


def image_patterns(data: str, split: str) -> List[str]:
    """Where images are looked for: DATA holding `cityscapes/` (the ModelZoo scripts' ./data) or the cityscapes
    folder. The given names are taken literally (a folder called `data[1]` or a split `*` is no pattern)."""
    data, split = glob.escape(data), glob.escape(split)
    return [os.path.join(data, "cityscapes", "leftImg8bit", split, "*", "*" + IMAGE_SUFFIX),
            os.path.join(data, "leftImg8bit", split, "*", "*" + IMAGE_SUFFIX)]


def _first_match(path: str, patterns: Sequence[str], what: str, hint: str = "") -> List[str]:
    """The files of the first pattern that matches anything, sorted; UserError naming the patterns if none."""
    require_folder(path, "{} folder".format(what))
    for pattern in patterns:
        paths = sorted(glob.glob(pattern))
        if paths:
            return paths
    raise UserError("no {}s found under {}: searched {}{}".format(
        "image" if what == "data" else what, path, " and ".join(patterns), hint))


def _labels_only_hint(data: str) -> str:
    """For a tree with gtFine but no leftImg8bit: the photos are a download of their own."""
    for root in (os.path.join(data, "cityscapes"), data):
        if os.path.isdir(os.path.join(root, "gtFine")) and not os.path.isdir(os.path.join(root, "leftImg8bit")):
            return " ({} holds gtFine labels but no leftImg8bit folder: the photos come in a separate download, " \
                   "leftImg8bit_trainvaltest.zip)".format(root)
    return ""


def _by_id(paths: Sequence[str], suffix: str) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for path in paths:
        sample_id = os.path.basename(path)[: -len(suffix)]
        if sample_id in found:
            raise UserError("image id {} appears twice: {} and {}".format(sample_id, found[sample_id], path))
        found[sample_id] = path
    return found


def find_images(data: str, split: str = "val") -> List[Sample]:
    """Images of a split, sorted by id, each with its label path (None when there is no label)."""
    images = _by_id(_first_match(data, image_patterns(data, split), "data", _labels_only_hint(data)), IMAGE_SUFFIX)
    samples = []
    for sample_id in sorted(images):
        city_dir = os.path.dirname(images[sample_id])
        root = os.path.dirname(os.path.dirname(os.path.dirname(city_dir)))
        label = os.path.join(root, "gtFine", split, os.path.basename(city_dir), sample_id + LABEL_SUFFIX)
        # anything at the label's name counts as its label: a reader then names what is wrong with it (a FIFO,
        # a broken link), where "no label" would send the user looking in the wrong place
        samples.append(Sample(sample_id, images[sample_id], label if os.path.lexists(label) else None))
    return samples


def label_patterns(path: str, split: str = "val") -> List[str]:
    """Where labels are looked for: the gtFine/<split> folder (the ModelZoo scripts' --data_path), one city's folder,
    a cityscapes root, or the folder holding `cityscapes/`. The given names are taken literally."""
    path, split = glob.escape(path), glob.escape(split)
    return [os.path.join(path, "*", "*" + LABEL_SUFFIX),
            os.path.join(path, "*" + LABEL_SUFFIX),
            os.path.join(path, "gtFine", split, "*", "*" + LABEL_SUFFIX),
            os.path.join(path, "cityscapes", "gtFine", split, "*", "*" + LABEL_SUFFIX)]


def find_labels(path: str, split: str = "val") -> Dict[str, str]:
    """id -> labelIds PNG path, from the first pattern of `label_patterns` that matches."""
    return _by_id(_first_match(path, label_patterns(path, split), "label"), LABEL_SUFFIX)


def image_for_label(label_path: str) -> Optional[str]:
    """The leftImg8bit photo beside a gtFine label (`<root>/gtFine/<split>/<city>/...`), or None."""
    city_dir = os.path.dirname(os.path.abspath(label_path))
    split_dir = os.path.dirname(city_dir)
    root = os.path.dirname(os.path.dirname(split_dir))
    name = os.path.basename(label_path)[: -len(LABEL_SUFFIX)] + IMAGE_SUFFIX
    image = os.path.join(root, "leftImg8bit", os.path.basename(split_dir), os.path.basename(city_dir), name)
    return image if os.path.isfile(image) else None


# --- reading labels -------------------------------------------------------------------------------

def check_label_size(label_path: str, label_size: Sequence[int], expected: Sequence[int],
                     image_named: str = "its image") -> None:
    """Refuse a label of another size than the image the prediction was made from: every scorer (the
    postprocess, the streaming evaluation, its Ray workers) passes through here. Scored anyway, the prediction
    would be stretched onto the label's grid, a wrong number without a word.

    image_named: the image in words, for the message ("its image", "the image the outputs were made from").
    """
    if tuple(label_size) != tuple(expected):
        raise UserError("label {} is {}x{} but {} is {}x{}: a label is scored only at the size of the image its "
                        "prediction was made from".format(label_path, label_size[0], label_size[1], image_named,
                                                          expected[0], expected[1]))


def read_train_ids(label_path: str, expected: Optional[Sequence[int]] = None,
                   image_named: str = "its image") -> np.ndarray:
    """A gtFine labelIds PNG as trainIds (uint8, 255 ignored); UserError when it is not one, or (expected
    given: the size of its image) when it is not that size (check_label_size)."""
    import cv2

    label = read_image(label_path, cv2.IMREAD_UNCHANGED)
    if label is None:
        raise UserError("label {} {}".format(label_path, unreadable_reason(label_path)))
    if label.ndim != 2 or label.dtype != np.uint8:
        raise UserError("label {} is not a labelIds image (8-bit, one channel)".format(label_path))
    top = int(label.max())
    if top > LAST_LABEL_ID:  # a trainIds PNG holds 255; cityscapesScripts stops on such ids too
        raise UserError("label {} holds the value {}, which is not a Cityscapes label id (0-{}; "
                        "cityscapesScripts: 'Unknown label with id {}'): pass *_gtFine_labelIds.png files, not "
                        "trainIds or colour PNGs".format(label_path, top, LAST_LABEL_ID, top))
    if expected is not None:
        check_label_size(label_path, label.shape, expected, image_named)
    return cv2.LUT(label, ID_TO_TRAIN)


def check_label_header(label_path: str, expected: Optional[Sequence[int]] = None,
                       image_named: str = "its image") -> Tuple[int, int]:
    """The label's (height, width) from its header alone, checked against the size of its image (expected
    given) as check_label_size checks it: the scorers run this on every label before any work."""
    size = image_size(label_path)
    if size is None:
        raise UserError("label {} {}".format(label_path, unreadable_reason(label_path)))
    if expected is not None:
        check_label_size(label_path, size, expected, image_named)
    return size
