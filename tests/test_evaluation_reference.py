"""The reference model end to end: preprocess -> export -> Resize rewrite -> runner (bs1, bs4) -> postprocess, and
the streaming evaluation, reproduce the mIoU recorded in models/README.md; each deliberate slip of the deploy chain
(channel order, normalization, output, upsample, label ids) makes it fall far outside the tolerance; every precision
the local backends offer on this CPU, and multi-scale + flip testing, stay close to fp32 (BENCHMARKS.md's table).

Small on purpose (4 held-out scenes at 256x512, one export per module): the file runs in about 20 s on 2 cores.
`pytest -s` prints each figure."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import EVALUATE, REPO, load_script

PTH = REPO / "models" / "reference_tiny_ocr.pth"
SCENES, HEIGHT, WIDTH, SEED = 4, 256, 512, 0
# models/README.md, "The deploy chain's figure in CI": 4 scenes of sample_data --seed 0 at 256x512, the rewritten
# export in ONNX Runtime fp32 through runner + postprocess (bs1 and bs4) and through the streaming evaluation.
RECORDED_MIOU = 78.17
# fp32 CPU runs repeat to far better than this (runner bs1 and bs4, the streaming evaluation and OpenVINO fp32 all
# give 78.17); kept below the 0.67 points that align_corners=False moves the figure, so the check sees that slip too
TOLERANCE = 0.25
# what each slip must at least cost: far outside the tolerance
SLIP_COST = 10.0

pytestmark = pytest.mark.skipif(not PTH.exists(), reason="models/reference_tiny_ocr.pth is not in this checkout")


def _main(script: str):
    return load_script(script).main


def _miou(result_json: Path) -> float:
    return 100.0 * json.loads(result_json.read_text())["mIoU"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The held-out scenes, the reference export (as exported and rewritten) and its preprocess folder, made once."""
    from hrnetseg.data.sample_scenes import generate

    root = tmp_path_factory.mktemp("reference")
    data = root / "data"
    generate(str(data), n=SCENES, height=HEIGHT, width=WIDTH, seed=SEED)
    exported, rewritten = root / "hrnet.onnx", root / "hrnet_rw.onnx"
    assert _main("HRNet_pth2onnx.py")(["--pth", str(PTH), "--preset", "tiny_ocr", "--height", str(HEIGHT),
                                        "--width", str(WIDTH), "--batch", "dynamic",
                                        "--save_path", str(exported)]) == 0
    assert _main("performance_optimize_resize.py")([str(exported), str(rewritten)]) == 0
    prep = root / "prep"
    assert _main("HRNet_preprocess.py")(["--src_path", str(data), "--save_path", str(prep),
                                         "--dtype", "float32"]) == 0
    return {"root": root, "data": data, "onnx": rewritten, "exported": exported, "prep": prep,
            "labels": data / "cityscapes" / "gtFine" / "val"}


def _chain(reference, name: str, batch: int = 4, prep: Path = None, post_args=()) -> float:
    """runner -> postprocess on a preprocess folder (default: the reference one): the result's mIoU in points."""
    from hrnetseg.runner import cli as runner

    root = reference["root"]
    prep = prep or reference["prep"]
    assert runner.main(["--model", str(reference["onnx"]), "--backend", "onnxruntime", "--input", str(prep),
                        "--output", str(root / "results"), "--output_dirname", name, "--batchsize", str(batch),
                        "--preset", "tiny_ocr"]) == 0
    result = root / "result_{}.json".format(name)
    assert _main("HRNet_postprocess.py")(["--res_path", str(root / "results" / name),
                                          "--data_path", str(reference["labels"]), "--save_path", str(result),
                                          "--prep_path", str(prep), *post_args]) == 0
    return _miou(result)


def _evaluate(reference, name: str, *args) -> float:
    """The streaming evaluation (in this process): its mIoU in points. The reference path of the model (onnxruntime
    for .onnx, torch for .pth) unless args name a --backend: these figures are per backend, not --backend auto's."""
    from hrnetseg.evaluation import cli as evaluate

    result = reference["root"] / "evaluate_{}.json".format(name)
    if "--pth" not in args and "--onnx" not in args:
        args = ("--onnx", str(reference["onnx"])) + tuple(args)
    if "--backend" not in args:
        args = ("--backend", "torch" if "--pth" in args else "onnxruntime") + tuple(args)
    assert evaluate.main(["--datasets_path", str(reference["data"]), "--save_path", str(result),
                          *map(str, args)]) == 0
    return _miou(result)


