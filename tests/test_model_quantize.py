"""hrnetseg.model.quantize and python3 -m hrnetseg.quantize: NNCF int8 quantisation of the ONNX export (a QDQ model,
the OCR attention kept float by structure), the mIoU-budgeted mode, and the refusals before any work."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from hrnetseg.graph.quantized import is_quantized
from hrnetseg.model import quantize_cli
from hrnetseg.model.calibration import read_bin_images, read_validation_pairs
from hrnetseg.model.quantize import (
    float_node_names,
    head_node_names,
    quantize_onnx,
    quantize_onnx_with_accuracy_control,
    quantized_op_counts,
)
from hrnetseg.util.errors import UserError

from helpers import REPO, TINY_PRESET, assert_user_error, run_in_process, run_script

pytest.importorskip("nncf")   # the quantisation itself (the modules above import it only when one runs)

REFERENCE_PTH = REPO / "models" / "reference_tiny_ocr.pth"
CONTROL_HEIGHT, CONTROL_WIDTH, CONTROL_IMAGES = 128, 256, 4
MAX_DROP = 2.0   # in mIoU points; the restorer's ranking costs the same whatever the budget


def _ort_main_output(path, images):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.stack(images)})[1]


def _dequantized_readers(model) -> set:
    """Names of the nodes that read a DequantizeLinear output (run on int8 data)."""
    made = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return {node.name for node in model.graph.node if any(name in made for name in node.input)}


def _head_ops(onnx_path) -> dict:
    graph = onnx.load(str(onnx_path)).graph
    head = set(head_node_names(graph))
    return {node.name: node.op_type for node in graph.node if node.name in head}


def test_quantize_writes_a_qdq_model_with_the_attention_float(tiny_int8_onnx_path, tiny_onnx_path, tiny_prep_path):
    model = onnx.load(str(tiny_int8_onnx_path))
    assert is_quantized(str(tiny_int8_onnx_path))
    counts = quantized_op_counts(model)
    assert counts.get("Conv", 0) > 10 and "Shape" not in counts
    head = _head_ops(tiny_onnx_path)
    int8_readers = _dequantized_readers(model)
    # every convolution of the head reads int8 data, none of its other operations (the attention's MatMuls)
    assert {name for name, op in head.items() if op == "Conv"} <= int8_readers
    assert "MatMul" in head.values() and not {name for name, op in head.items() if op != "Conv"} & int8_readers
    assert int8_readers - set(head)                            # the backbone does
    images = read_bin_images(str(tiny_prep_path), 5)
    want, got = _ort_main_output(tiny_onnx_path, images), _ort_main_output(tiny_int8_onnx_path, images)
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 0 < error < 0.2, error   # int8 changes the numbers, but not beyond recognition


@pytest.mark.parametrize("keep_float", ["head", "none"])
def test_keep_float_head_or_none_reports_what_it_quantised(tmp_path, tiny_onnx_path, tiny_prep_path, keep_float):
    out = tmp_path / "int8.onnx"
    report = quantize_onnx(str(tiny_onnx_path), str(out), read_bin_images(str(tiny_prep_path), 2),
                           keep_float=keep_float)
    head = _head_ops(tiny_onnx_path)
    assert report["calibration_images"] == 2 and report["opset"] == 13 and report["kept_float"] == keep_float
    # the opset 13 conversion adds nodes of its own to the head
    assert report["ignored_nodes"] >= len(head) if keep_float == "head" else report["ignored_nodes"] == 0
    model = onnx.load(str(out))
    read_int8 = set(head) & _dequantized_readers(model)
    if keep_float == "head":
        assert not read_int8                                    # nothing from the 4-way Concat on reads int8 data
    else:
        assert {head[name] for name in read_int8} - {"Conv"}   # the attention's data paths too
    assert report["quantized_ops"] == quantized_op_counts(model)
    with pytest.raises(ValueError, match="keep_float"):
        float_node_names(onnx.load(str(tiny_onnx_path)).graph, "backbone")


@pytest.fixture(scope="module")
def reference_control(tmp_path_factory):
    """The committed reference model exported at 128x256 and CONTROL_IMAGES labelled synthetic scenes."""
    from hrnetseg.data.sample_scenes import generate
    from hrnetseg.model.export import export_onnx, load_model

    folder = tmp_path_factory.mktemp("control")
    model = folder / "reference.onnx"
    export_onnx(load_model("tiny_ocr", pth=str(REFERENCE_PTH)), str(model), CONTROL_HEIGHT, CONTROL_WIDTH, batch=1)
    generate(str(folder / "data"), n=CONTROL_IMAGES, height=CONTROL_HEIGHT, width=CONTROL_WIDTH, seed=3)
    return model, folder / "data"


def test_accuracy_control_keeps_the_drop_and_reports_what_evaluate_measures(tmp_path, reference_control):
    from hrnetseg.evaluation import cli as evaluate
    from hrnetseg.util.structured import read_json

    model, data = reference_control
    pairs = read_validation_pairs(str(data), CONTROL_IMAGES, size=(CONTROL_HEIGHT, CONTROL_WIDTH))
    out = tmp_path / "int8.onnx"
    report = quantize_onnx_with_accuracy_control(str(model), str(out), [pairs[0][0], pairs[2][0]], pairs,
                                                 max_drop_points=MAX_DROP)
    # the first int8 model misses the budget here (about 3 points down): NNCF ranks and reverts operations
    assert report["validation_images"] == CONTROL_IMAGES and report["reverted_ops"] > 0
    assert report["fp32_miou"] > 30   # the reference model segments the scenes: a drop means something
    assert report["drop_points"] <= MAX_DROP
    assert report["drop_points"] == pytest.approx(report["fp32_miou"] - report["int8_miou"])
    for path, key in ((model, "fp32_miou"), (out, "int8_miou")):
        result = tmp_path / (key + ".json")
        argv = ["--datasets_path", str(data), "--onnx", str(path), "--backend", "onnxruntime", "--save_path",
                str(result)] + (["--precision", "int8"] if key == "int8_miou" else [])
        assert evaluate.main(argv) == 0
        assert 100.0 * read_json(str(result), "result")["mIoU"] == pytest.approx(report[key], abs=1e-9)


# --- refusals, before any work -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    ([], "no calibration images"),
    ([np.zeros((3, 64, 128), np.uint8)], "is uint8 but the model takes float32"),
    ([np.zeros((3, 32, 128), np.float32)], "is 3x32x128 but the model takes 3x64x128"),
    ([np.zeros((2, 3, 64, 128), np.float32)], "expected C x H x W"),
    ([np.full((3, 64, 128), np.nan, np.float32)], "NaN or inf"),
])
def test_hostile_calibration_images_are_refused_and_nothing_is_written(tmp_path, tiny_onnx_path, bad, message):
    out = tmp_path / "int8.onnx"
    with pytest.raises(UserError, match=message):
        quantize_onnx(str(tiny_onnx_path), str(out), bad)
    assert os.listdir(str(tmp_path)) == []


def test_validation_labels_of_another_size_are_refused(tmp_path, tiny_onnx_path):
    image = np.zeros((3, 64, 128), np.float32)
    with pytest.raises(UserError, match="validation label 0 is uint8 64x64"):
        quantize_onnx_with_accuracy_control(str(tiny_onnx_path), str(tmp_path / "o.onnx"), [image],
                                            [(image, np.zeros((64, 64), np.uint8))])


def test_quantized_model_output_onto_input_and_special_outputs_are_refused(tmp_path, tiny_int8_onnx_path,
                                                                           tiny_copy):
    image = [np.zeros((3, 64, 128), np.float32)]
    with pytest.raises(UserError, match="already int8-quantised"):
        quantize_onnx(str(tiny_int8_onnx_path), str(tmp_path / "again.onnx"), image)
    with pytest.raises(UserError, match="the float model"):
        quantize_onnx(str(tiny_copy), str(tiny_copy), image)
    with pytest.raises(UserError, match="it is a folder"):
        quantize_onnx(str(tiny_copy), str(tmp_path), image)
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(str(fifo))
    with pytest.raises(UserError, match="regular file"):
        quantize_onnx(str(tiny_copy), str(fifo), image)


def test_the_command_quantises_a_preprocess_folder_and_summarises(tmp_path, capsys, tiny_onnx_path, tiny_prep_path):
    out = tmp_path / "int8.onnx"
    result = run_in_process(quantize_cli.main, ["--onnx", tiny_onnx_path, "--output", out, "--calibration",
                                                tiny_prep_path, "--count", 2], capsys)
    assert result.returncode == 0, result.stderr
    assert "calibration: 2 image(s)" in result.stdout and "Conv" in result.stdout
    assert "kept float: the OCR head's object attention" in result.stdout and is_quantized(str(out))
    parse = quantize_cli.build_parser().parse_args
    base = ["--onnx", "m.onnx", "--output", "o.onnx", "--calibration", "c"]
    assert parse(base).keep_float == "attention" and parse(base + ["--keep_float", "head"]).keep_float == "head"
    assert parse(base + ["--quantize_head"]).keep_float == "none"     # the old flag


def test_an_open_size_export_calibrated_small_runs_at_full_size(tmp_path, capsys, tiny_pth_path, tiny_prep_path):
    """--calibration_size: a --dynamic_hw export quantised on images shrunk to 32x64 (what keeps NNCF's statistics
    pass in memory for W48 at full size), then run at the bins' 64x128; a fixed-size export refuses the flag."""
    import onnxruntime as ort

    from hrnetseg.model.export import export_onnx, load_model

    dynamic = tmp_path / "dynamic.onnx"
    export_onnx(load_model(TINY_PRESET, pth=str(tiny_pth_path)), str(dynamic), 64, 128, batch=None, dynamic_hw=True)
    out = tmp_path / "int8.onnx"
    result = run_in_process(quantize_cli.main, ["--onnx", dynamic, "--output", out, "--calibration", tiny_prep_path,
                                                "--count", 2, "--calibration_size", "32x64"], capsys)
    assert result.returncode == 0, result.stderr
    assert "at 32x64" in result.stdout and "calibration: 2 image(s) of 32x64 from" in result.stdout
    image = read_bin_images(str(tiny_prep_path), 1)[0][None]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    main = session.run(None, {session.get_inputs()[0].name: image})[1]
    assert main.shape == (1, 19, 16, 32) and np.isfinite(main).all()


