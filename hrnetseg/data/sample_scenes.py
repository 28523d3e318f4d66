"""Synthetic street scenes in the Cityscapes layout, for the demo and the tests.

    python -m hrnetseg.sample_data DIR [--n 4] [--height 1024 --width 2048] [--seed 0] [--split val]

writes DIR/cityscapes/leftImg8bit/<split>/<city>/<id>_leftImg8bit.png and
DIR/cityscapes/gtFine/<split>/<city>/<id>_gtFine_labelIds.png. Every one of the 19 evaluated classes
appears in every image, with a few ignored labels (ego vehicle, static, parking) around them. A run that
fails (a full disk) removes the files and folders it made; files that were there before stay. The run
holds DIR.lock: a second run into DIR stops at once.
Atlas-side module: numpy and opencv only, valid Python 3.7.
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import sys
from typing import List, Optional, Sequence, Set

import cv2
import numpy as np

from hrnetseg.data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX, LABELS, NUM_CLASSES, read_train_ids
from hrnetseg.util.cli import ArgumentParser, plain_name, positive_int, run_cli, whole_number
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import make_output_folder, remove_quietly, write_bytes_atomic
from hrnetseg.util.locks import output_lock

CITIES = ("frankfurt", "lindau", "munster")
MIN_HEIGHT, MIN_WIDTH = 64, 128
MAX_HEIGHT, MAX_WIDTH = 4096, 8192   # twice Cityscapes each way; a scene takes about 40 bytes a pixel to make
SEED_LIMIT = 2 ** 32   # numpy's RandomState takes seeds 0 .. 2**32 - 1

_ID = {lab.name: lab.id for lab in LABELS}


def sample_id(index: int) -> str:
    """`frankfurt_000000_000294`, `lindau_000001_000313`, ...: Cityscapes-shaped ids."""
    return "{}_{:06d}_{:06d}".format(CITIES[index % len(CITIES)], index, 294 + 19 * index)


def _poly(canvas: np.ndarray, name: str, points, width: int, height: int) -> None:
    pts = np.array([[int(round(x * (width - 1))), int(round(y * (height - 1)))] for x, y in points], dtype=np.int32)
    cv2.fillPoly(canvas, [pts], int(_ID[name]))


def _rect(canvas: np.ndarray, name: str, x0: float, y0: float, x1: float, y1: float, min_w: int = 1,
          min_h: int = 1) -> None:
    height, width = canvas.shape
    left, top = int(x0 * width), int(y0 * height)
    right = max(left + min_w, int(x1 * width))
    bottom = max(top + min_h, int(y1 * height))
    canvas[max(top, 0):min(bottom, height), max(left, 0):min(right, width)] = _ID[name]


def _ellipse(canvas: np.ndarray, name: str, cx: float, cy: float, rx: float, ry: float) -> None:
    height, width = canvas.shape
    axes = (max(1, int(rx * width)), max(1, int(ry * height)))
    cv2.ellipse(canvas, (int(cx * width), int(cy * height)), axes, 0, 0, 360, int(_ID[name]), -1)


def scene_labels(height: int, width: int, rng: np.random.RandomState) -> np.ndarray:
    """A labelIds map: sky, buildings, trees, road and sidewalks, street furniture, vehicles, people."""
    canvas = np.zeros((height, width), dtype=np.uint8)

    def jitter(scale: float = 0.02) -> float:
        """A random shift of a position, within +-scale (of the image's size)."""
        return float(rng.uniform(-scale, scale))

    horizon = 0.42 + jitter(0.04)
    _rect(canvas, "sky", 0, 0, 1, horizon + 0.01)
    for x0, x1 in ((0.0, 0.14), (0.14, 0.33), (0.66, 0.84), (0.84, 1.0)):  # building blocks, stepped skyline
        _rect(canvas, "building", x0, 0.05 + rng.uniform(0, 0.2), x1, horizon + 0.02)
    for cx in (0.31 + jitter(), 0.69 + jitter()):  # trees
        _ellipse(canvas, "vegetation", cx, horizon - 0.06 + jitter(0.01), 0.045, 0.1)
    _poly(canvas, "sidewalk", [(0, horizon), (0.47, horizon), (0.12, 1), (0, 1)], width, height)
    _poly(canvas, "sidewalk", [(0.53, horizon), (1, horizon), (1, 1), (0.88, 1)], width, height)
    _poly(canvas, "road", [(0.45, horizon), (0.55, horizon), (0.93, 1), (0.07, 1)], width, height)
    _poly(canvas, "terrain", [(0.86, horizon + 0.03), (1, horizon + 0.03), (1, horizon + 0.14), (0.93, horizon + 0.14)],
          width, height)
    _poly(canvas, "parking", [(0.02, horizon + 0.2), (0.08, horizon + 0.2), (0.06, horizon + 0.3), (0, horizon + 0.3)],
          width, height)
    _rect(canvas, "wall", 0.02 + jitter(0.01), horizon - 0.1, 0.12, horizon + 0.05)
    _rect(canvas, "fence", 0.74 + jitter(0.01), horizon - 0.03, 0.84, horizon + 0.05)
    _rect(canvas, "static", 0.28, horizon + 0.01, 0.31, horizon + 0.05, min_w=2, min_h=2)
    # street furniture: two poles, a traffic light on one, a sign on the other
    for px, thing in ((0.2 + jitter(0.01), "traffic light"), (0.9 + jitter(0.01), "traffic sign")):
        _rect(canvas, "pole", px, 0.16, px + 0.004, horizon + 0.16, min_w=1)
        if thing == "traffic light":
            _rect(canvas, thing, px - 0.004, 0.14, px + 0.008, 0.2, min_w=3, min_h=4)
        else:
            _rect(canvas, thing, px - 0.012, 0.2, px + 0.016, 0.25, min_w=4, min_h=3)
    # vehicles, far to near
    _rect(canvas, "train", 0.36 + jitter(0.01), horizon - 0.09, 0.46, horizon + 0.05)
    _rect(canvas, "bus", 0.5 + jitter(0.01), horizon - 0.08, 0.58, horizon + 0.06)
    _rect(canvas, "truck", 0.6 + jitter(0.01), horizon - 0.05, 0.66, horizon + 0.08)
    car_x = 0.4 + jitter()
    _rect(canvas, "car", car_x, horizon + 0.1, car_x + 0.16, horizon + 0.24)
    _ellipse(canvas, "car", car_x + 0.08, horizon + 0.1, 0.06, 0.05)
    moto_x = 0.64 + jitter(0.01)
    _ellipse(canvas, "motorcycle", moto_x, horizon + 0.22, 0.025, 0.04)
    # people: a pedestrian on the left, a cyclist on the right
    walk_x = 0.1 + jitter(0.01)
    _ellipse(canvas, "person", walk_x, horizon + 0.12, 0.012, 0.09)
    _ellipse(canvas, "person", walk_x, horizon + 0.01, 0.008, 0.025)
    bike_x = 0.78 + jitter(0.01)
    _ellipse(canvas, "bicycle", bike_x - 0.02, horizon + 0.3, 0.015, 0.035)
    _ellipse(canvas, "bicycle", bike_x + 0.02, horizon + 0.3, 0.015, 0.035)
    _ellipse(canvas, "rider", bike_x, horizon + 0.18, 0.012, 0.08)
    _poly(canvas, "ego vehicle", [(0, 0.93), (0.25, 0.9), (0.75, 0.9), (1, 0.93), (1, 1), (0, 1)], width, height)
    return canvas


def scene_photo(labels: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """A BGR photo for a label map: class colours toned down, light falling off, texture and sensor noise."""
    height, width = labels.shape
    base = np.zeros((256, 3), dtype=np.float32)
    for lab in LABELS:
        if lab.id >= 0:
            base[lab.id] = 0.55 * np.array(lab.color[::-1], dtype=np.float32) + 0.45 * 110.0
    photo = base[labels]
    shade = np.linspace(1.1, 0.8, height, dtype=np.float32)[:, None, None]
    coarse = rng.normal(0.0, 12.0, size=(max(2, height // 32), max(2, width // 32), 1)).astype(np.float32)
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)[:, :, None]
    noise = rng.normal(0.0, 3.0, size=(height, width, 3)).astype(np.float32)
    photo = photo * shade + texture + noise
    return np.clip(photo + 0.5, 0, 255).astype(np.uint8)


def _write_png(path: str, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 images
        raise UserError("cannot encode {}".format(path))
    write_bytes_atomic(path, data.tobytes())


def _missing_folders(path: str) -> List[str]:
    """The folders os.makedirs(path) would create, outermost first."""
    missing = []
    folder = os.path.abspath(path)
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing[::-1]


def _make_folder(path: str, created: List[str]) -> None:
    """make_output_folder; the folders it creates are appended to `created` (removed again if the run fails)."""
    missing = _missing_folders(path)
    make_output_folder(path)
    created.extend(missing)


def check_seed(seed: int) -> int:
    if not 0 <= seed < SEED_LIMIT:
        raise UserError("--seed must be an integer from 0 to {}, got {}".format(SEED_LIMIT - 1, seed))
    return seed


def seed_value(text: str) -> int:
    """argparse type for --seed."""
    return whole_number(text, 0, SEED_LIMIT - 1)


def generate(root: str, n: int = 4, height: int = 1024, width: int = 2048, seed: int = 0,
             split: str = "val") -> List[str]:
    """Write `n` scenes under root/cityscapes (the ModelZoo scripts' ./data layout); return their ids, sorted.

    The same (n, height, width, seed) always gives the same files. When the run fails part-way, the files and
    folders it created are removed again (files it replaced keep their new content).
    """
    if height < MIN_HEIGHT or width < MIN_WIDTH:
        raise UserError("sample images must be at least {}x{} (height x width), got {}x{}".format(
            MIN_HEIGHT, MIN_WIDTH, height, width))
    if height > MAX_HEIGHT or width > MAX_WIDTH:
        raise UserError("sample images must be at most {}x{} (height x width), got {}x{}".format(
            MAX_HEIGHT, MAX_WIDTH, height, width))
    if n < 1:
        raise UserError("--n must be at least 1, got {}".format(n))
    check_seed(seed)
    split = _checked_split(split)
    created_folders = _missing_folders(root)
    make_output_folder(root, "DIR")
    created_files: Set[str] = set()
    try:
        # one writer: two runs with other seeds or sizes would pair one run's photo with the other's label
        with output_lock(root):
            return _write_scenes(root, n, height, width, seed, split, created_files, created_folders)
    except BaseException:
        _remove_created(created_files, created_folders)   # after the lock file beside root is gone
        raise


def _checked_split(split: str) -> str:
    try:
        return plain_name(split)
    except argparse.ArgumentTypeError as exc:
        raise UserError("--split: {}".format(exc))


def _write_scenes(root: str, n: int, height: int, width: int, seed: int, split: str, created_files: Set[str],
                  created_folders: List[str]) -> List[str]:
    ids = []
    for index in range(n):
        rng = np.random.RandomState([seed, index])
        city = CITIES[index % len(CITIES)]
        sid = sample_id(index)
        labels = scene_labels(height, width, rng)
        photo = scene_photo(labels, rng)
        image_dir = os.path.join(root, "cityscapes", "leftImg8bit", split, city)
        label_dir = os.path.join(root, "cityscapes", "gtFine", split, city)
        _make_folder(image_dir, created_folders)
        _make_folder(label_dir, created_folders)
        for path, image in ((os.path.join(image_dir, sid + IMAGE_SUFFIX), photo),
                            (os.path.join(label_dir, sid + LABEL_SUFFIX), labels)):
            if not os.path.lexists(path):
                created_files.add(path)
            _write_png(path, image)
        ids.append(sid)
    return sorted(ids)


def _remove_created(files: Set[str], folders: Sequence[str]) -> None:
    """Undo a failed run: its new files, then its new folders, innermost first (only if empty)."""
    for path in files:
        remove_quietly(path)
    for folder in sorted(folders, key=lambda p: p.count(os.sep), reverse=True):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def fake_logits(train_ids: np.ndarray, rng: np.random.RandomState, noise: float = 1.5) -> np.ndarray:
    """19 x ceil(H/4) x ceil(W/4) float32 logits a decent model might give for a trainId map: smooth class
    evidence with smooth and pixel noise, so that most of the picture is right and boundaries look real."""
    height, width = train_ids.shape
    h, w = -(-height // 4), -(-width // 4)
    low = cv2.resize(train_ids, (w, h), interpolation=cv2.INTER_NEAREST)
    low[low >= NUM_CLASSES] = 0  # ignored pixels: "road"
    logits = np.empty((NUM_CLASSES, h, w), dtype=np.float32)
    for cls in range(NUM_CLASSES):
        evidence = cv2.GaussianBlur((low == cls).astype(np.float32) * 6.0, (0, 0), 1.0)
        coarse = rng.normal(0.0, noise, size=(max(2, h // 16), max(2, w // 16))).astype(np.float32)
        smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        logits[cls] = evidence + smooth + rng.normal(0.0, noise / 5, size=(h, w)).astype(np.float32)
    return logits


def write_fake_outputs(root: str, res_dir: str, split: str = "val", naming: str = "ais_bench",
                       fmt: str = "bin", seed: int = 0, ids: Optional[Sequence[str]] = None) -> List[str]:
    """Model outputs for the labels of `generate`, as ais_bench writes them: `<id>_0.<fmt>` (aux) and
    `<id>_1.<fmt>` (main), or with naming="benchmark" the old tool's `_1` / `_2`. Returns the ids written."""
    first = {"ais_bench": 0, "benchmark": 1}[naming]
    pattern = os.path.join(root, "cityscapes", "gtFine", split, "*", "*" + LABEL_SUFFIX)
    labels = sorted(glob.glob(pattern))
    if not labels:
        raise UserError("no labels found: searched {}".format(pattern))
    make_output_folder(res_dir)
    written = []
    for label_path in labels:
        sid = os.path.basename(label_path)[: -len(LABEL_SUFFIX)]
        if ids is not None and sid not in ids:
            continue
        rng = np.random.RandomState([seed, len(written), 7])
        train_ids = read_train_ids(label_path)
        main_out = fake_logits(train_ids, rng)
        aux_out = fake_logits(train_ids, rng, noise=3.0)
        for index, array in ((first, aux_out), (first + 1, main_out)):
            path = os.path.join(res_dir, "{}_{}.{}".format(sid, index, fmt))
            if fmt == "npy":
                buffer = io.BytesIO()
                np.save(buffer, array[None])  # ais_bench keeps the batch axis: 1 x 19 x h x w
                write_bytes_atomic(path, buffer.getvalue())
            else:
                write_bytes_atomic(path, array.tobytes())
        written.append(sid)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="folder to write; the scenes go to DIR/cityscapes/...")
    parser.add_argument("--n", type=positive_int, default=4, help="number of images (default 4)")
    parser.add_argument("--height", type=positive_int, default=1024, help="image height (default 1024)")
    parser.add_argument("--width", type=positive_int, default=2048, help="image width (default 2048)")
    parser.add_argument("--seed", type=seed_value, default=0,
                        help="random seed, 0 to {} (default 0)".format(SEED_LIMIT - 1))
    parser.add_argument("--split", type=plain_name, default="val", help="split folder name (default val)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    ids = generate(args.dir, n=args.n, height=args.height, width=args.width, seed=args.seed, split=args.split)
    print("wrote {} synthetic {}x{} scenes to {} ({} ... {})".format(
        len(ids), args.height, args.width, os.path.join(args.dir, "cityscapes"), ids[0], ids[-1]))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
