"""The data stages: our preprocess and postprocess against the reference methods, on the same synthetic data.

Makes its own data (synthetic scenes and model-like outputs, hrnetseg.data.sample_scenes) and warms the file cache;
then, per round, each method runs in its own child, alternating which goes first; a preprocess run starts after
an untimed sync, so that no run pays for another's disk writeback. Timed: the whole step (listing, reading,
computing, writing). Checks: the float32 bins are byte-identical, the confusion matrices and mIoU are the same.
The reference methods run in one process, as the ModelZoo scripts do; ours with its workers.
"""
from __future__ import annotations

import glob
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from hrnetseg.bench import reference
from hrnetseg.bench.report import progress_note
from hrnetseg.data import preprocess, sample_scenes
from hrnetseg.evaluation import postprocess

REFERENCE, OURS = "reference", "ours"   # the methods, in the bench's rows and its jobs' "method" key


def _quiet(*_args, **_kwargs) -> None:
    pass


def _timed(func: Callable[[], object]):
    start = time.perf_counter()
    value = func()
    return time.perf_counter() - start, value


def _flush_writes() -> None:
    """Flush dirty pages (untimed), so that no run pays for the previous one's disk writeback."""
    if hasattr(os, "sync"):
        os.sync()


def warm_file_cache(folder: str) -> None:
    """Read every file once so that both methods start from the same (cached) state."""
    for base, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(base, name), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def make_data(root: str, n: int, height: int, width: int, seed: int = 0) -> dict:
    """n synthetic scenes with labels under root/data and model-like outputs for them under root/results/bs1,
    made once per (n, size, seed)."""
    data = os.path.join(root, "data")
    res = os.path.join(root, "results", "bs1")
    stamp = os.path.join(root, "made-{}-{}x{}-{}".format(n, height, width, seed))
    if not os.path.exists(stamp):
        sample_scenes.generate(data, n=n, height=height, width=width, seed=seed)
        sample_scenes.write_fake_outputs(data, res, seed=seed)
        open(stamp, "w").close()
    return {"data": data, "res": res, "labels": os.path.join(data, "cityscapes", "gtFine", "val")}


def run_preprocess(method: str, data: str, work: str, workers: Optional[int] = None):
    """One run of one method into work/prep_<method>, from scratch, after an untimed sync:
    (seconds, what it returned)."""
    out = os.path.join(work, "prep_" + method)
    shutil.rmtree(out, ignore_errors=True)
    runs = {REFERENCE: lambda: reference.reference_preprocess(data, out),
            OURS: lambda: preprocess.preprocess(data, out, workers=workers, log=_quiet)}
    _flush_writes()
    return _timed(runs[method])


def _same_bytes(a: str, b: str) -> bool:
    return os.path.getsize(a) == os.path.getsize(b) and np.array_equal(np.fromfile(a, np.uint8),
                                                                       np.fromfile(b, np.uint8))


def same_preprocess_bins(work: str) -> bool:
    """Whether every float32 bin the reference method wrote to work/prep_reference is byte-identical to ours
    (it names them after the label, we after the image)."""
    reference_paths = sorted(glob.glob(os.path.join(work, "prep_" + REFERENCE, "*.bin")))
    ours_dir = os.path.join(work, "prep_" + OURS)
    return all(_same_bytes(path, os.path.join(ours_dir, os.path.basename(path).replace("_gtFine_labelIds", "")))
               for path in reference_paths)


def run_postprocess(method: str, res: str, labels: str, workers: Optional[int] = None):
    """One run of one method over the outputs in res: (seconds, its result dict)."""
    runs = {REFERENCE: lambda: reference.reference_postprocess(res, labels),
            OURS: lambda: postprocess.evaluate_folder(res, labels, workers=workers, log=_quiet)}
    return _timed(runs[method])


