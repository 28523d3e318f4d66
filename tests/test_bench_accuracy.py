"""python -m hrnetseg.bench --miou_scenes N: each case's mIoU on held-out synthetic scenes with the reference model,
the same figure the streaming evaluation gives, an int8 case's beside it; refused on random weights; calibration
scenes never held out."""
from __future__ import annotations

import glob
import json

import cv2
import numpy as np
import pytest
from test_bench_main import table

from hrnetseg.bench import scenes
from hrnetseg.bench.__main__ import main as bench_main
from hrnetseg.bench.cases import parse_case
from hrnetseg.data.preprocess import convert
from hrnetseg.data.sample_scenes import generate
from hrnetseg.util.errors import UserError

from helpers import REPO, assert_user_error, run_in_process, run_script

REFERENCE = str(REPO / "models" / "reference_tiny_ocr.pth")
HEIGHT, WIDTH, SCENES = 128, 256, 2
ACCURACY = ["--stages", "infer", "--preset", "tiny_ocr", "--pth", REFERENCE, "--height", HEIGHT, "--width", WIDTH,
            "--repeats", "1", "--warmup", "0", "--miou_scenes", SCENES, "--no_record"]


OTHER_SPEC = "openvino:int8:1"
OTHER = parse_case(OTHER_SPEC).label


@pytest.fixture(scope="module")
def accuracy_run(tmp_path_factory):
    """The reference model, the baseline and OpenVINO int8 (calibrated on 2 scenes), scored on 2 held-out scenes
    at 128x256: one run for both (the calibration alone takes about 10 s)."""
    work = tmp_path_factory.mktemp("bench-accuracy") / "work"
    result = run_script(["-m", "hrnetseg.bench"] + [str(a) for a in ACCURACY] +
                        ["--cases", "onnxruntime:fp32:1," + OTHER_SPEC,
                         "--calibration_images", "2", "--workdir", str(work)], timeout=300)
    assert result.returncode == 0, result.stderr
    return result, work


def test_miou_columns_and_change_against_the_baseline(accuracy_run):
    result, _ = accuracy_run
    rows = {r[0]: r for r in table(result.stdout, "case")}
    first, other, last = (rows["onnxruntime fp32 bs1 (baseline, first)"], rows[OTHER],
                          rows["onnxruntime fp32 bs1 (baseline, last)"])
    assert first[8] == last[8] == "0 (baseline)" and first[7] == last[7]
    assert 20.0 < float(first[7]) < 100.0                 # a trained model: far above chance (5%)
    assert float(other[8]) == pytest.approx(float(other[7]) - float(first[7]), abs=0.011)
    assert abs(float(other[8])) < 10.0
    assert "{} held-out scene(s) of `sample_data --seed 0`".format(SCENES) in result.stdout


def test_int8_case_end_to_end(accuracy_run):
    """The int8 row: a model calibrated in this run (its time apart from the timed runs), errors of a quantised
    model (not fp32's), the calibration scenes named."""
    from hrnetseg.bench.calibration import check_int8_onnx

    result, work = accuracy_run
    row = {r[0]: r for r in table(result.stdout, "case")}[OTHER]
    assert row[1] == "cpu" and float(row[2]) > 0 and float(row[10]) > 0   # calibration s
    errors = [float(v) for v in row[6].split(" / ")]
    assert all(1e-4 < e < 0.5 for e in errors), errors
    assert "2 calibration scene(s) of `sample_data --seed {}` at 128x256".format(scenes.CALIBRATION_SET) \
        in result.stdout
    (int8,) = glob.glob(str(work / "model_tiny_ocr_128x256_*" / "int8_attention_float_calibrated_on_2.onnx"))
    check_int8_onnx(int8, HEIGHT, WIDTH)                  # what --int8_onnx takes
    with pytest.raises(UserError, match="takes input .*x128x256, not N x 3 x 64 x 128"):
        check_int8_onnx(int8, 64, 128)


def test_keep_float_script_on_the_bench_workdir(accuracy_run):
    """scripts/bench_int8_keep_float.py reuses the bench's export, scenes and int8 model: with the backend's own hint
    its int8 row has the bench's int8 errors."""
    from hrnetseg.backends.openvino_backend import INT8_FLOAT_HINT

    result, work = accuracy_run
    bench_errors = [float(v) for v in {r[0]: r for r in table(result.stdout, "case")}[OTHER][6].split(" / ")]
    script = run_script(["scripts/bench_int8_keep_float.py", "--workdir", str(work), "--height", HEIGHT, "--width",
                         WIDTH, "--calibration_images", "2", "--keep_float", "attention", "--hints",
                         INT8_FLOAT_HINT, "--repeats", "1"], timeout=120)
    assert script.returncode == 0, script.stderr
    rows = {r[0]: r for r in table(script.stdout, "model")}
    assert rows["float export"][3] == "1 (baseline)" and rows["int8, attention float"][5] == "reused"
    errors = [float(v) for v in rows["int8, attention float"][4].split(" / ")]
    assert errors == pytest.approx(bench_errors, rel=0.05)
    refused = run_script(["scripts/bench_int8_keep_float.py", "--workdir", str(work), "--keep_float", "backbone"])
    assert_user_error(refused, "--keep_float: backbone not among attention, head, none")


