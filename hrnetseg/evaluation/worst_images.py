"""The worst images of an evaluation: every image scored from its own confusion counts (per-image mIoU, then
pixel accuracy) while the scorer runs, and only the pictures of the current N worst kept (WorstImages, a bounded
list): a run over 500 images holds N images' small pictures, never all of them, and an image's pictures are made
only when its score would enter the list (WorstImages.wants), which after the first N images is seldom.
report.py puts them on the page; the result JSON lists them under WORST_KEY.

Atlas-side module: numpy and OpenCV only, valid Python 3.7.
"""
from __future__ import annotations

import bisect
import math
import threading
from collections import namedtuple
from typing import Dict, List, Optional, Tuple

import numpy as np

from hrnetseg.data import cityscapes, images
from hrnetseg.util.errors import UserError

DEFAULT_WORST = 6
PICTURE_WIDTH = 256            # the pictures' width in the page (downscaled; a smaller image is kept as it is)
PICTURE_NAMES = ("image", "ground truth", "prediction", "errors")
WORST_KEY = "worst_images"     # the result dict's list of the worst images' ids and scores
RANKED_BY = ("the lowest per-image mIoU (the mean IoU over the classes in the image's ground truth or prediction; "
             "on a tie, the lower pixel accuracy)")
# the error map: a wrong pixel, a right one (the photo dimmed, or this grey without a photo), an ignored one
WRONG_BGR, RIGHT_BGR, IGNORED_BGR = (40, 40, 230), (90, 90, 90), (20, 20, 20)


# --- per-image scores and the worst images --------------------------------------------------------------

Scores = namedtuple("Scores", ["miou", "pixel_accuracy"])


