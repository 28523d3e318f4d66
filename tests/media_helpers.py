"""Helpers for the tests of pictures, videos and predict: pictures and videos made to order (a PNG that declares
more pixels than it holds), predict's stand-in model and command line, and a full disk (a small tmpfs in a user
and mount namespace of the test's own)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from hrnetseg.backends import Backend, InputSpec
from hrnetseg.data import cityscapes, images

from helpers import REPO, TINY_PRESET


def png_declaring(path, height: int, width: int) -> Path:
    """A small PNG whose header declares height x width RGB pixels (its chunks sound, its pixel data a few
    bytes that would not decode): what a decoder would be asked to make, without the bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    Path(path).write_bytes(images.PNG_SIGNATURE + chunk(b"IHDR", header) +
                           chunk(b"IDAT", zlib.compress(bytes(280000), 0)) + chunk(b"IEND", b""))
    return Path(path)


# --- predict's stand-ins: pictures, videos, a model whose classes follow the colours --------------------------

SMALL = ["--base_size", "64", "--crop_size", "32,48"]   # every predict run: one model run per image at scale 1.0
VIDEO = (3, 7.0, 48, 80)   # frames, fps, height, width


def picture(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth BGR scene (JPEG keeps it close), not noise."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def write_video(path, frames=VIDEO[0], fps=VIDEO[1], height=VIDEO[2], width=VIDEO[3]) -> None:
    """An MPEG-4 video of smooth scenes."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for index in range(frames):
        writer.write(picture(100 + index, height, width))
    writer.release()


def video_frames(path):
    """(every frame, the fps) of a video."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    fps, found = capture.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        found.append(frame)
    capture.release()
    return found, fps


class ColourModel(Backend):
    """A stand-in model: the main output's class scores are a fixed linear function of the colour of every 4th
    pixel (the real outputs are a quarter of the input); the aux output is all zeros (class 0 everywhere)."""

    name, device, precision = "colour", "cpu", "fp32"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.weights = rng.standard_normal((19, 3)).astype(np.float32) * 4
        self.bias = rng.standard_normal(19).astype(np.float32)
        self.input = InputSpec("image", np.dtype("float32"), (None, 3, None, None))
        self.output_names = ["output1", "output2"]

    def run(self, batch):
        logits = np.einsum("kc,nchw->nkhw", self.weights, batch[:, :, ::4, ::4]) + self.bias[:, None, None]
        return [np.zeros_like(logits), logits.astype(np.float32)]


def direct_prediction(run_main, bgr: np.ndarray, scales=(1.0,), flip: bool = False) -> np.ndarray:
    """trainIds of a BGR picture straight from hrnetseg.evaluation.multiscale, on the reference transform."""
    from hrnetseg.evaluation.multiscale import TestTimeAugmentation, predict_train_ids

    image = np.ascontiguousarray(cityscapes.reference_transform(bgr).transpose(1, 2, 0))
    return predict_train_ids(image, run_main, TestTimeAugmentation(scales, flip, 64, (32, 48)))


def by_colour(bgr: np.ndarray, scales=(1.0,)) -> np.ndarray:
    """trainIds of a BGR picture as predict makes them with the ColourModel (SMALL's sizes)."""
    from hrnetseg.evaluation.multiscale import main_output_runner

    return direct_prediction(main_output_runner(ColourModel()), bgr, scales)


def run_predict(model, inputs, out, *extra):
    """python -m hrnetseg.predict in this process, at SMALL's sizes, with the tiny preset."""
    from hrnetseg.prediction import cli as predict

    return predict.main(["--pth", str(model), "--preset", TINY_PRESET, "--input", *map(str, inputs),
                         "--output", str(out), *SMALL, *map(str, extra)])


def read(path, flags=None):
    """A picture as OpenCV reads it (unchanged by default); it must decode."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if flags is None else flags)
    assert image is not None, path
    return image


# --- a full disk: a small tmpfs in the test's own user and mount namespace --------------------------------------

FULL_DISK_PRELUDE = """
import os, sys
disk = sys.argv[1]
with open(os.path.join(disk, "filler"), "wb", buffering=0) as fh:   # fill it up
    try:
        while True:
            fh.write(bytes(4096))
    except OSError:
        pass
"""


def full_disk_skip_reason():
    """Why the full-disk tests cannot run here (no unshare, or no permission for a user namespace), or None."""
    try:
        probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "unshare is not available: {}".format(exc)
    return None if probe.returncode == 0 else "no user and mount namespace: {}".format(
        probe.stderr.decode(errors="replace").strip())


def on_a_full_disk(disk: Path, script: str, *args, size: str = "64k") -> subprocess.CompletedProcess:
    """Run `python -c PRELUDE+script disk ARGS` with a `size` tmpfs mounted at `disk` (an empty folder) that the
    prelude fills up, in a user and mount namespace of its own (the mount is gone when it ends); text output."""
    disk.mkdir(exist_ok=True)
    command = 'mount -t tmpfs -o size={} tmpfs "$1" && shift && exec "$@"'.format(size)
    env = dict(os.environ, HRNETSEG_PROGRESS="0", PYTHONPATH=os.pathsep.join(
        [str(REPO), str(REPO / "tests")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run(["unshare", "-rm", "sh", "-c", command, "sh", str(disk), sys.executable, "-c",
                           FULL_DISK_PRELUDE + script, str(disk)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(REPO))
