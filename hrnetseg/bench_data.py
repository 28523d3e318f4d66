"""Issue 3's speed check: our preprocess / postprocess against the seed's methods, same data, same run.

    python benchmarks/bench_data.py [--n 8] [--height 1024 --width 2048] [--workers N] [--root DIR] [--rounds 3]

Makes its own data (synthetic scenes and model-like outputs, hrnetseg.sample_data), warms the file cache,
then times each whole step (listing, reading, computing, writing) and divides by the number of images;
several rounds, alternating which method goes first, each preprocess run after an (untimed) sync so that no
run pays for another's disk writeback; the best round of each method counts (the machine is shared).
Ours runs with its default workers (all cores), the seed's method in one process, as it did.
Needs torch (the seed's postprocess uses it); the steps themselves do not.
"""
from __future__ import annotations

import argparse
import glob
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


def _settle() -> None:
    """Flush dirty pages (untimed), so that no run pays for the previous one's disk writeback."""
    if hasattr(os, "sync"):
        os.sync()


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


def preprocess_once(name: str, data: str, work: str, workers: Optional[int] = None):
    """One run of one method ("seed" or "ours") into work/prep_<name>, from scratch, after an untimed sync:
    (seconds, what it returned)."""
    out = os.path.join(work, "prep_" + name)
    shutil.rmtree(out, ignore_errors=True)
    runs = {"seed": lambda: baselines.seed_preprocess(data, out),
            "ours": lambda: preprocess.preprocess(data, out, workers=workers, log=_quiet)}
    _settle()
    return _timed(runs[name])


def same_preprocess_bins(work: str) -> bool:
    """Whether every float32 bin the seed's method wrote to work/prep_seed is byte-identical to ours."""
    seed_paths = sorted(glob.glob(os.path.join(work, "prep_seed", "*.bin")))
    ours_dir = os.path.join(work, "prep_ours")
    return all(_same_bytes(path, os.path.join(ours_dir, os.path.basename(path).replace("_gtFine_labelIds", "")))
               for path in seed_paths)


def time_preprocess(data: str, work: str, workers: Optional[int] = None, ours_first: bool = False) -> dict:
    """Seconds of the seed's method and ours, each writing every image from scratch; same float32 bytes?"""
    times, values = {}, {}
    for name in (("ours", "seed") if ours_first else ("seed", "ours")):
        times[name], values[name] = preprocess_once(name, data, work, workers)
    return {"seed_s": times["seed"], "ours_s": times["ours"], "identical_float32_bins": same_preprocess_bins(work),
            "images": len(values["ours"]["ids"])}


def _same_bytes(a: str, b: str) -> bool:
    return os.path.getsize(a) == os.path.getsize(b) and np.array_equal(np.fromfile(a, np.uint8),
                                                                       np.fromfile(b, np.uint8))


def postprocess_once(name: str, res: str, labels: str, workers: Optional[int] = None):
    """One run of one method ("seed" or "ours") over the outputs in res: (seconds, its result dict)."""
    runs = {"seed": lambda: baselines.seed_postprocess(res, labels),
            "ours": lambda: postprocess.evaluate_folder(res, labels, workers=workers, log=_quiet)}
    return _timed(runs[name])


def compare_postprocess(seed: dict, ours: dict) -> dict:
    """The seed's mean_Iou and our mIoU, their difference, and whether the confusion matrices are the same."""
    return {"seed_mean_Iou": seed["value"]["mean_Iou"], "ours_mIoU": ours["mIoU"],
            "abs_diff": abs(seed["value"]["mean_Iou"] - ours["mIoU"]),
            "same_confusion": seed["confusion_matrix"] == ours["confusion_matrix"], "images": ours["images"]}


def time_postprocess(res: str, labels: str, workers: Optional[int] = None, ours_first: bool = False) -> dict:
    """Seconds of the seed's method and ours over the same outputs; their mIoU and confusion matrices."""
    times, values = {}, {}
    for name in (("ours", "seed") if ours_first else ("seed", "ours")):
        times[name], values[name] = postprocess_once(name, res, labels, workers)
    return dict(seed_s=times["seed"], ours_s=times["ours"], **compare_postprocess(values["seed"], values["ours"]))


