"""--input_format uint8: raw RGB uint8 NCHW in, normalization inside the graph, same outputs as the float32 model."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import TINY_HEIGHT, TINY_PRESET, TINY_WIDTH, run_in_process
from hrnetseg.data.cityscapes import MEAN, STD
from hrnetseg.util.numerics import relative_error


@pytest.fixture(scope="module")
def uint8_onnx(tmp_path_factory, tiny_pth_path):
    """The export script's main() in this process (torch is loaded here already; test_export.py runs its
    command line)."""
    import HRNet_pth2onnx

    path = tmp_path_factory.mktemp("uint8") / "hrnet_uint8.onnx"
    assert HRNet_pth2onnx.main(["--pth", str(tiny_pth_path), "--preset", TINY_PRESET, "--height", str(TINY_HEIGHT),
                                "--width", str(TINY_WIDTH), "--input_format", "uint8", "--save_path", str(path)]) == 0
    return path


def normalize(raw: np.ndarray) -> np.ndarray:
    mean = np.array(MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(STD, np.float32).reshape(1, 3, 1, 1)
    return (raw.astype(np.float32) / np.float32(255.0) - mean) / std


def test_uint8_export_matches_float32_model(uint8_onnx, tiny_onnx_path):
    graph = onnx.load(str(uint8_onnx)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    raw = np.random.default_rng(0).integers(0, 256, (2, 3, TINY_HEIGHT, TINY_WIDTH), dtype=np.uint8)
    got = ort.InferenceSession(str(uint8_onnx), providers=["CPUExecutionProvider"]).run(None, {"image": raw})
    want = ort.InferenceSession(str(tiny_onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"image": normalize(raw)})
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == w.shape
        assert relative_error(g, w) <= 1e-5


def test_uint8_bins_through_the_runner_match_float32_bins(tmp_path, uint8_onnx, tiny_onnx_path, tiny_data_root,
                                                          tiny_prep_path, capsys):
    """The runner's main() under run_cli in this process (test_infer.py runs its command line)."""
    from hrnetseg.runner import cli as infer
    from hrnetseg.data.preprocess import preprocess

    def run(args):
        return run_in_process(infer.main, args, capsys)

    prep = tmp_path / "prep_uint8"
    preprocess(str(tiny_data_root), str(prep), dtype="uint8", workers=1, log=lambda message: None)
    for model, inputs, name in ((uint8_onnx, prep, "u8"), (tiny_onnx_path, tiny_prep_path, "f32")):
        result = run(["--model", model, "--input", inputs, "--output", tmp_path, "--output_dirname", name,
                      "--batchsize", "4"])
        assert result.returncode == 0, result.stderr
    # The float32 model refuses the uint8 bins, and the other way round: never reinterpreted.
    assert run(["--model", tiny_onnx_path, "--input", prep]).returncode == 2
    assert run(["--model", uint8_onnx, "--input", tiny_prep_path]).returncode == 2
    for sample_id in json.loads((prep / "manifest.json").read_text())["ids"]:
        for k in (0, 1):
            u8 = np.fromfile(str(tmp_path / "u8" / "{}_{}.bin".format(sample_id, k)), np.float32)
            f32 = np.fromfile(str(tmp_path / "f32" / "{}_{}.bin".format(sample_id, k)), np.float32)
            assert relative_error(u8, f32) <= 1e-5