@pytest.mark.parametrize("size, message", [
    ("32x64", "takes 64x128 only; export it with --dynamic_hw"),
    ("512", "expected HEIGHTxWIDTH in pixels"),
    ("4x8", "both at least 8"),
])
def test_calibration_size_refusals(tmp_path, capsys, tiny_onnx_path, tiny_prep_path, size, message):
    result = run_in_process(quantize_cli.main, ["--onnx", tiny_onnx_path, "--output", tmp_path / "o.onnx",
                                                "--calibration", tiny_prep_path, "--calibration_size", size], capsys)
    assert_user_error(result, message)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("change, message", [
    ({"--onnx": "model.pth"}, "is a checkpoint: export it first"),
    ({"--onnx": "hrnet_bs1.om"}, "Ascend offline model"),
    ({"--accuracy_control": None}, "needs --validation"),
    ({"--count": "301"}, "--count must be 1 to 300"),
])
def test_the_command_refuses_bad_flags_in_one_line(tmp_path, capsys, tiny_onnx_path, tiny_prep_path, change,
                                                   message):
    flags = {"--onnx": tiny_onnx_path, "--output": tmp_path / "o.onnx", "--calibration": tiny_prep_path, **change}
    argv = [str(item) for flag, value in flags.items() for item in ([flag] if value is None else [flag, value])]
    assert_user_error(run_in_process(quantize_cli.main, argv, capsys), message)
    assert not (tmp_path / "o.onnx").exists()


def test_the_console_command_refuses_a_quantised_model(tmp_path, tiny_int8_onnx_path, tiny_prep_path):
    result = run_script(["-m", "hrnetseg.quantize", "--onnx", str(tiny_int8_onnx_path), "--output",
                         str(tmp_path / "o.onnx"), "--calibration", str(tiny_prep_path)])
    assert_user_error(result, "already int8-quantised")
