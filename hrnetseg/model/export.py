"""ONNX export that atc can read (TorchScript exporter, opset 11), verified in ONNX Runtime before it lands."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from hrnetseg.data.cityscapes import MEAN, STD
from hrnetseg.model.checkpoint import load_checkpoint
from hrnetseg.model.network import build_model, init_random_weights
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import atomic_path
from hrnetseg.util.numerics import check_outputs_finite, max_abs_error, relative_error

INPUT_NAME = "image"
OUTPUT_NAMES = ("output1", "output2")   # aux, main: the ModelZoo scripts' order
MAX_RELATIVE_ERROR = 1e-4
MIN_OPSET = 11   # bilinear Resize with align_corners needs opset 11
EXIT_MISMATCH = 1


class NormalizingInput(nn.Module):
    """Takes raw RGB uint8 NCHW and applies the upstream normalization (cityscapes.MEAN / STD after /255, as
    the float32 transform does) inside the graph: the export's --input_format uint8.

    With it the preprocessed bins are 4x smaller and the host does no float work.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model((image.to(self.mean.dtype) / 255.0 - self.mean) / self.std)


def output_errors(got: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> Dict[str, Tuple[float, float]]:
    """{output: (max abs, relative)} of ONNX Runtime's outputs against PyTorch's on the same input.

    Raises UserError (exit code 1) when an output is missing or mis-shaped, or holds NaN or inf on either
    side: no error figure means anything then (max() over (3.5e-7, nan) is 3.5e-7).
    """
    if len(got) != len(OUTPUT_NAMES) or len(expected) != len(OUTPUT_NAMES):
        raise UserError("expected outputs {}; ONNX Runtime gave {}, PyTorch {}".format(
            ", ".join(OUTPUT_NAMES), len(got), len(expected)), exit_code=EXIT_MISMATCH)
    for name, g, w in zip(OUTPUT_NAMES, got, expected):
        if np.shape(g) != np.shape(w):
            raise UserError("ONNX Runtime's {} has shape {}, PyTorch's {}".format(
                name, np.shape(g), np.shape(w)), exit_code=EXIT_MISMATCH)
    broken = "the weights overflow float32 or are broken"
    # The reference first: broken weights show there.
    check_outputs_finite(expected, OUTPUT_NAMES, "PyTorch's", broken)
    check_outputs_finite(got, OUTPUT_NAMES, "ONNX Runtime's", broken)
    return {name: (max_abs_error(g, w), relative_error(g, w)) for name, g, w in zip(OUTPUT_NAMES, got, expected)}


def check_errors(errors: Dict[str, Tuple[float, float]]) -> None:
    """UserError (exit code 1) when an output's relative error is above MAX_RELATIVE_ERROR or NaN."""
    failing = [(name, rel) for name, (_, rel) in errors.items() if not rel <= MAX_RELATIVE_ERROR]
    if failing:
        name, rel = max(failing, key=lambda item: math.inf if math.isnan(item[1]) else item[1])   # NaN first
        raise UserError("ONNX Runtime disagrees with PyTorch on {}: relative error {:.3g} > {:g}".format(
            name, rel, MAX_RELATIVE_ERROR), exit_code=EXIT_MISMATCH)


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
    # a --dynamic_hw export: the second size it was checked at, and the errors there
    other_size: Optional[Tuple[int, int]] = None
    other_errors: Optional[Dict[str, Tuple[float, float]]] = None


def check_opset(opset: int) -> None:
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as max_opset

    if not MIN_OPSET <= opset <= max_opset:
        raise UserError("--opset {}: the model needs opset >= {} (bilinear align_corners Resize) and this torch "
                        "exports up to {}".format(opset, MIN_OPSET, max_opset))


def export_onnx(model: nn.Module, path: str, height: int, width: int, batch: Optional[int] = None,
                opset: int = 11, input_format: str = "float32", verify_batch: int = 1,
                dynamic_hw: bool = False) -> ExportReport:
    """Export, check and verify against PyTorch; the file appears only if all of that passes.

    batch None makes the batch axis dynamic. dynamic_hw makes height and width dynamic too (height x width is
    then only the size it is traced at), verified at that size and at a second, odd one (other_size): a
    graph that kept a traced size somewhere fails there. Raises UserError(exit code 1) above
    MAX_RELATIVE_ERROR, and when either side's outputs hold NaN or inf.
    """
    if input_format == "uint8":
        model = NormalizingInput(model)
    model = model.eval()
    try:
        return _export_verified(model, path, height, width, batch, opset, input_format, verify_batch, dynamic_hw)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise UserError("not enough memory to export {} at input {} x 3 x {} x {}: choose a smaller size or "
                        "batch".format(path, batch or verify_batch, height, width)) from None


OUT_OF_MEMORY_WORDS = ("can't allocate memory", "not enough memory", "out of memory", "bad allocation",
                       "failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(words in text for words in OUT_OF_MEMORY_WORDS)


def other_size(height: int, width: int) -> Tuple[int, int]:
    """The second size a --dynamic_hw export is verified at: about 3/4 of the traced one, odd (an input size
    that is no multiple of the network's strides), at least 33 x 33."""
    return max(33, (3 * height // 4) | 1), max(33, (3 * width // 4) | 1)


def dynamic_axes_for(batch: Optional[int], dynamic_hw: bool) -> Optional[Dict[str, Dict[int, str]]]:
    """torch.onnx.export's dynamic_axes: the batch axis when batch is None, height and width with dynamic_hw."""
    axes: Dict[str, Dict[int, str]] = {}
    for name in (INPUT_NAME,) + OUTPUT_NAMES:
        named = {0: "batch"} if batch is None else {}
        if dynamic_hw:
            prefix = "" if name == INPUT_NAME else name + "_"   # outputs are 1/4 of the input, their own axes
            named.update({2: prefix + "height", 3: prefix + "width"})
        if named:
            axes[name] = named
    return axes or None


def _export_verified(model: nn.Module, path: str, height: int, width: int, batch: Optional[int], opset: int,
                     input_format: str, verify_batch: int, dynamic_hw: bool = False) -> ExportReport:
    image = example_input(batch or verify_batch, height, width, input_format, seed=2)
    dynamic_axes = dynamic_axes_for(batch, dynamic_hw)
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
            try:
                errors = verify_onnx(model, tmp, image, expected)
                check_errors(errors)
                second_errors = None
                if dynamic_hw:
                    second = example_input(batch or verify_batch, *other_size(height, width), input_format, seed=3)
                    try:
                        second_errors = verify_onnx(model, tmp, second)
                        check_errors(second_errors)
                    except UserError as exc:
                        raise UserError("at {}x{} (the export's open height and width): {}".format(
                            second.shape[2], second.shape[3], exc), exit_code=exc.exit_code) from None
            except UserError as exc:
                raise UserError("{}; not writing {}".format(exc, path), exit_code=exc.exit_code) from None
    finally:
        hook.remove()
    shape = ("batch" if batch is None else batch, 3, "height" if dynamic_hw else height,
             "width" if dynamic_hw else width)
    return ExportReport(path=path, input_shape=shape, errors=errors,
                        other_size=other_size(height, width) if dynamic_hw else None, other_errors=second_errors)


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
    return output_errors(got, expected)
