"""Loading and running the backends (hrnetseg.backends): the torch backend's fast CPU path against the eager model,
a GPU number that cannot be used, an empty model file; batching's refusal of a batch too large for memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hrnetseg.backends import batching
from hrnetseg.util.errors import UserError
from hrnetseg.util.numerics import relative_error

from helpers import TINY_HEIGHT, TINY_PRESET, TINY_WIDTH


def test_torch_backend_folds_batchnorm_and_runs_bf16_weights_on_the_cpu(tiny_pth_path):
    """The fast CPU path (folded BN, bf16 weights, channels_last) against the plain fp32 eager model."""
    from hrnetseg.backends import load_backend
    from hrnetseg.model.export import load_model

    batch = np.random.default_rng(1).standard_normal((2, 3, TINY_HEIGHT, TINY_WIDTH), dtype=np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in load_model(TINY_PRESET, pth=str(tiny_pth_path))(torch.from_numpy(batch))]
    fp32 = load_backend("torch", str(tiny_pth_path), device="cpu", precision="fp32", preset=TINY_PRESET)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fp32.model.modules())
    for got, ref in zip(fp32.run(batch), want):
        assert relative_error(got, ref) < 1e-5
    bf16 = load_backend("torch", str(tiny_pth_path), device="cpu", precision="bf16", preset=TINY_PRESET)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    for got, ref in zip(bf16.run(batch), want):
        assert got.dtype == np.float32 and 1e-6 < relative_error(got, ref) < 2e-2
    uint8 = load_backend("torch", str(tiny_pth_path), device="cpu", precision="bf16", preset=TINY_PRESET,
                         input_dtype="uint8")
    pixels = np.random.default_rng(2).integers(0, 256, (1, 3, TINY_HEIGHT, TINY_WIDTH), dtype=np.uint8)
    assert all(np.isfinite(out).all() for out in uint8.run(pixels))


def test_an_unusable_gpu_number_falls_back_to_the_cpu_and_says_why(tiny_onnx_path):
    import onnxruntime

    from hrnetseg.backends import load_backend

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider")
    backend = load_backend("onnxruntime", str(tiny_onnx_path), device="1", cpu_fallback=True, threads=1)
    assert backend.device == "cpu" and backend.device_note.startswith("--device 1: this ONNX Runtime has no CUDA")
    openvino = load_backend("openvino", str(tiny_onnx_path), device="0", cpu_fallback=True)
    assert openvino.device == "cpu" and "the openvino backend runs on the CPU" in openvino.device_note
    assert load_backend("onnxruntime", str(tiny_onnx_path), device="cpu").device_note is None
    with pytest.raises(UserError, match="^--device cuda: this ONNX Runtime has no CUDA provider"):
        load_backend("onnxruntime", str(tiny_onnx_path), device="cuda")   # evaluate and `--device cuda`: an error


def test_an_empty_onnx_file_is_not_an_onnx_model_for_the_runner_backends(tmp_path):
    from hrnetseg.backends import load_backend

    (tmp_path / "empty.onnx").write_bytes(b"")
    for kind in ("onnxruntime", "openvino"):
        with pytest.raises(UserError, match="empty.onnx is not an ONNX model \\(an empty file\\)"):
            load_backend(kind, str(tmp_path / "empty.onnx"), device="cpu")


def test_a_batch_too_large_for_memory_is_one_line():
    with pytest.raises(UserError, match=r"not enough memory for a batch of 10000000000000 x 3x{}x{} float32 "
                                        r"\(.* GB\): choose a smaller --batchsize".format(TINY_HEIGHT, TINY_WIDTH)):
        batching.pad_batch([], 10 ** 13, (3, TINY_HEIGHT, TINY_WIDTH), np.float32)


def test_a_device_number_is_ascii_digits():
    """re's \\d takes an Arabic-Indic one, which int() reads as 1: --device cuda:\u0661 ran on GPU 1."""
    from hrnetseg.backends import parse_device

    assert parse_device("cuda:1") == ("cuda", 1) and parse_device("2") == ("cuda", 2)
    for device in ("cuda:\u0661", "\u0661", "gpu\u00b2"):
        with pytest.raises(UserError, match="--device must be cpu, cuda, cuda:N or a GPU number N"):
            parse_device(device)
