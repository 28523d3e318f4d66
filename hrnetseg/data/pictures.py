"""The pictures of a prediction (the postprocess's and python -m hrnetseg.predict's): labelIds PNGs
(cityscapesScripts / benchmark server format), the prediction in the Cityscapes palette, and that colour
picture over the photo.

Atlas-side module: numpy and opencv only, valid Python 3.7.
"""
from __future__ import annotations

import glob
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.data import cityscapes, images
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import atomic_path, remove_quietly

# the files of image <id>: <id> + suffix
PREDICTION_SUFFIX = "_labelIds.png"   # in --save_pred
COLOR_SUFFIX, OVERLAY_SUFFIX = "_color.png", "_overlay.png"   # in --save_vis

_PALETTE_BGR = np.ascontiguousarray(cityscapes.TRAIN_PALETTE[:, ::-1])
OVERLAY_WEIGHT = 0.5   # the photo's share of the overlay; the colours get the rest


def label_ids_picture(train_ids: np.ndarray) -> np.ndarray:
    """A trainId map (uint8) as Cityscapes label ids, the format cityscapesScripts and the benchmark server take."""
    import cv2

    return cv2.LUT(train_ids, cityscapes.TRAIN_TO_ID)


def color_picture(train_ids: np.ndarray) -> np.ndarray:
    """A trainId map (uint8) in the Cityscapes palette, BGR for OpenCV; ignored pixels (255) black."""
    return _PALETTE_BGR[train_ids]


def overlay_picture(photo: np.ndarray, color: np.ndarray) -> np.ndarray:
    """The colour picture over the photo (both BGR uint8 of one size)."""
    import cv2

    return cv2.addWeighted(photo, OVERLAY_WEIGHT, color, 1.0 - OVERLAY_WEIGHT, 0)


def write_png(path: str, image: np.ndarray) -> None:
    """`image` as a PNG at `path`, written atomically and read back before it is renamed into place: a file that
    does not decode to the same pixels (a write the disk lost) never appears under the name (exit 1)."""
    import cv2

    ok, data = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover
        raise UserError("cannot encode {}".format(path))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data.tobytes())
        if not png_matches(tmp, image):
            raise UserError("cannot write {}: the file written does not decode back to the picture (is the disk "
                            "full?)".format(path), exit_code=1)


def png_matches(path: str, image: np.ndarray) -> bool:
    """Whether the file at `path` decodes to exactly `image` (PNG is lossless)."""
    import cv2

    try:
        with open(path, "rb") as fh:
            data = fh.read()
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) \
            if data and images.png_intact(data) else None
    except (OSError, cv2.error):
        return False
    return decoded is not None and decoded.shape == image.shape and np.array_equal(decoded, image)


def save_pictures(pred: np.ndarray, sample_id: str, vis_dir: Optional[str], pred_dir: Optional[str],
                  image_path: Optional[str] = None) -> Tuple[List[str], Optional[str]]:
    """`<id>_color.png` (+ `<id>_overlay.png` over the photo) in vis_dir, `<id>_labelIds.png` in pred_dir.

    Returns the files written, and why there is no overlay (None when there is one or none was asked for).
    """
    import cv2

    written = []

    def save(path: str, image: np.ndarray) -> None:
        write_png(path, image)
        written.append(path)

    if pred_dir:
        save(os.path.join(pred_dir, sample_id + PREDICTION_SUFFIX), label_ids_picture(pred))
    no_overlay = None
    if vis_dir:
        color = color_picture(pred)
        save(os.path.join(vis_dir, sample_id + COLOR_SUFFIX), color)
        photo = images.read_image(image_path, cv2.IMREAD_COLOR) if image_path else None
        if image_path is None:
            no_overlay = "no leftImg8bit photo beside the label"
        elif photo is None:
            no_overlay = "photo {} {}".format(image_path, images.unreadable_reason(image_path))
        elif photo.shape != color.shape:
            no_overlay = "photo {} is {}x{}, the label {}x{}".format(image_path, photo.shape[0], photo.shape[1],
                                                                    color.shape[0], color.shape[1])
        else:
            save(os.path.join(vis_dir, sample_id + OVERLAY_SUFFIX), overlay_picture(photo, color))
    return written, no_overlay


def picture_paths(ids: Sequence[str], vis_dir: Optional[str], pred_dir: Optional[str]) -> List[str]:
    """The files save_pictures may write for these images."""
    paths = []
    for sample_id in ids:
        if pred_dir:
            paths.append(os.path.join(pred_dir, sample_id + PREDICTION_SUFFIX))
        if vis_dir:
            paths.extend(os.path.join(vis_dir, sample_id + suffix) for suffix in (COLOR_SUFFIX, OVERLAY_SUFFIX))
    return paths


def remove_pictures(new: set, written: Sequence[str], folders: Sequence[Optional[str]]) -> None:
    """After a failed run: the pictures it made (reported or still in flight), and temporaries of interrupted
    writes; pictures that were there before the run stay."""
    doomed = set(new) | set(written)
    for folder in folders:
        if folder:
            doomed.update(glob.glob(os.path.join(glob.escape(folder), ".*.png.*.tmp")))
    for path in doomed:
        remove_quietly(path)
