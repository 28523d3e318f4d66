"""The work of python -m hrnetseg.predict for one input: read an image (or a video's frames), predict its trainIds
with upstream's multi-scale inference (hrnetseg.evaluation.multiscale), and write the pictures asked for.

`predict_image_file` and `predict_video_file` are plain functions of the input, the output folder, the kinds to
write, a model runner and the test-time augmentation, so that any worker can call them. Which kinds an input
needs, and where they go, is hrnetseg.prediction.outputs' business; every file is written atomically and read
back before it is renamed into place.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from collections import namedtuple
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.data import images
from hrnetseg.data.pictures import color_picture, label_ids_picture, overlay_picture, write_png
from hrnetseg.data.preprocess import convert
from hrnetseg.data.videos import VideoInfo, atomic_video, frames
from hrnetseg.prediction.inputs import Input, read_photo
from hrnetseg.prediction.outputs import VIDEO_KIND, Source, frame_outputs, image_outputs, source_of, video_output
from hrnetseg.util.errors import UserError

SAVE_KINDS = ("labelIds", "trainIds", "color", "overlay")
DEFAULT_SAVE = ("overlay",)

# the files written, how many pictures (the image, or frames) went through the model, and the source they were
# made from (outputs.source_of, taken before the file was read)
Outcome = namedtuple("Outcome", ["written", "predicted", "source"])


class UnreadableInput(UserError):
    """An input that looked fine from its header but does not decode (a truncated image or video)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__("cannot use {}: {}; --skip_bad skips such inputs".format(path, reason))
        self.path, self.reason = path, reason


def save_kinds(text: str) -> Tuple[str, ...]:
    """argparse type of --save: KIND[,KIND...] of SAVE_KINDS, in the order given, each once."""
    kinds: List[str] = []
    for kind in text.split(","):
        kind = kind.strip()
        if kind not in SAVE_KINDS:
            raise argparse.ArgumentTypeError("unknown kind {!r}: choose from {}".format(kind, ",".join(SAVE_KINDS)))
        if kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


# --- one picture ----------------------------------------------------------------------------------------------

def normalized_image(bgr: np.ndarray) -> np.ndarray:
    """An OpenCV BGR uint8 picture as upstream's normalized float32 H x W x 3 (RGB) image."""
    return np.ascontiguousarray(convert(bgr, "float32", "BGR").transpose(1, 2, 0))


def predict_picture(bgr: np.ndarray, run_main: Callable[[np.ndarray], np.ndarray], tta) -> np.ndarray:
    """trainIds (H x W uint8) of one BGR uint8 picture."""
    from hrnetseg.evaluation.multiscale import predict_train_ids

    return predict_train_ids(normalized_image(bgr), run_main, tta)


def render(kind: str, train_ids: np.ndarray, photo: np.ndarray, color: Optional[np.ndarray] = None) -> np.ndarray:
    """The picture of one kind (BGR or one channel uint8)."""
    if kind == "labelIds":
        return label_ids_picture(train_ids)
    if kind == "trainIds":
        return train_ids
    color = color_picture(train_ids) if color is None else color
    return color if kind == "color" else overlay_picture(photo, color)


def write_pictures(paths: Dict[str, str], train_ids: np.ndarray, photo: np.ndarray) -> List[str]:
    """Write each kind's picture to its path (folders made as needed); returns the paths."""
    color = color_picture(train_ids) if {"color", "overlay"} & set(paths) else None
    for kind, path in paths.items():
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_png(path, render(kind, train_ids, photo, color))
    return list(paths.values())


# --- one input ------------------------------------------------------------------------------------------------

def _source(item: Input) -> Source:
    source = source_of(item.path)
    if source is None:
        raise UnreadableInput(item.path, images.unreadable_reason(item.path))
    return source


def predict_image_file(item: Input, output: str, kinds: Sequence[str], run_main, tta) -> Outcome:
    """Read one image, predict it, write the pictures of `kinds`."""
    source = _source(item)
    photo = read_photo(item.path)
    if photo is None:
        raise UnreadableInput(item.path, images.unreadable_reason(item.path))
    return Outcome(write_pictures(image_outputs(output, item, kinds), predict_picture(photo, run_main, tta), photo),
                   1, source)


def predict_video_file(item: Input, output: str, kinds: Sequence[str], run_main, tta, info: VideoInfo,
                       on_frame: Callable[[], None] = lambda: None) -> Outcome:
    """Predict every frame of a video and write `kinds`: overlay is the video (`<stem>_overlay.mp4`, the same
    frame count, fps and size), the others PNGs per frame."""
    source = _source(item)
    video_path = video_output(output, item, info)
    os.makedirs(os.path.dirname(video_path) or ".", exist_ok=True)
    written, decoded = [], 0
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(atomic_video(video_path, info.fps, info.height, info.width)) \
            if VIDEO_KIND in kinds else None
        for index, frame in enumerate(frames(item.path)):
            decoded += 1
            if frame.shape[:2] != (info.height, info.width):
                raise UnreadableInput(item.path, "frame {} is {}x{}, the first {}x{}".format(
                    index, frame.shape[0], frame.shape[1], info.height, info.width))
            train_ids = predict_picture(frame, run_main, tta)
            written.extend(write_pictures(frame_outputs(output, item, kinds, index), train_ids, frame))
            if sink is not None:
                sink.write(overlay_picture(frame, color_picture(train_ids)))
            on_frame()
        if decoded == 0:
            raise UnreadableInput(item.path, "has no frame that can be decoded")
        if decoded < info.frames:   # a shorter video with exit 0 would pass for the whole one
            raise UnreadableInput(item.path, "is truncated or damaged: {} of the {} frames its header gives "
                                             "decode".format(decoded, info.frames))
    if sink is not None:
        written.append(video_path)
    return Outcome(written, decoded, source)
