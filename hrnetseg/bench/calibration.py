"""The int8 model of the benchmark's int8 cases: calibrated by a child from the bench's own scenes, once per
(preset, size, weights, calibration images) and kept in the workdir; or given with --int8_onnx.

The calibration scenes are scenes.CALIBRATION_SET, apart from the held-out scenes of the mIoU measurement
(checked on their values before the calibration runs). The calibration time is reported apart from the timed runs.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.bench.report import progress_note
from hrnetseg.bench.scenes import CALIBRATION_SET, check_disjoint, scene_rows
from hrnetseg.model.quantize import DEFAULT_KEEP_FLOAT
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import write_text_atomic
from hrnetseg.util.structured import read_json


def check_int8_onnx(path: str, height: int, width: int) -> None:
    """--int8_onnx: an int8-quantised ONNX model (its quantisation operators) whose input fits the bench's size."""
    from hrnetseg.graph.quantized import quantization_op_counts
    from hrnetseg.graph.structure import fed_inputs, load_onnx, tensor_dims

    model = load_onnx(path)   # the one-line refusals of a missing, non-regular or non-ONNX file
    if not quantization_op_counts(model):
        raise UserError("--int8_onnx {} is not int8-quantised (no quantisation operators): give a quantised model, "
                        "or leave the flag out and the bench calibrates one".format(path))
    inputs = fed_inputs(model.graph)
    if len(inputs) != 1:
        raise UserError("--int8_onnx {} has {} inputs; the bench feeds one image input".format(path, len(inputs)))
    dims = tensor_dims(inputs[0])
    if len(dims) != 4 or any(want is not None and want != got for want, got in zip(dims[2:], (height, width))):
        raise UserError("--int8_onnx {} takes input {}, not N x 3 x {} x {} (--height, --width)".format(
            path, "x".join("?" if d is None else str(d) for d in dims), height, width))


def int8_model_name(keep_float: str, count: int, size: Optional[Tuple[int, int]] = None) -> str:
    """The int8 model's file name in the model folder: named by what it depends on beyond the folder's key (the
    preset, size and weights), so a run with other settings never reuses it. size: the calibration scenes' size
    where it is not the bench's."""
    return "int8_{}_float_calibrated_on_{}{}.onnx".format(keep_float, count, "_at_{}x{}".format(*size) if size else "")


def calibrate_job(job: dict) -> dict:
    """Child side: quantise the plain export with the calibration rows, or with "dynamic" a --dynamic_hw export of
    the same weights (made here) with rows of another size; the time it took and the report's figures."""
    from hrnetseg.model.quantize import quantize_onnx

    rows = [np.load(path) for path in job["rows"]]
    began = time.perf_counter()
    source = job["onnx"]
    if job.get("dynamic"):
        from hrnetseg.model.export import export_onnx, load_model

        source = job["dynamic"]
        height, width = rows[0].shape[-2:]
        export_onnx(load_model(job["preset"], pth=job["pth"]), source, height, width, batch=None, dynamic_hw=True)
    report = quantize_onnx(source, job["int8"], rows)
    seconds = time.perf_counter() - began
    plain = {k: v for k, v in (report or {}).items() if isinstance(v, (bool, int, float, str))}
    return {"calibration_s": seconds, "report": plain}


def int8_model(run: Callable[[dict], dict], workdir: str, model: dict, height: int, width: int, count: int,
               int8_onnx: Optional[str], held_out: Sequence[str], preset: str = "",
               calibration_size: Optional[Tuple[int, int]] = None) -> dict:
    """The int8 model for the int8 cases: {"path", "calibration_s" (None when reused or given), "how"} or
    {"error"}. model: prepare_model's dict (the plain export and its folder); held_out: the rows the cases are
    timed and scored on, which no calibration row may equal. calibration_size: calibrate a --dynamic_hw export of
    the same weights on scenes of this size instead of the plain export at the bench's size (NNCF's statistics
    pass holds every activation of an image: W48 at 1024x2048 does not fit 24 GB)."""
    if int8_onnx is not None:
        return {"path": os.path.abspath(int8_onnx), "calibration_s": None, "how": "given"}
    size = tuple(calibration_size) if calibration_size and tuple(calibration_size) != (height, width) else None
    rows: List[str] = [row for row, _ in scene_rows(workdir, CALIBRATION_SET, count, *(size or (height, width)))]
    check_disjoint(rows, held_out)
    path = os.path.join(model["folder"], int8_model_name(DEFAULT_KEEP_FLOAT, count, size))
    done = path[:-len(".onnx")] + ".json"
    if os.path.isfile(done) and os.path.isfile(path):
        return dict(read_json(done, "the bench's calibration record"), path=path, calibration_s=None, how="reused")
    progress_note("calibrating the int8 model on {} scene(s){} (once per workdir)".format(
        count, " of {}x{}, a --dynamic_hw export".format(*size) if size else ""))
    job = {"job": "calibrate", "onnx": model["onnx"], "int8": path, "rows": rows}
    if size:
        job.update(dynamic=os.path.join(model["folder"], "dynamic_hw.onnx"), preset=preset, pth=model["pth"])
    result = run(job)
    if "error" in result:
        progress_note("  calibration failed: " + result["error"])
        return {"error": "calibration: " + result["error"]}
    write_text_atomic(done, json.dumps({"calibrated_s": result["calibration_s"], "report": result["report"]}))
    progress_note("  calibrated in {:.1f} s".format(result["calibration_s"]))
    return {"path": path, "calibration_s": result["calibration_s"], "how": "calibrated",
            "peak_rss_mib": result.get("peak_rss_mib")}