def compare_postprocess(reference_result: dict, ours: dict) -> dict:
    """The reference method's mean_Iou and our mIoU, their difference, and whether the confusion matrices are
    the same."""
    reference_miou = reference_result["value"]["mean_Iou"]
    return {"reference_mean_Iou": reference_miou, "ours_mIoU": ours["mIoU"],
            "abs_diff": abs(reference_miou - ours["mIoU"]),
            "same_confusion": reference_result["confusion_matrix"] == ours["confusion_matrix"],
            "images": ours["images"]}


def data_step_job(job: dict) -> dict:
    """Child side: one method of one data step: `warmup` untimed runs, then one timed run (a round)."""
    if job["job"] == "pre":
        once, args = run_preprocess, (job["data"], job["work"])
    else:
        once, args = run_postprocess, (job["res"], job["labels"])
    for _ in range(job["warmup"]):
        once(job["method"], *args, job["workers"])
    seconds, value = once(job["method"], *args, job["workers"])
    result = {"seconds": seconds}
    if job["job"] == "post":
        result["value"] = value
    return result


def data_stage(stages: Sequence[str], run: Callable[[dict], dict], workdir: str, images: int, height: int,
               width: int, repeats: int, warmup: int, workers: Optional[int]) -> Dict[str, dict]:
    """Pre/postprocess, the reference method and ours each in its own child per round, alternating which goes
    first."""
    root = os.path.join(workdir, "data_{}_{}x{}".format(images, height, width))
    os.makedirs(root, exist_ok=True)
    paths = make_data(root, images, height, width)
    warm_file_cache(root)
    out = {}
    for stage in stages:
        rounds = {REFERENCE: [], OURS: []}
        for index in range(repeats):
            for method in ((OURS, REFERENCE) if index % 2 else (REFERENCE, OURS)):
                progress_note("{} {}, round {} ...".format(stage, method, index + 1))
                job = {"job": stage, "method": method, "warmup": warmup, "workers": workers}
                job.update({"data": paths["data"], "work": root} if stage == "pre" else
                           {"res": paths["res"], "labels": paths["labels"]})
                rounds[method].append(run(job))
        out[stage] = summarize_data_stage(stage, rounds, images, root)
    return out


def summarize_data_stage(stage: str, rounds: Dict[str, List[dict]], images: int, root: str) -> dict:
    """ms/image (min and median over the rounds), peak memory and load of each method; the check and the
    ratios of ours against the reference method (the baseline)."""
    summary = {"methods": {}, "baseline": REFERENCE}
    for method, runs in rounds.items():
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            summary["methods"][method] = {"error": errors[0], "load": runs[0]["load"]}
            continue
        ms = np.asarray([1000.0 * r["seconds"] / images for r in runs])
        summary["methods"][method] = {
            "min_ms": float(ms.min()), "median_ms": float(np.median(ms)),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "load": (runs[0]["load"][0], runs[-1]["load"][1])}   # before its first round, after its last
    baseline, ours = summary["methods"][REFERENCE], summary["methods"][OURS]
    if "error" in baseline or "error" in ours:
        summary["check"] = "not compared (a method failed)"
    elif stage == "pre":
        summary["ok"] = same_preprocess_bins(root)
        summary["check"] = "float32 bins identical: {}".format(summary["ok"])
    else:
        cmp = compare_postprocess(rounds[REFERENCE][-1]["value"], rounds[OURS][-1]["value"])
        summary["check"] = "mIoU reference {:.6f} / ours {:.6f}, same confusion: {}".format(
            cmp["reference_mean_Iou"], cmp["ours_mIoU"], cmp["same_confusion"])
        summary["ok"] = cmp["same_confusion"] and cmp["abs_diff"] <= 1e-6
    if "error" not in baseline and "error" not in ours:
        summary["ratio_min"] = baseline["min_ms"] / ours["min_ms"]
        summary["ratio_median"] = baseline["median_ms"] / ours["median_ms"]
    return summary
