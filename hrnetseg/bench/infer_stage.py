"""The inference stage: images/s and latency of every backend:precision:batch case against the baseline.

A child makes the plain export and the fp32 PyTorch reference outputs once per (preset, size, weights), and for
int8 cases the int8 model (bench/calibration); then each case runs in its own child on the same synthetic input
rows, the baseline first and last (the two rows show the drift), and both outputs are compared with the
reference. With --miou_scenes, each distinct case is then scored on held-out scenes (bench/accuracy).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.bench.accuracy import case_mious
from hrnetseg.bench.calibration import int8_model
from hrnetseg.bench.cases import BASELINE_SPEC, INT8, Case, parse_case
from hrnetseg.bench.report import progress_note, three_figures
from hrnetseg.bench.scenes import CALIBRATION_SET, HELD_OUT_SET, scene_rows
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import write_text_atomic
from hrnetseg.util.structured import read_json

# ------------------------------------------------------------------------------------- child side: the jobs

def prepare_job(job: dict) -> dict:
    """Checkpoint (random weights unless --pth), the fp32 PyTorch reference on row 0, the plain export."""
    import torch

    from hrnetseg.model.export import export_onnx, load_model
    from hrnetseg.model.random_weights import write_official_checkpoint

    result = {}
    pth = job["pth"]
    if not os.path.isfile(pth):
        began = time.perf_counter()
        write_official_checkpoint(pth + ".tmp", job["preset"], seed=0)
        os.replace(pth + ".tmp", pth)
        result["checkpoint_s"] = time.perf_counter() - began
    model = load_model(job["preset"], pth=pth)
    image = torch.from_numpy(np.load(job["row0"]))[None]
    began = time.perf_counter()
    with torch.no_grad():
        reference = model(image)
    result["reference_s"] = time.perf_counter() - began
    for k, out in enumerate(reference):
        np.save(os.path.join(job["folder"], "reference_{}.npy".format(k)), out[0].numpy())
    began = time.perf_counter()
    report = export_onnx(model, job["onnx"], job["height"], job["width"], batch=None)
    result["export_s"] = time.perf_counter() - began
    result["export_errors"] = {name: rel for name, (_, rel) in report.errors.items()}
    return result


def infer_job(job: dict) -> dict:
    """One case: load the backend, `warmup` untimed runs, `repeats` timed runs; row 0's outputs saved."""
    from hrnetseg.backends import load_backend

    extra = {"compile": True} if "compile" in job["options"] else {}   # only when asked: older load_backend lacks it
    began = time.perf_counter()
    backend = load_backend(job["backend"], job["model"], device=job["device"], precision=job["precision"],
                           preset=job["preset"], **extra)
    load_s = time.perf_counter() - began
    if np.dtype(backend.input.dtype) != np.float32:
        raise UserError("{} takes {} input; the benchmark feeds float32".format(job["model"], backend.input.dtype))
    batch = np.ascontiguousarray(np.stack([np.load(path) for path in job["rows"]]))
    warmup_s, times_ms = [], []
    for _ in range(job["warmup"]):
        began = time.perf_counter()
        backend.run(batch)
        warmup_s.append(time.perf_counter() - began)
    outputs = None
    for _ in range(job["repeats"]):
        began = time.perf_counter()
        outputs = backend.run(batch)
        times_ms.append((time.perf_counter() - began) * 1000.0)
    for k, out in enumerate(outputs):
        np.save("{}_{}.npy".format(job["out_prefix"], k), np.asarray(out[0], dtype=np.float32))
    return {"device": backend.device, "load_s": load_s, "warmup_s": warmup_s, "times_ms": times_ms,
            "outputs": len(outputs)}


# ------------------------------------------------------------------------------------------ parent side

def input_rows(workdir: str, count: int, height: int, width: int) -> List[str]:
    """Model inputs: row i is held-out scene i (as sample_data draws it), through our float32 transform."""
    return [row for row, _ in scene_rows(workdir, HELD_OUT_SET, count, height, width)]


def _weights_tag(pth: Optional[str]) -> str:
    if pth is None:
        return "random0"
    stat = os.stat(pth)
    key = "{}|{}|{}".format(os.path.abspath(pth), stat.st_size, stat.st_mtime_ns)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def prepare_model(run: Callable[[dict], dict], workdir: str, row0: str, preset: str, pth: Optional[str], height: int,
                  width: int) -> dict:
    """The plain export and the fp32 reference, made by a child once per (preset, size, weights) and kept;
    pth: the checkpoint, None for random weights."""
    folder = os.path.join(workdir, "model_{}_{}x{}_{}".format(preset, height, width, _weights_tag(pth)))
    os.makedirs(folder, exist_ok=True)
    done = os.path.join(folder, "prepared.json")
    pth = os.path.abspath(pth) if pth else os.path.join(workdir, "{}_random_seed0.pth".format(preset))
    paths = {"folder": folder, "onnx": os.path.join(folder, "plain.onnx"), "pth": pth,
             "reference": [os.path.join(folder, "reference_{}.npy".format(k)) for k in range(2)]}
    if os.path.isfile(done):
        return dict(read_json(done, "the bench's export record"), cached=True, **paths)
    progress_note("exporting {} at {}x{} and computing the fp32 PyTorch reference (once per workdir)".format(
        preset, height, width))
    result = run({"job": "prepare", "preset": preset, "pth": pth, "row0": row0, "folder": folder,
                  "onnx": paths["onnx"], "height": height, "width": width})
    if "error" in result:
        raise UserError("export / reference failed: {}".format(result["error"]))
    write_text_atomic(done, json.dumps(result))
    return dict(result, cached=False, **paths)