# --- the recorded figure -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 4])
def test_the_deploy_chain_reproduces_the_recorded_miou(reference, batch):
    miou = _chain(reference, "bs{}".format(batch), batch)
    print("\nrunner bs{} + postprocess: {:.2f}% (recorded {:.2f}%)".format(batch, miou, RECORDED_MIOU))
    assert abs(miou - RECORDED_MIOU) <= TOLERANCE, miou


def test_the_streaming_evaluation_reproduces_the_recorded_miou(reference):
    miou = _evaluate(reference, "streaming")
    print("\nstreaming evaluate: {:.2f}% (recorded {:.2f}%)".format(miou, RECORDED_MIOU))
    assert abs(miou - RECORDED_MIOU) <= TOLERANCE, miou


def test_the_command_line_gives_the_same_figure(reference, tmp_path):
    """One real process (the others run in this one): the entry point as a user types it."""
    from helpers import run_script

    result = run_script([*EVALUATE, "--datasets_path", reference["data"], "--onnx", reference["onnx"],
                         "--save_path", tmp_path / "r.json"])
    assert result.returncode == 0, result.stderr
    assert abs(_miou(tmp_path / "r.json") - RECORDED_MIOU) <= TOLERANCE


# --- each slip of the deploy chain fails the check ----------------------------------------------------------

def _slipped_prep(reference, monkeypatch, name: str) -> Path:
    """HRNet_preprocess.py run (in this process) under the slip the caller patched in."""
    from hrnetseg.data import preprocess

    monkeypatch.setattr(preprocess, "_TRANSFORM_TABLES", {})   # the tables are cached per dtype: make them afresh
    prep = reference["root"] / "prep_{}".format(name)
    assert _main("HRNet_preprocess.py")(["--src_path", str(reference["data"]), "--save_path", str(prep),
                                         "--dtype", "float32", "--workers", "1"]) == 0
    return prep


def _slip_rgb_bgr(reference, monkeypatch):
    from hrnetseg.data import preprocess

    convert = preprocess.convert

    def swapped(image, dtype="float32", channel_order="BGR"):
        return convert(image, dtype, "RGB" if channel_order == "BGR" else "BGR")

    monkeypatch.setattr(preprocess, "convert", swapped)
    return _chain(reference, "rgb_bgr", prep=_slipped_prep(reference, monkeypatch, "rgb_bgr"))


def _slip_no_mean_std(reference, monkeypatch):
    from hrnetseg.data import cityscapes

    def scaled_only(dtype="float32"):   # /255 only: the ImageNet mean and std left out
        return np.repeat(np.arange(256, dtype=np.float32)[None] / 255.0, 3, axis=0).astype(dtype)

    monkeypatch.setattr(cityscapes, "transform_lut", scaled_only)
    return _chain(reference, "no_mean_std", prep=_slipped_prep(reference, monkeypatch, "no_mean_std"))


def _slip_aux_output(reference, monkeypatch):
    return _chain(reference, "aux", post_args=["--output_index", "0"])


def _slip_align_corners(reference, monkeypatch):
    import torch
    import torch.nn.functional as F

    from hrnetseg.evaluation import postprocess

    def align_corners_false(logits, out_h, out_w):
        up = F.interpolate(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None], (out_h, out_w),
                           mode="bilinear", align_corners=False)
        return up[0].argmax(0).numpy().astype(np.uint8)

    monkeypatch.setattr(postprocess, "logits_to_labels", align_corners_false)
    return _chain(reference, "align_corners")


def _slip_train_ids(reference, monkeypatch):
    from hrnetseg.data import cityscapes

    # the labelIds PNG taken for a trainIds one: its values used as they are (those past the 19 classes ignored)
    as_is = np.arange(256, dtype=np.uint8)
    as_is[cityscapes.NUM_CLASSES:] = cityscapes.IGNORE
    monkeypatch.setattr(cityscapes, "ID_TO_TRAIN", as_is)
    return _chain(reference, "train_ids")


