"""The export's other forms: --dynamic_hw (height and width as dynamic axes, checked at a second size; ONNX Runtime
and OpenVINO then run any size as PyTorch does) and --input_format uint8 (raw RGB uint8 NCHW in, normalization
inside the graph, the float32 model's outputs)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import hrnetseg.model.export as export
from hrnetseg.data.cityscapes import MEAN, STD
from hrnetseg.model.network import build_model, init_random_weights
from hrnetseg.util.errors import UserError
from hrnetseg.util.numerics import relative_error

from helpers import TINY_HEIGHT, TINY_PRESET, TINY_WIDTH, load_script, run_in_process

# --- --dynamic_hw --------------------------------------------------------------------------------------------

def pth2onnx_main(argv):
    """HRNet_pth2onnx.py's main() in this process (torch is imported already; a subprocess would pay it again)."""
    return load_script("HRNet_pth2onnx.py").main(argv)


def test_dynamic_hw_export_runs_any_size_in_onnx_runtime_and_openvino(tmp_path, capsys):
    from hrnetseg.backends import load_backend

    path = tmp_path / "any_size.onnx"
    assert pth2onnx_main(["--random_weights", "0", "--preset", TINY_PRESET, "--height", "40", "--width", "60",
                          "--dynamic_hw", "--save_path", str(path)]) == 0
    out = capsys.readouterr().out
    assert "input image batchx3xheightxwidth float32" in out
    for size in ("40x60", "33x45"):   # the traced size and export.other_size's odd one
        assert "output2 at {}: max abs error".format(size) in out
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]

    model = init_random_weights(build_model(TINY_PRESET), 0).eval()
    backends = [load_backend(kind, str(path), device="cpu") for kind in ("onnxruntime", "openvino")]
    rng = np.random.default_rng(1)
    for height, width in ((72, 130), (97, 33)):
        image = rng.standard_normal((2, 3, height, width), dtype=np.float32)
        with torch.no_grad():
            want = [t.numpy() for t in model(torch.from_numpy(image))]
        for backend in backends[:1] if height == 72 else backends:   # OpenVINO compiles per size: one is enough
            assert backend.input.shape == (None, 3, None, None)
            for got, expected in zip(backend.run(image), want):
                assert got.shape == expected.shape and relative_error(got, expected) < 1e-4, (backend.name, height)


def test_a_graph_wrong_at_the_second_size_is_not_written(tmp_path, monkeypatch):
    checked = []

    def verify(model, path, image, expected=None):
        checked.append(tuple(image.shape[2:]))
        return {"output1": (0.0, 0.0), "output2": (0.0, 0.0 if len(checked) == 1 else 0.3)}

    monkeypatch.setattr(export, "verify_onnx", verify)
    # no real tracing: what is under test is what happens after it
    monkeypatch.setattr(torch.onnx, "export", lambda model, args, path, **kwargs: open(path, "wb").close())
    with pytest.raises(UserError) as info:
        export.export_onnx(init_random_weights(build_model(TINY_PRESET), 0).eval(), str(tmp_path / "m.onnx"),
                           40, 60, dynamic_hw=True)
    assert checked == [(40, 60), (33, 45)]
    assert info.value.exit_code == 1
    assert "at 33x45 (the export's open height and width)" in str(info.value) and "not writing" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# --- --input_format uint8 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uint8_onnx(tmp_path_factory, tiny_pth_path):
    """The export script's main() in this process (torch is loaded here already; test_model_export.py runs
    its command line)."""
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
    """The runner's main() under run_cli in this process (test_runner_cli.py runs its command line)."""
    from hrnetseg.data.preprocess import preprocess
    from hrnetseg.runner import cli as infer

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
