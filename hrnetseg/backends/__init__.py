"""Inference backends for the local runner: one module per backend, one small interface.

    backend = load_backend("onnxruntime", "hrnet.onnx", device="cpu", precision="fp32")
    backend.input          # InputSpec(name, dtype, shape): shape (N, C, H, W) with None where the model leaves it open
    outputs = backend.run(batch)   # batch: ndarray of input.dtype, N x C x H x W -> list of float32 ndarrays

Heavy imports (onnxruntime, torch) happen inside load_backend, so importing this package is cheap.
batching.py feeds a backend in batches as ais_bench does; flags.py holds the flags that choose and feed one.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.runner.layout import device_ids
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import require_file

BACKENDS = ("onnxruntime", "torch", "openvino")
# int8: the model file is int8-quantised (python3 -m hrnetseg.quantize; graph/quantized.is_quantized), run by
# onnxruntime or openvino as it is; a quantised model runs under no other precision name, a float one not under int8
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
INT8 = "int8"
QUANTIZE_COMMAND = "python3 -m hrnetseg.quantize --onnx {} --output MODEL_int8.onnx --calibration FOLDER"
MODEL_SUFFIXES = {".onnx": "onnxruntime", ".pth": "torch", ".pt": "torch"}


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: Tuple[Optional[int], ...]    # N, C, H, W; None where open (a dynamic axis)

    def describe(self) -> str:
        return "{} {}".format(np.dtype(self.dtype).name, "x".join("?" if d is None else str(d) for d in self.shape))


class DeviceUnavailable(UserError):
    """The GPU asked for cannot be used here (no such GPU, no CUDA in this build): the runner's --device N then
    runs on the CPU, as its first line says; elsewhere it is a one-line error."""


class Backend:
    """What the runner needs: the input spec, the resolved device, run(batch) -> float32 outputs.

    copy_ms: (host-to-device, device-to-host) copy times of the last run in ms, measured apart from the compute
    where the backend copies to a GPU; (0.0, 0.0) on the CPU, where nothing is copied.
    device_note: why the device is not the one asked for (a GPU that cannot be used), else None.
    """

    name = ""
    device = "cpu"
    precision = "fp32"
    input: InputSpec = None
    output_names: Sequence[str] = ()
    copy_ms = (0.0, 0.0)
    device_note: Optional[str] = None

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        raise NotImplementedError


def backend_for_model(path: str) -> str:
    """The default backend from the model file's suffix: .onnx -> onnxruntime, .pth -> torch."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".om":
        raise UserError("{} is an Ascend offline model: run it with ais_bench (python3 -m ais_bench) on the "
                        "Atlas host; the local runner takes .onnx (onnxruntime) or .pth (torch)".format(path))
    if suffix not in MODEL_SUFFIXES:
        raise UserError("cannot tell the backend from {}: expected .onnx or .pth, or pass --backend".format(path))
    return MODEL_SUFFIXES[suffix]


def check_model_file(model: str) -> None:
    """The model is a regular file, and not an Ascend .om (whatever --backend says: no local backend runs it)."""
    if not model:
        raise UserError("--model is an empty name: give the model file")
    if os.path.splitext(model)[1].lower() == ".om":
        backend_for_model(model)   # its one-line "run it with ais_bench" refusal
    require_file(model, "model")


def parse_device(device: Optional[str]) -> Tuple[str, int]:
    """'cpu' -> ('cpu', 0); 'cuda' / 'cuda:N' / 'N' -> ('cuda', N); None or 'auto' -> ('auto', 0). A bare id N is
    ais_bench's, read by the rule that reads its lists (0..255: hrnetseg.runner.layout.device_ids)."""
    text = (device or "auto").strip().lower()
    if text in ("auto", "cpu"):
        return text, 0
    if re.fullmatch(r"[0-9]+", text):
        return "cuda", device_ids(text)[0]
    match = re.fullmatch(r"(?:cuda:?|gpu:?)?([0-9]+)|cuda|gpu", text)   # ASCII digits: \d takes other scripts' too
    if not match:
        raise UserError("--device must be cpu, cuda, cuda:N or a GPU number N, not {!r}".format(device))
    return "cuda", int(match.group(1) or 0)


