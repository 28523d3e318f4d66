"""Issue 3's speed check: our preprocess / postprocess against the seed's methods, same data, same run.

    python benchmarks/bench_data.py [--n 8] [--height 1024 --width 2048] [--workers N] [--root DIR]

Makes its own data (synthetic scenes and model-like outputs, hrnetseg.sample_data), warms the file cache,
then times each whole step (listing, reading, computing, writing) and divides by the number of images.
Ours runs with its default workers (all cores), the seed's method in one process, as it did.
Needs torch (the seed's postprocess uses it); the steps themselves do not.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np

from . import baselines, preprocess, postprocess, sample_data
from .cli import positive_int, run_cli

PREPROCESS_TARGET, POSTPROCESS_TARGET = 2.0, 10.0


def _quiet(*_args, **_kwargs) -> None:
    pass


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "{}, {} cores, Python {}, numpy {}".format(model, os.cpu_count(), platform.python_version(),
                                                     np.__version__)


def _timed(func: Callable[[], object]):
    start = time.perf_counter()
    value = func()
    return time.perf_counter() - start, value


def _warm(folder: str) -> None:
    """Read every file once so that both methods start from the same (cached) state."""
    for base, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(base, name), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def make_data(root: str, n: int, height: int, width: int, seed: int = 0) -> dict:
    data = os.path.join(root, "data")
    res = os.path.join(root, "results", "bs1")
    stamp = os.path.join(root, "made-{}-{}x{}-{}".format(n, height, width, seed))
    if not os.path.exists(stamp):
        sample_data.generate(data, n=n, height=height, width=width, seed=seed)
        sample_data.write_fake_outputs(data, res, seed=seed)
        open(stamp, "w").close()
    return {"data": data, "res": res, "labels": os.path.join(data, "cityscapes", "gtFine", "val")}


def bench_preprocess(data: str, work: str, n: int, workers: Optional[int] = None) -> dict:
    seed_dir, ours_dir = os.path.join(work, "prep_seed"), os.path.join(work, "prep_ours")
    for folder in (seed_dir, ours_dir):
        shutil.rmtree(folder, ignore_errors=True)
    seed_s, seed_files = _timed(lambda: baselines.seed_preprocess(data, seed_dir))
    ours_s, manifest = _timed(lambda: preprocess.preprocess(data, ours_dir, workers=workers, log=_quiet))
    same = all(_same_bytes(path, os.path.join(ours_dir, os.path.basename(path).replace("_gtFine_labelIds", "")))
               for path in seed_files)
    return _ratio("preprocess", seed_s, ours_s, n, PREPROCESS_TARGET, identical_float32_bins=same,
                  images=len(manifest["ids"]))


def _same_bytes(a: str, b: str) -> bool:
    return os.path.getsize(a) == os.path.getsize(b) and np.array_equal(np.fromfile(a, np.uint8),
                                                                       np.fromfile(b, np.uint8))


def bench_postprocess(res: str, labels: str, n: int, workers: Optional[int] = None) -> dict:
    seed_s, seed = _timed(lambda: baselines.seed_postprocess(res, labels))
    ours_s, ours = _timed(lambda: postprocess.evaluate_folder(res, labels, workers=workers, log=_quiet))
    return _ratio("postprocess", seed_s, ours_s, n, POSTPROCESS_TARGET,
                  seed_mean_Iou=seed["value"]["mean_Iou"], ours_mIoU=ours["mIoU"],
                  abs_diff=abs(seed["value"]["mean_Iou"] - ours["mIoU"]),
                  same_confusion=seed["confusion_matrix"] == ours["confusion_matrix"], images=ours["images"])


def _ratio(step: str, seed_s: float, ours_s: float, n: int, target: float, **extra) -> dict:
    result = {"step": step, "seed_ms_per_image": 1000 * seed_s / n, "ours_ms_per_image": 1000 * ours_s / n,
              "speedup": seed_s / ours_s, "target": target}
    result["meets_target"] = result["speedup"] >= target
    result.update(extra)
    return result


def run(n: int = 8, height: int = 1024, width: int = 2048, workers: Optional[int] = None,
        root: Optional[str] = None, seed: int = 0) -> list:
    """Both benchmarks; data in root (kept) or in a temporary folder (removed)."""
    own = root is None
    root = root or tempfile.mkdtemp(prefix="hrnetseg-bench-")
    try:
        paths = make_data(root, n, height, width, seed)
        _warm(root)
        return [bench_preprocess(paths["data"], root, n, workers),
                bench_postprocess(paths["res"], paths["labels"], n, workers)]
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def format_results(results: list, n: int, height: int, width: int) -> str:
    lines = ["{} images of {}x{}; {}".format(n, height, width, machine()),
             "| step | seed method (ms/image) | ours (ms/image) | speedup | target | check |",
             "|---|---|---|---|---|---|"]
    for r in results:
        if r["step"] == "preprocess":
            check = "float32 bins identical: {}".format(r["identical_float32_bins"])
        else:
            check = "mIoU seed {:.6f} / ours {:.6f}, same confusion: {}".format(
                r["seed_mean_Iou"], r["ours_mIoU"], r["same_confusion"])
        lines.append("| {} | {:.1f} | {:.1f} | {:.1f}x | {:.0f}x | {} |".format(
            r["step"], r["seed_ms_per_image"], r["ours_ms_per_image"], r["speedup"], r["target"], check))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/bench_data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=positive_int, default=8, help="images (default 8)")
    parser.add_argument("--height", type=positive_int, default=1024)
    parser.add_argument("--width", type=positive_int, default=2048)
    parser.add_argument("--workers", type=positive_int, default=None, help="our workers (default: all cores)")
    parser.add_argument("--root", default=None, help="keep the data here (default: a temporary folder)")
    args = parser.parse_args(argv)
    results = run(args.n, args.height, args.width, args.workers, args.root)
    print(format_results(results, args.n, args.height, args.width))
    ok = all(r["meets_target"] for r in results) and results[0]["identical_float32_bins"] \
        and results[1]["abs_diff"] <= 1e-6
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
