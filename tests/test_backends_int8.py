"""--precision int8: an int8-quantised ONNX model runs in onnxruntime and openvino under that name and no other,
a float model never under it, torch not at all; the word reaches the runner's summary, evaluate's lines and
predict's record."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hrnetseg.backends import load_backend
from hrnetseg.util.errors import UserError
from hrnetseg.util.numerics import relative_error

from helpers import TINY_HEIGHT, TINY_PRESET, TINY_WIDTH, assert_user_error, run_in_process, run_infer

pytest.importorskip("nncf")   # tiny_int8_onnx_path quantises with it


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_an_int8_model_runs_as_int8_near_its_float_model(kind, tiny_int8_onnx_path, tiny_onnx_path):
    batch = np.random.RandomState(0).randn(2, 3, TINY_HEIGHT, TINY_WIDTH).astype(np.float32)
    int8 = load_backend(kind, str(tiny_int8_onnx_path), device="cpu", precision="int8")
    assert int8.precision == "int8" and int8.input.dtype == np.float32
    want = load_backend("onnxruntime", str(tiny_onnx_path), device="cpu").run(batch)
    got = int8.run(batch)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert 0 < relative_error(got[1], want[1]) < 0.3   # quantised: close, not equal


@pytest.mark.parametrize("kind, precision", [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")])
def test_an_int8_model_is_refused_under_another_precision(kind, precision, tmp_path, tiny_int8_onnx_path):
    model = tmp_path / "plain_name.onnx"   # the graph tells, not the name
    shutil.copy(str(tiny_int8_onnx_path), str(model))
    with pytest.raises(UserError, match="int8-quantised model: run it with --precision int8, not " + precision):
        load_backend(kind, str(model), device="cpu", precision=precision)


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_a_float_model_is_refused_under_int8(kind, tmp_path, tiny_onnx_path):
    model = tmp_path / "hrnet_int8.onnx"
    shutil.copy(str(tiny_onnx_path), str(model))
    with pytest.raises(UserError, match="is a float model.*quantise it first: python3 -m hrnetseg.quantize"):
        load_backend(kind, str(model), device="cpu", precision="int8")


def test_torch_refuses_int8(tiny_pth_path):
    with pytest.raises(UserError, match="the torch backend runs no int8 model"):
        load_backend("torch", str(tiny_pth_path), device="cpu", precision="int8", preset=TINY_PRESET)


def test_the_runner_records_int8_in_its_summary(tmp_path, tiny_int8_onnx_path, tiny_prep_path):
    out = tmp_path / "res"
    assert run_infer(tiny_int8_onnx_path, tiny_prep_path, out, "--backend", "openvino", "--precision", "int8",
                     "--device", "cpu") == 0
    summary = json.loads((out / "bs_summary.json").read_text())
    assert summary["precision"] == "int8" and summary["backend"] == "openvino"


def test_the_runner_command_refuses_an_int8_model_as_fp32(tmp_path, tiny_int8_onnx_path, tiny_prep_path, capsys):
    from hrnetseg.runner import cli as infer

    argv = ["--model", tiny_int8_onnx_path, "--input", tiny_prep_path, "--output", tmp_path / "res", "--device", "cpu"]
    assert_user_error(run_in_process(infer.main, argv, capsys), "run it with --precision int8")


def test_evaluate_and_predict_run_int8(tmp_path, tiny_int8_onnx_path, tiny_data_root, capsys):
    from hrnetseg.evaluation import cli as evaluate
    from hrnetseg.prediction import cli as predict

    assert evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_int8_onnx_path), "--backend",
                          "openvino", "--precision", "int8"]) == 0
    assert "openvino on cpu (int8)" in capsys.readouterr().out
    photo = next(iter(sorted((tiny_data_root / "cityscapes" / "leftImg8bit").rglob("*.png"))))
    out = tmp_path / "pred"
    assert predict.main(["--onnx", str(tiny_int8_onnx_path), "--input", str(photo), "--output", str(out),
                         "--precision", "int8", "--save", "trainIds", "--base_size", str(TINY_WIDTH)]) == 0
    record = json.loads((out / "predict_record.json").read_text())
    assert [settings["precision"] for settings in record["settings"].values()] == ["int8"]