def test_baseline_miou_is_the_streaming_evaluations(accuracy_run, tmp_path, capsys):
    """The same scenes written by sample_data and scored by hrnetseg.evaluate on the bench's own export."""
    from hrnetseg.evaluation.cli import main as evaluate_main

    result, work = accuracy_run
    baseline = table(result.stdout, "case")[0]
    generate(str(tmp_path / "data"), n=SCENES, height=HEIGHT, width=WIDTH, seed=0)
    (onnx,) = glob.glob(str(work / "model_tiny_ocr_{}x{}_*".format(HEIGHT, WIDTH) / "plain.onnx"))
    evaluated = run_in_process(evaluate_main, ["--datasets_path", tmp_path / "data", "--onnx", onnx,
                                               "--save_path", tmp_path / "result.json"], capsys)
    assert evaluated.returncode == 0, evaluated.stderr
    expected = json.loads((tmp_path / "result.json").read_text())
    assert expected["images"] == SCENES
    assert baseline[7] == "{:.2f}".format(100.0 * expected["mIoU"])


def test_held_out_rows_are_sample_data_scenes_through_the_preprocess_transform(tmp_path):
    generate(str(tmp_path / "data"), n=2, height=64, width=128, seed=scenes.HELD_OUT_SET)
    pngs = sorted(glob.glob(str(tmp_path / "data" / "cityscapes" / "leftImg8bit" / "val" / "*" / "*.png")))
    pairs = scenes.scene_rows(str(tmp_path / "work"), scenes.HELD_OUT_SET, 2, 64, 128, labels=True)
    made = {scenes.fingerprint(row) for row, _ in pairs}
    for png in pngs:
        row = tmp_path / "row.npy"
        np.save(str(row), convert(cv2.imread(png, cv2.IMREAD_COLOR), "float32", "BGR"))
        assert scenes.fingerprint(str(row)) in made
    assert all(np.load(labels).max() <= 255 and np.load(labels).dtype == np.uint8 for _, labels in pairs)


def test_calibration_scenes_are_disjoint_from_held_out_ones(tmp_path):
    work = str(tmp_path)
    held_out = [row for row, _ in scenes.scene_rows(work, scenes.HELD_OUT_SET, 3, 64, 128)]
    calibration = [row for row, _ in scenes.scene_rows(work, scenes.CALIBRATION_SET, 3, 64, 128)]
    scenes.check_disjoint(calibration, held_out)
    with pytest.raises(AssertionError, match="1 calibration scene"):
        scenes.check_disjoint(calibration + held_out[1:2], held_out)


def test_int8_model_checks_disjointness_before_calibrating(tmp_path, monkeypatch):
    """Calibration scenes drawn from the held-out set stop the bench before any calibration runs."""
    from hrnetseg.bench import calibration

    def must_not_run(job):
        raise AssertionError("calibrated on held-out scenes: {}".format(job))

    monkeypatch.setattr(calibration, "CALIBRATION_SET", scenes.HELD_OUT_SET)
    held_out = [row for row, _ in scenes.scene_rows(str(tmp_path), scenes.HELD_OUT_SET, 2, 64, 128)]
    with pytest.raises(AssertionError, match="also held-out scenes"):
        calibration.int8_model(must_not_run, str(tmp_path), {"folder": str(tmp_path), "onnx": "x.onnx"}, 64, 128,
                               2, None, held_out)


@pytest.mark.parametrize("flags,fragment", [
    (["--pth", None], "--miou_scenes needs trained weights"),
    (["--stages", "pre"], "add infer to --stages"),
    (["--miou_scenes", "-1"], "--miou_scenes"),
])
def test_miou_refused_without_trained_weights_or_inference(tmp_path, capsys, flags, fragment):
    argv = list(ACCURACY)
    for flag, value in zip(flags[::2], flags[1::2]):
        at = argv.index(flag)
        argv[at:at + 2] = [] if value is None else [flag, value]
    result = run_in_process(bench_main, argv + ["--workdir", tmp_path / "w"], capsys)
    assert_user_error(result, fragment)
    assert result.stdout == "" and not (tmp_path / "w").exists()
