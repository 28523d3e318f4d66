"""Videos in and out with OpenCV: what a video file holds (frames, fps, size), its frames one by one, and a
video written atomically (frame by frame into a hidden temporary folder beside the target, renamed into place
when complete, so a video that exists is whole).

OpenCV's VideoWriter picks the container from the file name's extension, so the temporary is a folder named as
hrnetseg.util.files names temporaries, holding the video under its final name; a killed run's folder is removed by
the next run into the same output folder.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections import namedtuple
from typing import Iterator, Optional, Tuple

import numpy as np

from hrnetseg.util.errors import UserError
from hrnetseg.util.files import (
    check_output_file,
    describe_os_error,
    is_stale_temporary,
    not_regular_reason,
    temporary_name,
    write_target,
)

# what OpenCV's FFmpeg backend reads; the extensions tell videos from images when a folder is searched
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")
VIDEO_FOURCC = "mp4v"      # MPEG-4 Part 2: every OpenCV build with FFmpeg writes it into .mp4
FALLBACK_FPS = 25.0        # for a video whose header gives no frame rate

VideoInfo = namedtuple("VideoInfo", ["frames", "fps", "height", "width"])   # frames: the header's count


def _quiet_opencv() -> None:
    """OpenCV and FFmpeg print their own warnings for undecodable files; the tools say what is wrong in one
    line instead. (OpenCV reads OPENCV_FFMPEG_LOGLEVEL when it opens its first video; -8 is FFmpeg's quiet.
    A value the user set is kept.)"""
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _open(path: str):
    """A cv2.VideoCapture of a regular file, or None. Never opens a FIFO or device (it would block)."""
    import cv2

    if not_regular_reason(path) is not None or os.path.getsize(path) == 0:
        return None
    _quiet_opencv()
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        return None
    return capture


def probe(path: str) -> Tuple[Optional[VideoInfo], str]:
    """(VideoInfo, "") of a video whose first frame decodes, else (None, why) in words."""
    import cv2

    reason = not_regular_reason(path)
    if reason is not None:
        return None, reason
    if os.path.getsize(path) == 0:
        return None, "is empty"
    capture = _open(path)
    if capture is None:
        return None, "cannot be opened as a video (corrupt, truncated or not a video)"
    try:
        ok, frame = capture.read()
        if not ok or frame is None:
            return None, "has no frame that can be decoded (corrupt, truncated or not a video)"
        fps = capture.get(cv2.CAP_PROP_FPS)
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else FALLBACK_FPS
    return VideoInfo(max(frames, 1), fps, frame.shape[0], frame.shape[1]), ""


def frames(path: str) -> Iterator[np.ndarray]:
    """The frames of a video (BGR uint8), in order, until the decoder gives no more."""
    capture = _open(path)
    if capture is None:
        raise UserError("video {} cannot be opened any more".format(path))
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield frame
    finally:
        capture.release()


class VideoOutput(object):
    """Frames in, a video out; use with `atomic_video`."""

    def __init__(self, writer, size: Tuple[int, int]) -> None:
        self._writer, self._size, self.frames = writer, size, 0

    def write(self, frame: np.ndarray) -> None:
        if frame.shape[:2] != self._size:
            raise UserError("a frame of {}x{} in a video of {}x{}".format(frame.shape[0], frame.shape[1], *self._size))
        self._writer.write(frame)
        self.frames += 1


@contextlib.contextmanager
def atomic_video(path: str, fps: float, height: int, width: int) -> Iterator[VideoOutput]:
    """Write a video of height x width at fps to `path`: it appears there only when the block succeeds."""
    import cv2

    check_output_file(path)   # an existing folder, FIFO or device there is never replaced
    target = write_target(path)
    # named before it is made, and made inside the try: a Ctrl-C that lands just then leaves nothing
    temporary = os.path.join(os.path.dirname(os.path.abspath(target)), temporary_name(target))
    inner = os.path.join(temporary, os.path.basename(target))
    foreign, writer = False, None
    try:
        try:
            os.mkdir(temporary, 0o700)
        except FileExistsError:   # a folder of that name that is not ours stays
            foreign = True
            raise
        writer = cv2.VideoWriter(inner, cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (width, height))
        if not writer.isOpened():
            raise UserError("cannot write video {}: OpenCV has no {} writer for {}".format(
                path, VIDEO_FOURCC, os.path.splitext(target)[1] or "a name without extension"))
        yield VideoOutput(writer, (height, width))
        writer.release()
        if not os.path.isfile(inner) or os.path.getsize(inner) == 0:
            raise UserError("cannot write video {}: OpenCV wrote nothing (is the disk full?)".format(path))
        os.replace(inner, target)
    except OSError as exc:
        raise UserError(describe_os_error(exc, path))
    finally:
        if writer is not None:
            writer.release()
        if not foreign:
            shutil.rmtree(temporary, ignore_errors=True)


def remove_stale_video_temporaries(folder: str) -> int:
    """Remove the temporary folders of videos that killed runs left in `folder`; returns how many."""
    removed = 0
    for path in glob.glob(os.path.join(glob.escape(folder), ".*.tmp")):
        if os.path.isdir(path) and not os.path.islink(path) and \
                any(is_stale_temporary(path, "*" + suffix) for suffix in VIDEO_SUFFIXES):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