SLIPS = {"R/B swapped in the preprocess": _slip_rgb_bgr, "mean/std not applied": _slip_no_mean_std,
         "output1 (aux) read instead of output2": _slip_aux_output,
         "upsample with align_corners=False": _slip_align_corners,
         "labels read as trainIds instead of labelIds": _slip_train_ids}


NEAR_SLIPS = ("output1 (aux) read instead of output2", "upsample with align_corners=False")


@pytest.mark.parametrize("slip", list(SLIPS))
def test_each_slip_fails_the_check(reference, monkeypatch, slip):
    miou = SLIPS[slip](reference, monkeypatch)
    print("\n{}: {:.2f}% (recorded {:.2f}%, {:+.2f} points)".format(slip, miou, RECORDED_MIOU,
                                                                     miou - RECORDED_MIOU))
    assert abs(miou - RECORDED_MIOU) > TOLERANCE, "the check missed: " + slip
    # the input and label slips wreck the figure; the output slips move it by a few points only (the aux head
    # of this model scores even a little higher than the OCR head here), yet still far outside the tolerance
    if slip in NEAR_SLIPS:
        assert abs(miou - RECORDED_MIOU) > 2 * TOLERANCE, (slip, miou)
    else:
        assert miou < RECORDED_MIOU - SLIP_COST, (slip, miou)


# --- precisions and multi-scale + flip -----------------------------------------------------------------------

def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_precisions_and_tta_stay_close_to_fp32(reference):
    """Every precision the local backends run on this CPU, and upstream's multi-scale + flip testing, as deltas
    to ONNX Runtime fp32 single-scale (the rewritten export; torch runs the network as trained, without the
    rewrite, so its rows are also given against its own fp32). onnxruntime runs fp32 only, openvino fp32/bf16 on
    the CPU, torch fp32/bf16 (fp16 needs a GPU)."""
    rows = [("onnxruntime", "fp32", "rewritten export", _evaluate(reference, "ort_fp32"))]
    base = rows[0][3]
    if _available("openvino"):
        for precision in ("fp32", "bf16"):
            rows.append(("openvino", precision, "rewritten export",
                         _evaluate(reference, "ov_" + precision, "--backend", "openvino", "--precision", precision)))
    torch_fp32 = None
    for precision in ("fp32", "bf16"):
        miou = _evaluate(reference, "torch_" + precision, "--pth", PTH, "--preset", "tiny_ocr", "--precision",
                         precision)
        torch_fp32 = miou if torch_fp32 is None else torch_fp32
        rows.append(("torch", precision, ".pth (no rewrite)", miou))
    dynamic = reference["root"] / "dynamic_hw.onnx"
    assert _main("HRNet_pth2onnx.py")(["--pth", str(PTH), "--preset", "tiny_ocr", "--height", str(HEIGHT),
                                        "--width", str(WIDTH), "--dynamic_hw", "--batch", "dynamic",
                                        "--save_path", str(dynamic)]) == 0
    single = _evaluate(reference, "dyn_single", "--onnx", dynamic)
    rows.append(("onnxruntime", "fp32", "--dynamic_hw export, single scale", single))
    tta = _evaluate(reference, "dyn_tta", "--onnx", dynamic, "--scales", "0.75,1.0,1.25", "--flip",
                    "--base_size", WIDTH)
    rows.append(("onnxruntime", "fp32", "--dynamic_hw export, scales 0.75,1.0,1.25 + flip", tta))

    print("\n| backend | precision | model | mIoU | delta to onnxruntime fp32 |")
    print("|---|---|---|---:|---:|")
    for backend, precision, model, miou in rows:
        print("| {} | {} | {} | {:.2f} | {:+.2f} |".format(backend, precision, model, miou, miou - base))
    if not _available("openvino"):
        print("(openvino is not installed: its rows are left out)")

    assert abs(base - RECORDED_MIOU) <= TOLERANCE
    for backend, precision, model, miou in rows:
        if precision == "bf16":   # bf16 against the same model in fp32
            same = torch_fp32 if backend == "torch" else base
            assert abs(miou - same) < 2.0, (backend, precision, miou, same)
        elif "scales" not in model:   # fp32: the rewrite moves the figure a little, nothing else may
            assert abs(miou - base) < 1.0, (backend, precision, model, miou)
    assert abs(tta - single) < 5.0, (tta, single)
