"""The bench's int8 cases: which backends take them, and --int8_onnx (an int8-quantised ONNX at the bench's size)
refused in one line before any work. The int8 case end to end: tests/test_bench_accuracy.py (one run for both)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from hrnetseg.bench.__main__ import main as bench_main
from hrnetseg.bench.cases import parse_case, parse_cases
from hrnetseg.util.errors import UserError

from helpers import assert_user_error, make_special, run_in_process

INT8 = ["--stages", "infer", "--preset", "tiny_ocr", "--height", "64", "--width", "128",
        "--cases", "onnxruntime:fp32:1,openvino:int8:1", "--no_record"]


def small_onnx(path, height: int, width: int, quantized: bool = True) -> str:
    """A one-node-pair QDQ model (int8-quantised by structure), or an Identity (float), with an
    N x 3 x height x width input."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("zero", TensorProto.INT8, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])] if quantized else \
        [helper.make_node("Identity", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, height, width])], [scale, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def test_int8_cases_parse_on_the_onnx_backends_only():
    cases = parse_cases("onnxruntime:fp32:1,openvino:int8:1,onnxruntime:int8:2")
    assert [(c.backend, c.precision, c.batch) for c in cases] == [
        ("onnxruntime", "fp32", 1), ("openvino", "int8", 1), ("onnxruntime", "int8", 2)]
    assert cases[1].label == "openvino int8 bs1" and parse_case(cases[1].spec) == cases[1]
    with pytest.raises(UserError, match="int8 runs a quantised ONNX model, on onnxruntime or openvino .not torch"):
        parse_case("torch:int8:1")


def test_int8_onnx_without_an_int8_case_is_refused(tmp_path, capsys):
    argv = INT8[:-3] + ["--cases", "openvino:bf16:1", "--no_record",
                        "--int8_onnx", small_onnx(tmp_path / "q.onnx", 64, 128)]
    result = run_in_process(bench_main, argv + ["--workdir", tmp_path / "w"], capsys)
    assert_user_error(result, "--int8_onnx is for int8 cases")
    assert not (tmp_path / "w").exists()


def test_int8_onnx_refusals_one_line_before_any_work(tmp_path, capsys):
    plain = small_onnx(tmp_path / "plain.onnx", 64, 128, quantized=False)
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "cut.onnx").write_bytes(open(plain, "rb").read()[:40])
    make_special(tmp_path / "fifo.onnx", "FIFO")
    make_special(tmp_path / "loop.onnx", "symbolic link loop")
    (tmp_path / "odd -name\n.onnx").write_bytes(open(plain, "rb").read())
    cases = [(plain, "is not int8-quantised (no quantisation operators)"),
             (str(tmp_path / "odd -name\n.onnx"), "is not int8-quantised"),
             (str(tmp_path / "loop.onnx"), "loop"),
             (small_onnx(tmp_path / "q.onnx", 128, 256), "takes input ?x3x128x256, not N x 3 x 64 x 128"),
             (str(tmp_path / "empty.onnx"), "is not an ONNX model (an empty file)"),
             (str(tmp_path / "cut.onnx"), "is not an ONNX model"),
             (str(tmp_path / "fifo.onnx"), "FIFO"),
             (str(tmp_path), "is a folder"),
             (str(tmp_path / "missing.onnx"), "not found")]
    for path, fragment in cases:
        result = run_in_process(bench_main, INT8 + ["--int8_onnx", path, "--workdir", tmp_path / "w"], capsys)
        assert_user_error(result, fragment)
        assert result.stdout == "" and not (tmp_path / "w").exists()
    refused = run_in_process(bench_main, INT8 + ["--calibration_images", "0"], capsys)
    assert_user_error(refused, "--calibration_images")


def test_calibration_size_quantises_an_open_size_export_of_the_same_weights(tmp_path, tiny_pth_path, tiny_onnx_path):
    """--calibration_size 32x64 for a 64x128 bench: the calibration job (run here, not in a child) exports the same
    weights with --dynamic_hw and calibrates it on 32x64 scenes; the model is named by that size (the plain one is
    never reused for it), runs at the bench's size, and the report says how it was made."""
    from hrnetseg.bench.calibration import calibrate_job, check_int8_onnx, int8_model
    from hrnetseg.bench.report import int8_sentence
    from hrnetseg.bench.scenes import CALIBRATION_SET, HELD_OUT_SET, scene_rows

    work = str(tmp_path / "w")
    model = {"folder": str(tmp_path), "onnx": str(tiny_onnx_path), "pth": str(tiny_pth_path)}
    held_out = [row for row, _ in scene_rows(work, HELD_OUT_SET, 1, 64, 128)]
    jobs = []

    def run(job):
        jobs.append(job)
        return calibrate_job(job)

    made = int8_model(run, work, model, 64, 128, 2, None, held_out, "tiny_ocr", (32, 64))
    assert made["how"] == "calibrated" and made["path"].endswith("int8_attention_float_calibrated_on_2_at_32x64.onnx")
    assert jobs[0]["dynamic"].endswith("dynamic_hw.onnx") and all(np.load(r).shape == (3, 32, 64)
                                                                   for r in jobs[0]["rows"])
    check_int8_onnx(made["path"], 64, 128)                       # open height and width: it takes the bench's size
    sentence = int8_sentence({"int8": made, "calibration_images": 2, "calibration_set": CALIBRATION_SET,
                              "calibration_size": (32, 64)}, 64, 128)
    assert "a --dynamic_hw export of the same weights (--calibration_size) quantised" in sentence
    assert "2 calibration scene(s) of `sample_data --seed {}` at 32x64".format(CALIBRATION_SET) in sentence
    assert int8_model(run, work, model, 64, 128, 2, None, held_out, "tiny_ocr", (32, 64))["how"] == "reused"
    assert len(jobs) == 1


@pytest.mark.parametrize("extra", [["--cases", "openvino:bf16:1"], ["--int8_onnx", "q.onnx"]])
def test_calibration_size_without_an_own_calibration_is_refused(tmp_path, capsys, extra):
    if "--int8_onnx" in extra:
        extra = ["--int8_onnx", small_onnx(tmp_path / "q.onnx", 64, 128)]
    argv = INT8 + ["--calibration_size", "32x64", "--workdir", str(tmp_path / "w")] + extra
    result = run_in_process(bench_main, argv, capsys)
    assert_user_error(result, "--calibration_size is for the int8 cases' own calibration")
    assert not (tmp_path / "w").exists()