def _summary(step: str, rounds: list, n: int, target: float) -> dict:
    """Best round of each method (the least disturbed by other load), per image; checks from every round."""
    seed_s, ours_s = min(r["seed_s"] for r in rounds), min(r["ours_s"] for r in rounds)
    result = {"step": step, "rounds": len(rounds), "seed_ms_per_image": 1000 * seed_s / n,
              "ours_ms_per_image": 1000 * ours_s / n, "speedup": seed_s / ours_s, "target": target,
              "round_speedups": [r["seed_s"] / r["ours_s"] for r in rounds]}
    result["meets_target"] = result["speedup"] >= target
    for key, value in rounds[-1].items():
        if key not in ("seed_s", "ours_s"):
            result[key] = value
    if step == "preprocess":
        result["identical_float32_bins"] = all(r["identical_float32_bins"] for r in rounds)
    else:
        result["same_confusion"] = all(r["same_confusion"] for r in rounds)
        result["abs_diff"] = max(r["abs_diff"] for r in rounds)
    return result


def run(n: int = 8, height: int = 1024, width: int = 2048, workers: Optional[int] = None,
        root: Optional[str] = None, seed: int = 0, rounds: int = 3) -> list:
    """Both benchmarks, `rounds` times, alternating which method goes first; data in root (kept) or in a
    temporary folder (removed)."""
    own = root is None
    root = root or tempfile.mkdtemp(prefix="hrnetseg-bench-")
    try:
        paths = make_data(root, n, height, width, seed)
        _warm(root)
        pre, post = [], []
        for index in range(rounds):
            pre.append(time_preprocess(paths["data"], root, workers, ours_first=bool(index % 2)))
            post.append(time_postprocess(paths["res"], paths["labels"], workers, ours_first=bool(index % 2)))
        return [_summary("preprocess", pre, n, PREPROCESS_TARGET), _summary("postprocess", post, n, POSTPROCESS_TARGET)]
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def load_average() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except (AttributeError, OSError):  # pragma: no cover
        return "load average n/a"


def format_results(results: list, n: int, height: int, width: int) -> str:
    rounds = results[0]["rounds"]
    lines = ["{} images of {}x{}, best of {} rounds per method; {}".format(n, height, width, rounds, machine()),
             "| step | seed method (ms/image) | ours (ms/image) | speedup | target | check |",
             "|---|---|---|---|---|---|"]
    for r in results:
        if r["step"] == "preprocess":
            check = "float32 bins identical: {}".format(r["identical_float32_bins"])
        else:
            check = "mIoU seed {:.6f} / ours {:.6f}, same confusion: {}".format(
                r["seed_mean_Iou"], r["ours_mIoU"], r["same_confusion"])
        lines.append("| {} | {:.1f} | {:.1f} | {:.1f}x (rounds: {}) | {:.0f}x | {} |".format(
            r["step"], r["seed_ms_per_image"], r["ours_ms_per_image"], r["speedup"],
            ", ".join("{:.1f}x".format(v) for v in r["round_speedups"]), r["target"], check))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/bench_data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=positive_int, default=8, help="images (default 8)")
    parser.add_argument("--height", type=positive_int, default=1024)
    parser.add_argument("--width", type=positive_int, default=2048)
    parser.add_argument("--workers", type=positive_int, default=None, help="our workers (default: all cores)")
    parser.add_argument("--root", default=None, help="keep the data here (default: a temporary folder)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="measurements per method (default 3)")
    args = parser.parse_args(argv)
    before = load_average()
    results = run(args.n, args.height, args.width, args.workers, args.root, rounds=args.rounds)
    print(format_results(results, args.n, args.height, args.width))
    print("{} before, {} after".format(before, load_average()))
    ok = all(r["meets_target"] for r in results) and results[0]["identical_float32_bins"] \
        and results[1]["abs_diff"] <= 1e-6
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
