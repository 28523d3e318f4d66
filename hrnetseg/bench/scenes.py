"""The benchmark's synthetic scenes as model inputs: the timed input rows, the held-out scenes of the mIoU
measurement, the calibration scenes of an int8 case; and the check that no calibration scene is a held-out one.

Scene i of a set is scene i of `python -m hrnetseg.sample_data --seed <set>` at the bench's size (the same random
state draws it), through our float32 transform (hrnetseg.data.preprocess.convert): the same bytes the preprocess
writes for that scene's PNG. Each row is made once per workdir and kept as .npy.
"""
from __future__ import annotations

import hashlib
import os
from typing import List, Sequence, Tuple

import numpy as np

from hrnetseg.util.files import atomic_path

# The held-out scenes of models/README.md (sample_data --seed 0; the reference model was trained on those of
# 1000). The timed rows are these scenes too: any scene times the same.
HELD_OUT_SET = 0
# The int8 calibration's scenes: apart from the held-out ones (an mIoU on the calibration data would flatter
# int8) and from the training ones.
CALIBRATION_SET = 2000


def scene_rows(workdir: str, scene_set: int, count: int, height: int, width: int,
               labels: bool = False) -> List[Tuple[str, str]]:
    """Scenes 0..count-1 of `scene_set`: (model input .npy, trainIds .npy) path pairs; the trainIds are written
    only when `labels` (the second path is there either way)."""
    from hrnetseg.data.cityscapes import ID_TO_TRAIN
    from hrnetseg.data.preprocess import convert
    from hrnetseg.data.sample_scenes import scene_labels, scene_photo

    folder = os.path.join(workdir, "scenes_{}_{}x{}".format(scene_set, height, width))
    os.makedirs(folder, exist_ok=True)
    pairs = []
    for index in range(count):
        row = os.path.join(folder, "row{}.npy".format(index))
        train_ids = os.path.join(folder, "train_ids{}.npy".format(index))
        if not os.path.isfile(row) or (labels and not os.path.isfile(train_ids)):
            rng = np.random.RandomState([scene_set, index])   # as sample_data draws scene `index`
            label_ids = scene_labels(height, width, rng)
            _save(row, convert(scene_photo(label_ids, rng), "float32", "BGR"))
            if labels:
                _save(train_ids, ID_TO_TRAIN[label_ids])
        pairs.append((row, train_ids))
    return pairs


def _save(path: str, array: np.ndarray) -> None:
    """Whole or absent (util/files.atomic_path): a killed run leaves no half row for the next to reuse."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def fingerprint(path: str) -> str:
    """The sha1 of an input row's values, shape and dtype."""
    array = np.load(path)
    digest = hashlib.sha1("{}|{}|".format(array.dtype.str, array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def check_disjoint(calibration: Sequence[str], held_out: Sequence[str]) -> None:
    """Raise AssertionError if any calibration row has the same values as a held-out row: an int8 model's mIoU
    on scenes it was calibrated on would not be a held-out figure."""
    shared = set(map(fingerprint, calibration)) & set(map(fingerprint, held_out))
    if shared:
        raise AssertionError("{} calibration scene(s) are also held-out scenes: the int8 mIoU would not be "
                             "held out".format(len(shared)))
