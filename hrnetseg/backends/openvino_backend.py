"""OpenVINO backend: the exported ONNX file on the CPU, fp32 or bf16; an int8-quantised (QDQ) one as int8.

Measured the fastest CPU path on AVX-512 BF16 machines (about 2x ONNX Runtime fp32 at 1024x2048, within
1e-2 relative of fp32; BENCHMARKS.md). The model is compiled once per input shape (about 1-2 s), so a
dynamic-batch export runs with static shapes, which OpenVINO's CPU plugin runs fastest.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from hrnetseg.backends import Backend, DeviceUnavailable, InputSpec
from hrnetseg.util.errors import UserError, exception_line

# int8: OpenVINO runs the quantised operations in int8 whatever the hint; the hint sets what the parts left float
# (the OCR head) run in. Chosen by measurement (docs/int8.md): INT8_FLOAT_HINT.
INT8_FLOAT_HINT = "bf16"
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": INT8_FLOAT_HINT}
OV_TYPES = {"f32": np.float32, "f16": np.float16, "u8": np.uint8}


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, path: str, device_kind: str, index: int, precision: str, threads: Optional[int] = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise UserError("the openvino backend needs OpenVINO: pip install openvino")
        if device_kind == "cuda":
            raise DeviceUnavailable("the openvino backend runs on the CPU (use --device cpu, or another backend for "
                                    "a GPU)")
        if precision not in PRECISION_HINTS:
            raise UserError("the openvino backend runs fp32, bf16 or int8 (a quantised model) on the CPU, not "
                            "{}".format(precision))
        if not path.lower().endswith(".onnx"):
            raise UserError("the openvino backend reads the ONNX export (.onnx), not {}".format(path))
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(path)
        except Exception as exc:   # OpenVINO raises its own exception types for unreadable files
            raise UserError("OpenVINO cannot read {}: {}".format(path, exception_line(exc)))
        if len(self.model.inputs) != 1:
            raise UserError("{} has {} inputs; the runner feeds models with one image input".format(
                path, len(self.model.inputs)))
        port = self.model.inputs[0]
        element = port.get_element_type().get_type_name()
        if element not in OV_TYPES:
            raise UserError("{} takes {} input, which the runner cannot feed".format(path, element))
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        self.input = InputSpec(port.get_any_name(), np.dtype(OV_TYPES[element]), shape)
        self.output_names = [out.get_any_name() for out in self.model.outputs]
        if precision == "bf16" and "BF16" not in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            # OpenVINO would quietly run fp32: say so, and report what runs
            print("note: this CPU has no bf16 support; OpenVINO runs fp32 (precision reported as fp32)",
                  file=sys.stderr)
            precision = "fp32"
        self.config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.device = "cpu"
        self.precision = precision
        self._compiled: Dict[Tuple[int, ...], object] = {}

    def _request(self, shape: Tuple[int, ...]):
        """An infer request for one static input shape, compiled on first use."""
        if shape not in self._compiled:
            model = self.model.clone()
            try:
                model.reshape({0: list(shape)})
                compiled = self.core.compile_model(model, "CPU", self.config)
            except Exception as exc:   # a shape the model cannot take
                raise UserError("OpenVINO cannot run a {} input: {}".format("x".join(map(str, shape)),
                                                                          exception_line(exc)))
            self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape]

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        compiled, request = self._request(tuple(batch.shape))
        try:
            results = request.infer({0: np.ascontiguousarray(batch)})
        except Exception as exc:
            raise UserError("OpenVINO failed on a {} batch: {}".format("x".join(map(str, batch.shape)),
                                                                      exception_line(exc)))
        return [np.array(results[out], dtype=np.float32, copy=True) for out in compiled.outputs]
