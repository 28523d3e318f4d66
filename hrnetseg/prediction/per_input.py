"""The work of python -m hrnetseg.predict for one input: read an image (or a video's frames), predict its trainIds
with upstream's multi-scale inference (hrnetseg.evaluation.multiscale), and write the pictures asked for.

`predict_image_file` and `predict_video_file` are plain functions of the input, the output folder, the kinds, a
model runner and the test-time augmentation, so that any worker can call them. Outputs that exist are kept
unless `overwrite`; every file is written atomically.

    <output>/<folder>/<stem>_<kind>.png                      an image, per kind
    <output>/<folder>/<stem>_overlay.mp4                     a video (same frames and fps)
    <output>/<folder>/<stem>/<stem>_<frame:06d>_<kind>.png   a video's frames, per kind other than overlay
"""
from __future__ import annotations

import argparse
import contextlib
import os
from collections import namedtuple
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.data import cityscapes
from hrnetseg.data.pictures import color_picture, label_ids_picture, overlay_picture, write_png
from hrnetseg.data.preprocess import convert
from hrnetseg.data.videos import VideoInfo, atomic_video, frames
from hrnetseg.prediction.inputs import Input, read_photo
from hrnetseg.util.errors import UserError

SAVE_KINDS = ("labelIds", "trainIds", "color", "overlay")
DEFAULT_SAVE = ("overlay",)
VIDEO_KIND = "overlay"     # the kind a video gets as a video; the others as per-frame PNGs

# the files written, whether the input was left alone (its outputs exist), how many pictures (the image, or
# frames) went through the model
Outcome = namedtuple("Outcome", ["written", "skipped", "predicted"])


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


# --- where the outputs go -----------------------------------------------------------------------------------

def image_outputs(output: str, item: Input, kinds: Sequence[str]) -> Dict[str, str]:
    """kind -> `<output>/<folder>/<stem>_<kind>.png`."""
    return {kind: os.path.join(output, item.folder, "{}_{}.png".format(item.stem, kind)) for kind in kinds}


def video_output(output: str, item: Input) -> str:
    return os.path.join(output, item.folder, "{}_{}.mp4".format(item.stem, VIDEO_KIND))


def frame_outputs(output: str, item: Input, kinds: Sequence[str], frame: int) -> Dict[str, str]:
    """kind -> `<output>/<folder>/<stem>/<stem>_<frame:06d>_<kind>.png`, for the kinds other than overlay."""
    return {kind: os.path.join(output, item.folder, item.stem, "{}_{:06d}_{}.png".format(item.stem, frame, kind))
            for kind in kinds if kind != VIDEO_KIND}


def planned_outputs(output: str, item: Input, kinds: Sequence[str], info: Optional[VideoInfo]) -> List[str]:
    """Every file predicting `item` writes (a video's frames as many as its header says)."""
    if not item.video:
        return list(image_outputs(output, item, kinds).values())
    paths = [video_output(output, item)]
    for frame in range(info.frames if info else 0):
        paths.extend(frame_outputs(output, item, kinds, frame).values())
    return paths


def _missing(paths: Dict[str, str], overwrite: bool) -> Dict[str, str]:
    return dict(paths) if overwrite else {kind: path for kind, path in paths.items() if not os.path.lexists(path)}


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

def predict_image_file(item: Input, output: str, kinds: Sequence[str], run_main, tta,
                       overwrite: bool = False) -> Outcome:
    """Read one image, predict it, write the kinds whose files are missing (all with overwrite)."""
    todo = _missing(image_outputs(output, item, kinds), overwrite)
    if not todo:
        return Outcome([], True, 0)
    photo = read_photo(item.path)
    if photo is None:
        raise UnreadableInput(item.path, cityscapes.unreadable_reason(item.path))
    return Outcome(write_pictures(todo, predict_picture(photo, run_main, tta), photo), False, 1)


def predict_video_file(item: Input, output: str, kinds: Sequence[str], run_main, tta, info: VideoInfo,
                       overwrite: bool = False, on_frame: Callable[[], None] = lambda: None) -> Outcome:
    """Predict every frame of a video: `<stem>_overlay.mp4` (same frame count and fps) and per-frame PNGs of the
    other kinds. Frames whose files all exist are not predicted, unless the video itself is to be written."""
    video_path = video_output(output, item)
    make_video = overwrite or not os.path.lexists(video_path)
    if not make_video and all(not _missing(frame_outputs(output, item, kinds, frame), overwrite)
                              for frame in range(info.frames)):
        return Outcome([], True, 0)
    os.makedirs(os.path.dirname(video_path) or ".", exist_ok=True)
    written, predicted, decoded = [], 0, 0
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(atomic_video(video_path, info.fps, info.height, info.width)) if make_video else None
        for index, frame in enumerate(frames(item.path)):
            decoded += 1
            todo = _missing(frame_outputs(output, item, kinds, index), overwrite)
            if sink is None and not todo:
                on_frame()
                continue
            if frame.shape[:2] != (info.height, info.width):
                raise UnreadableInput(item.path, "frame {} is {}x{}, the first {}x{}".format(
                    index, frame.shape[0], frame.shape[1], info.height, info.width))
            train_ids = predict_picture(frame, run_main, tta)
            predicted += 1
            written.extend(write_pictures(todo, train_ids, frame))
            if sink is not None:
                sink.write(overlay_picture(frame, color_picture(train_ids)))
            on_frame()
        if decoded == 0:
            raise UnreadableInput(item.path, "has no frame that can be decoded")
        if decoded < info.frames:   # a shorter video with exit 0 would pass for the whole one
            raise UnreadableInput(item.path, "is truncated or damaged: {} of the {} frames its header gives "
                                             "decode".format(decoded, info.frames))
    if make_video:
        written.append(video_path)
    return Outcome(written, False, predicted)