def visible_gpu_count(kind: str) -> int:
    """How many GPUs the backend could use here (cheap: nothing is loaded onto one); 0 for the CPU-only
    openvino backend, an ONNX Runtime without the CUDA provider, or a machine without NVIDIA GPUs."""
    if kind == "openvino":
        return 0
    if kind == "torch":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        present = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        present = 0
    if visible is not None:
        return min(present, len([part for part in visible.split(",") if part.strip()]))
    return present


def load_backend(kind: str, model: str, device: Optional[str] = None, precision: str = "fp32",
                 preset: str = "w48_ocr", input_dtype: str = "float32", compile: bool = False,
                 cpu_fallback: bool = False, threads: Optional[int] = None) -> Backend:
    """Open `model` with the named backend on `device` (auto: the first GPU when usable, else the CPU).

    input_dtype matters for the torch backend only (an ONNX file fixes its own input type): uint8 wraps
    the checkpoint's model in the in-graph normalization, as the uint8 export does. compile: torch.compile
    (torch backend only). cpu_fallback: a GPU that cannot be used (DeviceUnavailable) gives the CPU instead,
    with the reason in backend.device_note (ais_bench's --device N, off an Ascend host). threads: CPU threads.
    """
    try:
        return _open_backend(kind, model, device, precision, preset, input_dtype, compile, threads)
    except DeviceUnavailable as exc:
        if not cpu_fallback:
            raise UserError("--device {}: {}".format(device, exc)) from None
        backend = _open_backend(kind, model, "cpu", precision, preset, input_dtype, compile, threads)
        backend.device_note = "--device {}: {}; running on the CPU".format(device, exc)
        return backend


def check_precision_fits_model(kind: str, model: str, precision: str) -> None:
    """--precision int8 for an int8-quantised ONNX model, and only for one (graph/quantized.is_quantized): the
    precision word in summaries and records then says what ran. The torch backend runs no int8."""
    if kind == "torch":
        if precision == INT8:
            raise UserError("the torch backend runs no int8 model: quantise the ONNX export ({}) and run it with "
                            "--backend openvino or onnxruntime".format(QUANTIZE_COMMAND.format("hrnet.onnx")))
        return
    if kind not in ("onnxruntime", "openvino"):
        return
    from hrnetseg.graph.quantized import is_quantized

    quantized = is_quantized(model)
    if quantized and precision != INT8:
        raise UserError("{} is an int8-quantised model: run it with --precision int8, not {}".format(model, precision))
    if not quantized and precision == INT8:
        raise UserError("{} is a float model; --precision int8 runs an int8-quantised one: quantise it first: {}"
                        .format(model, QUANTIZE_COMMAND.format(model)))


def _open_backend(kind: str, model: str, device: Optional[str], precision: str, preset: str, input_dtype: str,
                  compile: bool, threads: Optional[int]) -> Backend:
    if precision not in PRECISIONS:
        raise UserError("--precision must be one of {}".format(", ".join(PRECISIONS)))
    require_file(model, "model")   # a FIFO, folder or link loop named as such, not "not found"
    if kind in ("onnxruntime", "openvino") and os.path.getsize(model) == 0:
        raise UserError("{} is not an ONNX model (an empty file)".format(model))   # as the ONNX tools say it
    check_precision_fits_model(kind, model, precision)
    device_kind, index = parse_device(device)
    if compile and kind != "torch":
        raise UserError("--compile applies to the torch backend only")
    if kind == "onnxruntime":
        from hrnetseg.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device_kind, index, precision, threads)
    if kind == "torch":
        from hrnetseg.backends.torch_backend import TorchBackend

        return TorchBackend(model, device_kind, index, precision, preset, input_dtype, compile=compile,
                            threads=threads)
    if kind == "openvino":
        from hrnetseg.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(model, device_kind, index, precision, threads)
    raise UserError("unknown backend {!r}; choose one of {}".format(kind, ", ".join(BACKENDS)))
