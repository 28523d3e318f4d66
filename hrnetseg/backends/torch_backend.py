"""PyTorch backend: the official checkpoint (.pth), BatchNorm folded into the convolutions, channels_last.

Reduced precision by measurement (BENCHMARKS.md): on the CPU bf16 weights beat bf16 autocast (no casts
per call); on a GPU fp16/bf16 run under autocast, which keeps the OCR softmaxes in fp32. `compile=True`
adds torch.compile (inductor; CUDA graphs on a GPU), worth its one-off compile time on long runs only.
"""
from __future__ import annotations

import time
from typing import List, Optional

import numpy as np

from hrnetseg.backends import Backend, DeviceUnavailable, InputSpec
from hrnetseg.util.errors import UserError, exception_line


def fold_batchnorm(model):
    """The same function with every BatchNorm folded into the convolution before it (exact to ~1e-6)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(model)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: str, device_kind: str, index: int, precision: str, preset: str,
                 input_dtype: str = "float32", compile: bool = False, threads: Optional[int] = None) -> None:
        import torch

        from hrnetseg.model.export import OUTPUT_NAMES, NormalizingInput, load_model

        if device_kind == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailable("torch sees no usable GPU here (use --device cpu)")
        if device_kind == "cuda" and index >= torch.cuda.device_count():
            raise DeviceUnavailable("torch sees {} GPU(s), no GPU {}".format(torch.cuda.device_count(), index))
        if threads:
            torch.set_num_threads(threads)
        on_gpu = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
        self.torch = torch
        self.device = "cuda:{}".format(index) if on_gpu else "cpu"
        if precision == "fp16" and not on_gpu:
            raise UserError("--precision fp16 needs a GPU; on the CPU use fp32 or bf16")
        self.precision = precision
        reduced = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        model = fold_batchnorm(load_model(preset, pth=path))
        if input_dtype == "uint8":
            model = NormalizingInput(model)
        elif input_dtype != "float32":
            raise UserError("the torch backend takes float32 or uint8 input, not {}".format(input_dtype))
        # CPU bf16: the weights themselves in bf16; GPU: fp32 weights under autocast.
        self.weight_dtype = reduced if (reduced is not None and not on_gpu) else torch.float32
        self.autocast_dtype = reduced if on_gpu else None
        if on_gpu:
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device, dtype=self.weight_dtype, memory_format=torch.channels_last).eval()
        if compile:
            if not on_gpu:
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True   # prepacked oneDNN weights
            self.model = torch.compile(self.model, mode="reduce-overhead" if on_gpu else None)
        self.input = InputSpec("image", np.dtype(input_dtype), (None, 3, None, None))
        self.output_names = list(OUTPUT_NAMES)

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        torch = self.torch
        on_gpu = self.device.startswith("cuda")
        began = time.perf_counter()
        image = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if on_gpu:   # the copy apart from the compute, as ais_bench's H2D_latency
            torch.cuda.synchronize(self.device)
        h2d_ms = (time.perf_counter() - began) * 1000.0 if on_gpu else 0.0
        if image.is_floating_point():
            image = image.to(self.weight_dtype)
        image = image.contiguous(memory_format=torch.channels_last)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        try:
            with torch.no_grad(), torch.autocast(device_type, dtype=self.autocast_dtype or torch.float32,
                                                 enabled=self.autocast_dtype is not None):
                outputs = self.model(image)
            if on_gpu:
                outputs = [out.float() for out in outputs]
                torch.cuda.synchronize(self.device)
        except RuntimeError as exc:   # shape mismatch or out of memory: say so on one line
            raise UserError("torch failed on a {} batch: {}".format("x".join(map(str, batch.shape)),
                                                                   exception_line(exc)))
        began = time.perf_counter()
        arrays = [out.float().cpu().numpy() for out in outputs]
        self.copy_ms = (h2d_ms, (time.perf_counter() - began) * 1000.0 if on_gpu else 0.0)
        return arrays
