"""Videos in and out with OpenCV: what a video file holds (frames, fps, size), its frames one by one, and a
video written atomically (frame by frame into a hidden temporary folder beside the target, renamed into place
when complete, so a video that exists is whole).

OpenCV's VideoWriter picks the container from the file name's extension, so the temporary is a folder named as
hrnetseg.util.files names temporaries, holding `video.mp4` (or `.avi`); a killed run's folder is removed by the
next run into the same output folder. The file written is read back (its frames counted, its size checked)
before it is renamed into place. OpenCV is only ever given plain ASCII names: another name is reached through a
symbolic link in a private temporary folder (its Python binding crashes on names that are not valid UTF-8).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from collections import namedtuple
from typing import Iterator, Optional, Tuple

import numpy as np

from hrnetseg.util.errors import UserError, exception_line
from hrnetseg.util.files import (
    check_output_file,
    is_stale_temporary,
    not_regular_reason,
    temporary_name,
    write_error,
    write_target,
)

# what OpenCV's FFmpeg backend reads; the extensions tell videos from images when a folder is searched
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")
VIDEO_FOURCC = "mp4v"      # MPEG-4 Part 2: every OpenCV build with FFmpeg writes it into .mp4
FULL_DISK_BYTES = 1 << 20  # a video that fails to read back with less free than this: the disk filled up
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


def _plain(path: str) -> bool:
    """Whether OpenCV may be given `path` itself: ASCII without "%". OpenCV's Python binding crashes the
    process (a segmentation fault) on a name that is not valid UTF-8, and FFmpeg reads "%d" as a pattern."""
    return all(32 <= ord(char) < 127 for char in path) and "%" not in path


@contextlib.contextmanager
def opencv_name(path: str, suffix: str = "") -> Iterator[str]:
    """A name OpenCV may open for `path` (a file or folder, existing or not): the path itself when it is plain,
    else a symbolic link to it in a private temporary folder (removed after the block). Messages keep naming
    `path`. suffix: the link's extension, which tells OpenCV the container (default: the path's own, if plain)."""
    if _plain(path):
        yield path
        return
    folder = None
    try:
        folder = tempfile.mkdtemp(prefix="hrnetseg-video-")
        if not _plain(folder):
            raise OSError(errno.EINVAL, "the temporary folder's name {!r} is not plain ASCII".format(folder))
        extension = suffix or os.path.splitext(path)[1]
        link = os.path.join(folder, "media" + (extension if _plain(extension) else ""))
        os.symlink(os.path.abspath(path), link)
    except OSError as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise UserError("cannot give OpenCV a plain name for {} (its name is not plain ASCII): {}".format(
            path, exc.strerror or exc))
    try:
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)   # the link only, never what it points to


def _open(path: str):
    """A cv2.VideoCapture of a regular file, or None. Never opens a FIFO or device (it would block)."""
    import cv2

    if not_regular_reason(path) is not None or os.path.getsize(path) == 0:
        return None
    _quiet_opencv()
    with opencv_name(path) as name:
        capture = cv2.VideoCapture(name)   # FFmpeg holds the file open from here: the link may go
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


def video_suffix(height: int, width: int) -> str:
    """The extension of a video written at this size: ".mp4" (MPEG-4 Part 2) when both sides are even; ".avi"
    (Motion JPEG, OpenCV's own writer) otherwise, as OpenCV's FFmpeg writers round odd sides down."""
    return ".mp4" if height % 2 == 0 and width % 2 == 0 else ".avi"


def check_video_file(path: str, frames: int, height: int, width: int) -> Optional[str]:
    """None when the video at `path` decodes to `frames` frames of height x width; else what it is, in words."""
    import cv2

    capture = _open(path)
    if capture is None:
        return "cannot be opened as a video"
    try:
        ok, frame = capture.read()
        if not ok or frame is None:
            return "has no frame that decodes"
        if frame.shape[:2] != (height, width):
            return "is {}x{}, not {}x{}".format(frame.shape[0], frame.shape[1], height, width)
        count = 1
        while capture.grab():
            count += 1
    except cv2.error as exc:   # pragma: no cover - some builds raise on damaged streams
        return "does not decode ({})".format(exception_line(exc))
    finally:
        capture.release()
    return None if count == frames else "decodes {} frames, not {}".format(count, frames)


class VideoOutput(object):
    """Frames in, a video out; use with `atomic_video`."""

    def __init__(self, writer, size: Tuple[int, int]) -> None:
        self._writer, self._size, self.frames = writer, size, 0

    def write(self, frame: np.ndarray) -> None:
        if frame.shape[:2] != self._size:
            raise UserError("a frame of {}x{} in a video of {}x{}".format(frame.shape[0], frame.shape[1], *self._size))
        self._writer.write(frame)
        self.frames += 1


def _writer(name: str, fps: float, height: int, width: int):
    """An opened cv2.VideoWriter for `name` (its extension chosen by video_suffix), or None."""
    import cv2

    _quiet_opencv()
    if name.endswith(".avi"):   # OpenCV's own Motion JPEG writer keeps odd sizes
        writer = cv2.VideoWriter(name, cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    else:
        writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (width, height))
    if writer.isOpened():
        return writer
    writer.release()
    return None


def _free_space_note(folder: str) -> str:
    try:
        info = os.statvfs(folder)
    except (OSError, AttributeError):
        return ""
    free = info.f_bavail * info.f_frsize
    return " (the disk is full: {} bytes free)".format(free) if free < FULL_DISK_BYTES else ""


@contextlib.contextmanager
def atomic_video(path: str, fps: float, height: int, width: int) -> Iterator[VideoOutput]:
    """Write a video of height x width at fps to `path` (named as video_suffix says): it appears there only when
    the block succeeds and the file written decodes to every frame, at that size (else exit 1)."""
    check_output_file(path)   # an existing folder, FIFO or device there is never replaced
    target = write_target(path)
    if os.path.splitext(target)[1] != video_suffix(height, width):
        raise UserError("cannot write video {}: a {}x{} video is written as {}".format(
            path, height, width, video_suffix(height, width)))
    folder = os.path.dirname(os.path.abspath(target))
    # named before it is made, and made inside the try: a Ctrl-C that lands just then leaves nothing
    temporary = os.path.join(folder, temporary_name(target))
    inner_name = "video" + video_suffix(height, width)   # OpenCV picks the container from the extension
    foreign, writer = False, None
    try:
        try:
            os.mkdir(temporary, 0o700)
        except FileExistsError:   # a folder of that name that is not ours stays
            foreign = True
            raise
        with opencv_name(temporary, suffix=".tmp") as opened:
            writer = _writer(os.path.join(opened, inner_name), fps, height, width)
            if writer is None:
                full = _free_space_note(folder)
                raise UserError("cannot write video {}: {}".format(path, "OpenCV cannot start it" + full if full else
                                                                   "OpenCV has no writer for " +
                                                                   video_suffix(height, width)),
                                exit_code=1 if full else 2)
            sink = VideoOutput(writer, (height, width))
            yield sink
            writer.release()
        inner = os.path.join(temporary, inner_name)
        if not os.path.isfile(inner) or os.path.getsize(inner) == 0:
            raise UserError("cannot write video {}: OpenCV wrote nothing{}".format(path, _free_space_note(folder)),
                            exit_code=1)
        wrong = check_video_file(inner, sink.frames, height, width)
        if wrong is not None:
            raise UserError("cannot write video {}: the file written {}{}".format(
                path, wrong, _free_space_note(folder)), exit_code=1)
        os.replace(inner, target)
    except OSError as exc:
        raise write_error(exc, path)
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
