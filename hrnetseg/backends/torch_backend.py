"""PyTorch backend: the official checkpoint (.pth) in eager mode, channels_last, autocast for fp16/bf16.

Kept simple on purpose; fp16 needs a GPU, bf16 runs on the GPU or the CPU (autocast).
"""
from __future__ import annotations

from typing import List

import numpy as np

from ..cli import UserError
from . import Backend, InputSpec, first_line


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: str, device_kind: str, index: int, precision: str, preset: str,
                 input_dtype: str = "float32") -> None:
        import torch

        from ..export import OUTPUT_NAMES, NormalizingInput, load_model

        if device_kind == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no usable GPU here; use --device cpu")
        on_gpu = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
        self.torch = torch
        self.device = "cuda:{}".format(index) if on_gpu else "cpu"
        if precision == "fp16" and not on_gpu:
            raise UserError("--precision fp16 needs a GPU; on the CPU use fp32 or bf16")
        self.precision = precision
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        model = load_model(preset, pth=path)
        if input_dtype == "uint8":
            model = NormalizingInput(model)
        elif input_dtype != "float32":
            raise UserError("the torch backend takes float32 or uint8 input, not {}".format(input_dtype))
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.input = InputSpec("image", np.dtype(input_dtype), (None, 3, None, None))
        self.output_names = list(OUTPUT_NAMES)

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        torch = self.torch
        image = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        image = image.contiguous(memory_format=torch.channels_last)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        try:
            with torch.inference_mode(), torch.autocast(device_type, dtype=self.autocast_dtype or torch.float32,
                                                        enabled=self.autocast_dtype is not None):
                outputs = self.model(image)
        except RuntimeError as exc:   # shape mismatch or out of memory: say so on one line
            raise UserError("torch failed on a {} batch: {}".format("x".join(map(str, batch.shape)), first_line(exc)))
        return [out.float().cpu().numpy() for out in outputs]
