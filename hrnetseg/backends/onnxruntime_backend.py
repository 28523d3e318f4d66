"""ONNX Runtime backend: the CUDA provider when onnxruntime-gpu is installed and a GPU is wanted, else the CPU.

It runs the ONNX file as it is: a float export as fp32, an int8-quantised (QDQ) one as int8 (ONNX Runtime fuses
the QuantizeLinear/DequantizeLinear pairs into its int8 kernels). OpenVINO runs the int8 model faster (docs/int8.md).
"""
from __future__ import annotations

import time
from typing import List, Optional

import numpy as np

from hrnetseg.backends import Backend, DeviceUnavailable, InputSpec
from hrnetseg.util.errors import UserError, exception_line

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
             "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
             "tensor(double)": np.float64}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str, device_kind: str, index: int, precision: str, threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        if precision not in ("fp32", "int8"):   # int8: a quantised model, run as it is (load_backend checks which)
            raise UserError("the onnxruntime backend runs the ONNX file as exported (fp32, or int8 for a quantised "
                            "one); for {} use --backend torch with the .pth, or --backend openvino".format(precision))
        available = ort.get_available_providers()
        if device_kind == "cuda" and CUDA not in available:
            raise DeviceUnavailable("this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu; or use "
                                    "--device cpu)")
        use_cuda = CUDA in available and device_kind in ("cuda", "auto")
        try:
            self.session = self._open(ort, path, [(CUDA, {"device_id": index}), CPU] if use_cuda else [CPU], threads)
        except UserError as exc:
            if not use_cuda:
                raise
            if device_kind == "cuda":   # a CUDA provider without GPU `index`
                raise DeviceUnavailable("ONNX Runtime cannot use GPU {} ({})".format(index, exc))
            self.session = self._open(ort, path, [CPU], threads)   # auto: a CUDA provider without a usable GPU
        on_gpu = self.session.get_providers()[0] == CUDA
        if device_kind == "cuda" and not on_gpu:
            raise DeviceUnavailable("ONNX Runtime could not start its CUDA provider on GPU {} (see its messages "
                                    "above)".format(index))
        self.device = "cuda:{}".format(index) if on_gpu else "cpu"
        self.precision = precision
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise UserError("{} has {} inputs; the runner feeds models with one image input".format(path, len(inputs)))
        spec = inputs[0]
        if spec.type not in ORT_TYPES:
            raise UserError("{} takes {} input, which the runner cannot feed".format(path, spec.type))
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in spec.shape)
        self.input = InputSpec(spec.name, np.dtype(ORT_TYPES[spec.type]), shape)
        self.output_names = [o.name for o in self.session.get_outputs()]

    @staticmethod
    def _open(ort, path: str, providers: list, threads: Optional[int] = None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            return ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as exc:   # ORT raises its own InvalidProtobuf / Fail / NoSuchFile types
            raise UserError("ONNX Runtime cannot load {}: {}".format(path, exception_line(exc)))

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        try:
            if self.device == "cpu":
                outputs = self.session.run(None, {self.input.name: batch})
            else:
                outputs = self._run_on_gpu(batch)
        except Exception as exc:   # wrong rank/size for a model with fixed axes, out of memory, ...
            raise UserError("ONNX Runtime failed on a {} batch: {}".format(
                "x".join(map(str, batch.shape)), exception_line(exc)))
        return [np.asarray(out, dtype=np.float32) for out in outputs]

    def _run_on_gpu(self, batch: np.ndarray) -> list:
        """The run with its copies apart (ais_bench's H2D_latency and D2H_latency): the input copied to the GPU,
        the outputs left there by the run, then copied back. Each copy returns when it is done."""
        import onnxruntime as ort

        index = int(self.device.split(":")[1])
        began = time.perf_counter()
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch), "cuda", index)
        h2d_ms = (time.perf_counter() - began) * 1000.0
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input.name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", index)
        self.session.run_with_iobinding(binding)
        began = time.perf_counter()
        outputs = binding.copy_outputs_to_cpu()
        self.copy_ms = (h2d_ms, (time.perf_counter() - began) * 1000.0)
        return outputs
