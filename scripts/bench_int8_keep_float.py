"""What to keep float in int8, and which OpenVINO hint for the float rest: each --keep_float choice of
hrnetseg.model.quantize against OpenVINO bf16 on the float export, same input, same run.

    python -m hrnetseg.bench --stages infer --height 512 --width 1024 --cases openvino:int8:1 --workdir /tmp/w48
    python scripts/bench_int8_keep_float.py --workdir /tmp/w48 --height 512 --width 1024

Reads what the bench left in --workdir (the float export and the fp32 PyTorch reference outputs on held-out scene 0
of `sample_data --seed 0`), with the bench's scenes (hrnetseg.bench.scenes: the held-out one and the calibration
scenes of `--seed 2000`, made where missing); quantises the export once per choice on
--calibration_images of the calibration scenes (kept in the workdir); compiles each model in OpenVINO under each
--hints value and prints ms per image (best of --repeats after one warm-up), the speed against OpenVINO bf16 on
the float export, and the relative error of both outputs against the fp32 reference.
"""
from __future__ import annotations

import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from hrnetseg.util.cli import ArgumentParser, positive_int, run_cli  # noqa: E402
from hrnetseg.util.errors import UserError  # noqa: E402


def bench_files(workdir: str, height: int, width: int, calibration_images: int) -> dict:
    """The bench's export and fp32 reference for this size, its held-out scene 0 and calibration scenes (made as
    the bench makes them where missing); a one-line error when the bench has not exported the model."""
    from hrnetseg.bench.scenes import CALIBRATION_SET, HELD_OUT_SET, scene_rows

    models = sorted(glob.glob(os.path.join(workdir, "model_*_{}x{}_*".format(height, width), "plain.onnx")))
    if len(models) != 1:
        raise UserError("{} holds no bench run at {}x{} with an int8 case (found {} export(s)): run the bench's "
                        "command in this script's help first".format(workdir, height, width, len(models)))
    folder = os.path.dirname(models[0])
    references = [os.path.join(folder, "reference_{}.npy".format(i)) for i in range(2)]
    if not all(os.path.isfile(p) for p in references):
        raise UserError("{} has no fp32 reference outputs: run the bench once more".format(folder))
    return {"onnx": models[0], "folder": folder, "references": references,
            "held_out": scene_rows(workdir, HELD_OUT_SET, 1, height, width)[0][0],
            "calibration": [row for row, _ in scene_rows(workdir, CALIBRATION_SET, calibration_images, height,
                                                         width)]}


def timed(path: str, hint: str, image: np.ndarray, repeats: int):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    request.infer({0: image})
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        result = request.infer({0: image})
        times.append(time.perf_counter() - began)
    return min(times), [np.asarray(result[compiled.output(i)])[0] for i in range(len(compiled.outputs))]


def main(argv=None) -> int:
    from hrnetseg.bench.calibration import int8_model_name
    from hrnetseg.model.quantize import KEEP_FLOAT, quantize_onnx

    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a bench --workdir (see above)")
    parser.add_argument("--height", type=positive_int, default=512)
    parser.add_argument("--width", type=positive_int, default=1024)
    parser.add_argument("--calibration_images", type=positive_int, default=4)
    parser.add_argument("--keep_float", default=",".join(KEEP_FLOAT), help="comma-separated choices (default all)")
    parser.add_argument("--hints", default="bf16,f32", help="OpenVINO inference-precision hints (default bf16,f32)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs (best counts; default 5)")
    args = parser.parse_args(argv)
    choices = [c for c in args.keep_float.split(",") if c]
    unknown = sorted(set(choices) - set(KEEP_FLOAT))
    if unknown or not choices:
        raise UserError("--keep_float: {} not among {}".format(", ".join(unknown) or "nothing",
                                                               ", ".join(KEEP_FLOAT)))
    files = bench_files(args.workdir, args.height, args.width, args.calibration_images)
    image = np.load(files["held_out"])[None]
    references = [np.load(p) for p in files["references"]]

    def errors(outputs):
        return " / ".join("{:.1e}".format(np.linalg.norm(o - r) / np.linalg.norm(r))
                          for o, r in zip(outputs, references))

    base_s, base_out = timed(files["onnx"], "bf16", image, args.repeats)
    print("| model | OpenVINO hint | ms/image (best of {}) | speed vs float bf16 | rel. err output1 / output2 "
          "| quantised in s |".format(args.repeats))
    print("|---|---|---:|---:|---|---:|")
    print("| float export | bf16 | {:.0f} | 1 (baseline) | {} | - |".format(1e3 * base_s, errors(base_out)))
    rows = [np.load(p) for p in files["calibration"]]
    for choice in choices:
        path = os.path.join(files["folder"], int8_model_name(choice, args.calibration_images))
        seconds = "reused"
        if not os.path.isfile(path):
            seconds = "{:.0f}".format(quantize_onnx(files["onnx"], path, rows, keep_float=choice)["seconds"])
        for hint in [h for h in args.hints.split(",") if h]:
            took, outputs = timed(path, hint, image, args.repeats)
            print("| int8, {} float | {} | {:.0f} | {:.2f}x | {} | {} |".format(
                choice, hint, 1e3 * took, base_s / took, errors(outputs), seconds), flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