def image_scores(counts: np.ndarray) -> Scores:
    """One image's mIoU (the mean IoU over the classes in its ground truth or its prediction) and pixel accuracy,
    from its confusion counts (rows ground truth); None for both when no pixel of it is evaluated."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return Scores(None, None)
    tp = np.diag(counts).astype(np.float64)
    union = counts.sum(axis=1) + counts.sum(axis=0) - tp
    present = union > 0
    return Scores(float(np.mean(tp[present] / union[present])), float(tp.sum() / total))


Worst = namedtuple("Worst", ["id", "miou", "pixel_accuracy", "pictures"])   # pictures: name -> PNG bytes


def _rank(miou: float, pixel_accuracy: Optional[float], image_id: str) -> Tuple[float, float, str]:
    """Worst first: lowest mIoU, then lowest pixel accuracy, then the id (one order on every run)."""
    return (miou, pixel_accuracy if pixel_accuracy is not None else 1.0, image_id)


class WorstImages(object):
    """The `limit` worst images seen so far (lowest per-image mIoU), with their pictures.

    offer() is thread-safe. wants(score) says whether an image of that mIoU could enter the list, so its pictures
    are made only then; the list's bound only falls, so a worker that reads it late makes pictures that may not be
    needed, never misses some that are. shared=True keeps the bound in memory that forked worker processes
    inherit (HRNet_postprocess.py's workers): their copy of this object then sees the parent's bound.
    """

    def __init__(self, limit: int = DEFAULT_WORST, shared: bool = False) -> None:
        self.limit = limit
        self.scored = 0                # images offered (with a score or without)
        self._keys: List[Tuple[float, float, str]] = []
        self._entries: List[Worst] = []
        self._lock = threading.Lock()
        if shared:
            from multiprocessing.sharedctypes import RawValue

            # Without a lock: one aligned 8-byte store or load is not torn on the platforms CANN runs on, and a
            # stale read only costs a picture made in vain.
            self._bound = RawValue("d", math.inf)
        else:
            self._bound = _Bound()

    def wants(self, miou: Optional[float]) -> bool:
        return self.limit > 0 and miou is not None and miou <= self._bound.value

    def offer(self, image_id: str, scores: Scores, pictures: Optional[Dict[str, bytes]] = None) -> None:
        with self._lock:
            self.scored += 1
            if scores.miou is None or self.limit <= 0:
                return
            key = _rank(scores.miou, scores.pixel_accuracy, image_id)
            if len(self._keys) == self.limit and key >= self._keys[-1]:
                return
            at = bisect.bisect(self._keys, key)
            self._keys.insert(at, key)
            self._entries.insert(at, Worst(image_id, scores.miou, scores.pixel_accuracy, pictures or {}))
            del self._keys[self.limit:], self._entries[self.limit:]
            if len(self._keys) == self.limit:
                self._bound.value = self._keys[-1][0]

    def consider(self, image_id: str, counts: np.ndarray, photo: Optional[str], gt: np.ndarray,
                 pred: np.ndarray) -> None:
        """Score one image (its confusion counts, trainId ground truth and prediction, the path of its photo) and
        offer it, making its pictures only when it could enter the list."""
        scores = image_scores(counts)
        pictures = image_pictures(read_photo(photo), gt, pred) if self.wants(scores.miou) else None
        self.offer(image_id, scores, pictures)

    def entries(self) -> List[Worst]:
        with self._lock:
            return list(self._entries)

    def as_json(self) -> List[dict]:
        """The list as result.json holds it (worst first; fractions 0-1)."""
        return [{"id": entry.id, "mIoU": entry.miou, "pixel_accuracy": entry.pixel_accuracy}
                for entry in self.entries()]


class _Bound(object):
    def __init__(self) -> None:
        self.value = math.inf


def add_to_result(result: dict, worst: Optional[WorstImages]) -> dict:
    """The worst images' ids and scores into the result dict (for result.json), when they were collected."""
    if worst is not None:
        result[WORST_KEY] = worst.as_json()
    return result


# --- the pictures of one image --------------------------------------------------------------------------

def _png(image: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR array
        raise UserError("cannot encode a report picture")
    return data.tobytes()


def read_photo(path: Optional[str]) -> Optional[np.ndarray]:
    """The photo (BGR) behind a label, or None when there is none or it cannot be read (the report shows the
    other pictures)."""
    import cv2

    return images.read_image(path, cv2.IMREAD_COLOR) if path else None


def image_pictures(photo: Optional[np.ndarray], gt: np.ndarray, pred: np.ndarray,
                   width: int = PICTURE_WIDTH) -> Dict[str, bytes]:
    """The report's pictures of one image, as PNG bytes at most `width` pixels wide: "image" (when there is a photo
    of the label's size), "ground truth" and "prediction" in the Cityscapes palette, "errors" (wrong pixels red,
    right ones the photo dimmed, ignored ones near black)."""
    import cv2

    from hrnetseg.data.pictures import color_picture

    height, full_width = gt.shape
    size = (width, max(1, int(round(height * width / float(full_width))))) if full_width > width else None
    if photo is not None and photo.shape[:2] != gt.shape:
        photo = None
    evaluated = gt != cityscapes.IGNORE
    right = np.zeros(gt.shape + (3,), dtype=np.uint8)
    right[:] = RIGHT_BGR
    if photo is not None:   # the scene in grey, dimmed, so the red errors stand out
        grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
        right = cv2.cvtColor((grey // 2 + 40).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    errors = np.where(evaluated[..., None], np.where((pred == gt)[..., None], right, np.uint8(WRONG_BGR)),
                      np.uint8(IGNORED_BGR)).astype(np.uint8)

    def small(image: np.ndarray, labels: bool) -> np.ndarray:
        if size is None:
            return image
        # label maps keep their exact colours; the photo and the error map are averaged (thin errors stay visible)
        return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if labels else cv2.INTER_AREA)

    pictures = {}
    if photo is not None:
        pictures["image"] = _png(small(photo, False))
    pictures["ground truth"] = _png(small(color_picture(gt), True))
    pictures["prediction"] = _png(small(color_picture(pred), True))
    pictures["errors"] = _png(small(errors, False))
    return pictures
