"""HRNet_pth2onnx.py --dynamic_hw: height and width as dynamic axes, checked at a second size; ONNX Runtime and
OpenVINO then run any size as PyTorch does."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch

import hrnetseg.model.export as export
from helpers import REPO, TINY_PRESET
from hrnetseg.util.errors import UserError
from hrnetseg.model.network import build_model, init_random_weights
from hrnetseg.util.numerics import relative_error


def pth2onnx_main(argv):
    """HRNet_pth2onnx.py's main() in this process (torch is imported already; a subprocess would pay it again)."""
    spec = importlib.util.spec_from_file_location("HRNet_pth2onnx", str(REPO / "HRNet_pth2onnx.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


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