def infer_stage(cases: Sequence[Case], run: Callable[[dict], dict], workdir: str, preset: str, pth: Optional[str],
                height: int, width: int, device: str, repeats: int, warmup: int, calibration_images: int = 16,
                int8_onnx: Optional[str] = None, miou_scenes: int = 0,
                calibration_size: Optional[Tuple[int, int]] = None) -> dict:
    """Every case in its own child, the baseline first and last; speeds against the pooled baseline runs.
    int8 cases run the int8 model (calibrated here from calibration_images scenes unless int8_onnx is given);
    with miou_scenes, each distinct case is then scored on that many held-out scenes."""
    from hrnetseg.util.numerics import relative_error

    baseline = parse_case(BASELINE_SPEC)
    others = [c for c in cases if c != baseline]
    order = [(baseline, "first")] + [(c, "") for c in others] + ([(baseline, "last")] if others else [])
    rows = input_rows(workdir, max(c.batch for c in [baseline] + others), height, width)
    scenes = scene_rows(workdir, HELD_OUT_SET, miou_scenes, height, width, labels=True) if miou_scenes else []
    model = prepare_model(run, workdir, rows[0], preset, pth, height, width)
    int8 = None
    if any(c.precision == INT8 for c in others):
        int8 = int8_model(run, workdir, model, height, width, calibration_images, int8_onnx,
                          rows + [row for row, _ in scenes], preset, calibration_size)
    references = [np.load(path) for path in model["reference"]]
    results, jobs = [], []
    for index, (case, tag) in enumerate(order):
        progress_note("inference {}{} ...".format(case.label, " (baseline, {})".format(tag) if tag else ""))
        out_prefix = os.path.join(workdir, "outputs", "{:02d}_{}".format(index, case.spec.replace(":", "_")))
        os.makedirs(os.path.dirname(out_prefix), exist_ok=True)
        onnx = int8.get("path") if case.precision == INT8 else model["onnx"]
        job = {"job": "infer", "backend": case.backend, "precision": case.precision, "options": case.options,
               "preset": preset, "model": model["pth"] if case.backend == "torch" else onnx, "device": device,
               "rows": rows[:case.batch], "warmup": warmup, "repeats": repeats, "out_prefix": out_prefix}
        result = {"error": int8["error"], "load": (float("nan"),) * 2} if onnx is None else run(job)
        result.update(case=case, tag=tag)
        if case.precision == INT8 and int8 is not None:
            result["calibration"] = int8
        if "error" not in result:
            times = np.asarray(result["times_ms"])
            result["min_ms"], result["median_ms"] = float(times.min()), float(np.median(times))
            result["images_per_s"] = 1000.0 * case.batch / result["median_ms"]
            result["errors"] = [relative_error(np.load("{}_{}.npy".format(out_prefix, k)), ref)
                                for k, ref in enumerate(references)]
            progress_note("  {} ms/batch median, {} images/s".format(three_figures(result["median_ms"]),
                                                                     three_figures(result["images_per_s"])))
            jobs.append((case, job))
        else:
            progress_note("  failed: " + result["error"])
        results.append(result)
    base_times = [t for r in results if r["case"] == baseline and "error" not in r for t in r["times_ms"]]
    base_ips = 1000.0 * baseline.batch / float(np.median(base_times)) if base_times else float("nan")
    for result in results:
        if "error" not in result:
            result["ratio"] = result["images_per_s"] / base_ips
    if scenes:
        mious = case_mious(run, jobs, scenes)
        base_miou = mious.get(baseline, {}).get("miou")
        for result in results:
            if result["case"] in mious:
                result["miou"] = mious[result["case"]]
                value = result["miou"].get("miou")
                if value is not None and base_miou is not None:
                    result["miou"]["delta_points"] = 100.0 * (value - base_miou)
    return {"results": results, "baseline_images_per_s": base_ips, "model": model, "int8": int8,
            "calibration_images": calibration_images, "calibration_set": CALIBRATION_SET,
            "calibration_size": tuple(calibration_size or (height, width)),
            "miou_scenes": len(scenes), "held_out_set": HELD_OUT_SET}
