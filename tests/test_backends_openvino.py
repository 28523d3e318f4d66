"""The OpenVINO backend (the recommended CPU setting): fp32 equals ONNX Runtime, bf16 stays within 2e-2."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hrnetseg.backends import load_backend
from hrnetseg.util.errors import UserError
from hrnetseg.util.numerics import relative_error

from helpers import RUNNER, TINY_HEIGHT, TINY_WIDTH, assert_user_error

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(3).standard_normal((3, 3, TINY_HEIGHT, TINY_WIDTH), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(tiny_onnx_path, batch):
    return load_backend("onnxruntime", str(tiny_onnx_path), device="cpu").run(batch)


@pytest.mark.parametrize("precision,bound", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_outputs_match_onnxruntime(tiny_onnx_path, batch, reference, precision, bound):
    backend = load_backend("openvino", str(tiny_onnx_path), device="cpu", precision=precision)
    assert backend.input.shape == (None, 3, TINY_HEIGHT, TINY_WIDTH) and backend.output_names == ["output1", "output2"]
    whole = backend.run(batch)
    single = backend.run(batch[1:2])            # another batch size: compiled for that shape on first use
    for out, ref in zip(whole, reference):
        assert out.dtype == np.float32 and out.shape == ref.shape
        assert relative_error(out, ref) < bound
    for out, ref in zip(single, reference):
        assert relative_error(out, ref[1:2]) < bound
    if precision == "bf16" and backend.precision == "bf16":   # the hint is honoured: bf16 is not silently fp32
        assert relative_error(whole[1], reference[1]) > 1e-5
    elif precision == "bf16":                   # a CPU without bf16: what runs is reported, fp32
        assert "BF16" not in backend.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        assert relative_error(whole[1], reference[1]) < 1e-5


def test_runner_writes_ais_bench_files(run, tmp_path, tiny_onnx_path, tiny_prep_path):
    result = run(RUNNER + ["--model", tiny_onnx_path, "--backend", "openvino", "--precision", "bf16", "--input",
                           tiny_prep_path, "--output", tmp_path, "--output_dirname", "ov", "--batchsize", "4"])
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "ov_summary.json").read_text())
    assert summary["backend"] == "openvino" and summary["device"] == "cpu"
    assert summary["precision"] == ("bf16" if "bf16 support" not in result.stderr else "fp32")
    ids = json.loads((tiny_prep_path / "manifest.json").read_text())["ids"]
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == sorted(
        "{}_{}.bin".format(i, k) for i in ids for k in (0, 1))


@pytest.mark.parametrize("device,precision,model,fragment", [
    ("cuda", "bf16", "onnx", "runs on the CPU"),
    ("cpu", "fp16", "onnx", "fp32, bf16 or int8"),
    ("cpu", "bf16", "pth", "reads the ONNX export"),
])
def test_refusals(tiny_onnx_path, tiny_pth_path, device, precision, model, fragment):
    path = str(tiny_onnx_path if model == "onnx" else tiny_pth_path)
    with pytest.raises(UserError, match=fragment):
        load_backend("openvino", path, device=device, precision=precision)


def test_cli_refusal_is_one_line(run, tmp_path, tiny_pth_path, tiny_prep_path):
    result = run(RUNNER + ["--model", tiny_pth_path, "--backend", "openvino", "--input", tiny_prep_path,
                           "--output", tmp_path])
    assert_user_error(result, "reads the ONNX export")
