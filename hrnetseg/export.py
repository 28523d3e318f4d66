"""ONNX export that atc can read (TorchScript exporter, opset 11), verified in ONNX Runtime before it lands."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint
from .cli import UserError
from .files import atomic_path
from .model import build_model, init_random_weights

INPUT_NAME = "image"
OUTPUT_NAMES = ("output1", "output2")   # aux, main: the seed's order
MAX_RELATIVE_ERROR = 1e-4
MIN_OPSET = 11   # bilinear Resize with align_corners needs opset 11
EXIT_MISMATCH = 1

# The upstream transform, folded into the graph for --input_format uint8 (RGB, NCHW).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class NormalizingInput(nn.Module):
    """Takes raw RGB uint8 NCHW and applies the upstream normalization inside the graph.

    With it the preprocessed bins are 4x smaller and the host does no float work.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model((image.to(self.mean.dtype) / 255.0 - self.mean) / self.std)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """||a - b||_2 / ||b||_2 over the whole tensor: the project's one definition."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    denom = np.linalg.norm(expected.ravel())
    diff = np.linalg.norm((actual - expected).ravel())
    return float(diff / denom) if denom > 0 else float(diff)


def max_abs_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))


def load_model(preset: str, pth: Optional[str] = None, random_weights: Optional[int] = None) -> nn.Module:
    """The eval-mode model with official weights from `pth`, or seeded random weights for demos."""
    model = build_model(preset)
    if pth is not None:
        load_checkpoint(model, pth, preset)
    elif random_weights is not None:
        init_random_weights(model, random_weights)
    else:
        raise UserError("give a checkpoint (--pth FILE) or --random_weights SEED")
    return model.eval()


def example_input(batch: int, height: int, width: int, input_format: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if input_format == "uint8":
        return torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
    return torch.randn(batch, 3, height, width, generator=gen)


@dataclass
class ExportReport:
    path: str
    input_shape: Tuple
    errors: Dict[str, Tuple[float, float]]   # output name -> (max abs, relative)


def check_opset(opset: int) -> None:
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as max_opset

    if not MIN_OPSET <= opset <= max_opset:
        raise UserError("--opset {}: the model needs opset >= {} (bilinear align_corners Resize) and this torch "
                        "exports up to {}".format(opset, MIN_OPSET, max_opset))


def export_onnx(model: nn.Module, path: str, height: int, width: int, batch: Optional[int] = None,
                opset: int = 11, input_format: str = "float32", verify_batch: int = 1) -> ExportReport:
    """Export, check and verify against PyTorch; the file appears only if all of that passes.

    batch None makes the batch axis dynamic. Raises UserError(exit code 1) above MAX_RELATIVE_ERROR.
    """
    if input_format == "uint8":
        model = NormalizingInput(model)
    model = model.eval()
    image = example_input(batch or verify_batch, height, width, input_format, seed=2)
    dynamic_axes = None
    if batch is None:
        dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME,) + OUTPUT_NAMES}
    traced_outputs = []   # tracing runs the real forward: keep its outputs as the PyTorch reference
    hook = model.register_forward_hook(lambda module, args, outputs: traced_outputs.append(outputs))
    try:
        with atomic_path(path) as tmp:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (image,), tmp, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                  dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
                                  do_constant_folding=True)
            hook.remove()
            expected = [t.detach().numpy() for t in traced_outputs[-1]] if traced_outputs else None
            errors = verify_onnx(model, tmp, image, expected)
            worst = max(rel for _, rel in errors.values())
            if not worst <= MAX_RELATIVE_ERROR:
                raise UserError("ONNX Runtime disagrees with PyTorch: relative error {:.3g} > {:g}; not writing {}"
                                .format(worst, MAX_RELATIVE_ERROR, path), exit_code=EXIT_MISMATCH)
    finally:
        hook.remove()
    shape = ("batch" if batch is None else batch, 3, height, width)
    return ExportReport(path=path, input_shape=shape, errors=errors)


def verify_onnx(model: nn.Module, onnx_path: str, image: torch.Tensor,
                expected: Optional[Sequence[np.ndarray]] = None) -> Dict[str, Tuple[float, float]]:
    """onnx.checker, then ONNX Runtime against PyTorch on the same input: {output: (max abs, relative)}.

    `expected`: PyTorch's outputs for `image` when already computed (the export's trace), else run here.
    """
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx_path)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})
    if expected is None:
        with torch.no_grad():
            expected = [t.numpy() for t in model(image)]
    return {name: (max_abs_error(g, w), relative_error(g, w)) for name, g, w in zip(OUTPUT_NAMES, got, expected)}
