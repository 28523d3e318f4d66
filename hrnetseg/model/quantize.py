"""Post-training int8 quantisation of the exported ONNX model with NNCF (python3 -m hrnetseg.quantize).

The output is a QDQ ONNX file: the float graph with QuantizeLinear / DequantizeLinear pairs around the
quantised operations (NNCF's ONNX backend). Why this format and not OpenVINO IR:
- it runs in both CPU backends we ship, ONNX Runtime and OpenVINO, and hrnetseg.graph.quantized tells it apart
  from a float model by structure, so every tool can ask for --precision int8 and refuse the wrong word;
- OpenVINO reads it into the same int8 kernels as its own IR: in a probe on this machine (W48, 512x1024,
  random weights, 16 calibration images) OpenVINO ran NNCF's QDQ ONNX 1.90x as fast as OpenVINO bf16, faster
  than the IR NNCF's OpenVINO backend writes (1.58x); ONNX Runtime on the same file is slower than OpenVINO
  bf16, so OpenVINO is the backend to run it with.

keep_float says which part of the network stays float, found by structure (graph/structure.head_resize_nodes
finds the backbone's 4-way Concat; the head is everything its output reaches), never by the exporter's node names:
- "attention" (the default): the head's convolutions are quantised, the rest of the head (the object attention's
  MatMul and Softmax, its Concat, Reshape and Transpose) stays float. The head's convolutions are over 40% of the
  network's multiply-adds (the 3x3 720->512 one alone about a third: 109 of ~320 GMAC for W48 at 512x1024), so
  keeping them float caps the gain; the attention's MatMuls are what int8 spoils (W48, random weights: the whole
  network quantised, ~10x the relative error of the attention kept float; docs/int8.md has the figures);
- "head": everything from the Concat on (the OCR and aux heads);
- "none": nothing, the whole network quantised.

An opset 11 export (what atc reads) is converted to opset 13 first: NNCF quantises weights per output channel
only from opset 13 on (per-tensor before), and the int8 model never goes to atc.

NNCF (nncf==3.4.0, requirements-int8.txt) is imported only when a quantisation runs. torch is not needed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.graph.quantized import quantization_op_counts
from hrnetseg.graph.structure import (
    consumers,
    fed_inputs,
    head_resize_nodes,
    load_onnx,
    tensor_dims,
    uses_external_data,
)
from hrnetseg.util.errors import UserError, exception_line
from hrnetseg.util.files import atomic_path, check_output_file, check_outputs_apart
from hrnetseg.util.locks import output_lock

NNCF_REQUIREMENT = "nncf==3.4.0"
PER_CHANNEL_OPSET = 13      # NNCF's ONNX backend quantises weights per channel from this opset on
MAIN_OUTPUT = 1             # output2, the OCR head's logits (output1 is the aux head's)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# read a dequantised tensor's size only, not its values: not counted as quantised operations
SIZE_OPS = ("Shape", "Size")


def import_nncf():
    """NNCF, or a one-line UserError saying how to install it."""
    try:
        import nncf
    except ImportError:
        raise UserError("int8 quantisation needs NNCF: pip install {} (or pip install -r requirements-int8.txt)"
                        .format(NNCF_REQUIREMENT)) from None
    # NNCF logs every unknown edge shape of a dynamic-axes export at INFO: keep its warnings only
    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf


# --- the float model and its structure ----------------------------------------------------------------------

def load_float_model(path: str):
    """The float ONNX model in `path`, refused (one line) when it is already quantised, keeps its weights in
    another file, or is not ONNX."""
    model = load_onnx(path)
    if quantization_op_counts(model):
        raise UserError("{} is already int8-quantised: quantise the float export (HRNet_pth2onnx.py)".format(path))
    if uses_external_data(model):
        raise UserError("{} keeps its weights in a separate file; export it self-contained".format(path))
    return model


def model_opset(model) -> int:
    return max([entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")] or [0])


def prepared_model(model):
    """The model as NNCF gets it: at opset >= 13 (per-channel weight scales) and every node named (NNCF's
    ignored scope and its accuracy restorer address nodes by name; the version converter adds unnamed ones)."""
    import onnx

    if model_opset(model) < PER_CHANNEL_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, PER_CHANNEL_OPSET)
        except Exception as exc:   # the converter raises its own types for ops it cannot convert
            raise UserError("cannot convert the model to opset {} for per-channel int8 weights: {}".format(
                PER_CHANNEL_OPSET, exception_line(exc)))
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = "unnamed_{}_{}".format(node.op_type, index)
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


# what --keep_float leaves float (the module docstring says why), in words for the summary
KEEP_FLOAT = {"attention": "the OCR head's object attention (every convolution int8)",
              "head": "the OCR and aux heads",
              "none": "nothing"}
DEFAULT_KEEP_FLOAT = "attention"


def head_node_names(graph) -> List[str]:
    """The names of the nodes from the backbone's 4-way Concat on (the Concat, the OCR head, the aux head):
    everything the Concat's output reaches. UserError when the graph has no such Concat."""
    resizes = head_resize_nodes(graph)
    read_by = consumers(graph)
    concats = {id(node): node for resize in resizes for node in read_by.get(resize.output[0], [])
               if node.op_type == "Concat"}
    if len(concats) != 1:
        raise UserError("cannot find the backbone's 4-way Concat in this graph (found {}), so cannot keep the head "
                        "in float: pass --keep_float none to quantise the whole network".format(len(concats)))
    seen, names, stack = set(), [], list(concats.values())
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        names.append(node.name)
        for tensor in node.output:
            stack.extend(read_by.get(tensor, []))
    return names


def quantized_op_counts(model) -> Dict[str, int]:
    """op type -> how many nodes (other than Q/DQ) read at least one DequantizeLinear output: the operations
    that run on int8 data (Shape and Size, which read only a size, are not counted)."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    counts: Dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS + SIZE_OPS and any(name in dequantized for name in node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# --- the inputs -------------------------------------------------------------------------------------------

ONNX_INPUT_TYPES = {1: np.float32, 2: np.uint8, 10: np.float16}   # TensorProto element types


def model_input(model) -> Tuple[str, np.dtype, Tuple[Optional[int], ...]]:
    """(name, dtype, N x C x H x W with None where open) of the model's one image input."""
    inputs = fed_inputs(model.graph)
    if len(inputs) != 1:
        raise UserError("the model has {} inputs; the quantisation feeds one image input".format(len(inputs)))
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type not in ONNX_INPUT_TYPES:
        raise UserError("the model's input has ONNX element type {}, not float32, float16 or uint8".format(
            tensor.elem_type))
    return inputs[0].name, np.dtype(ONNX_INPUT_TYPES[tensor.elem_type]), tuple(tensor_dims(inputs[0]))


def checked_images(images: Sequence[np.ndarray], dtype: np.dtype, shape: Sequence[Optional[int]],
                   what: str) -> List[np.ndarray]:
    """Each image as a 1 x C x H x W array of the model's input type, refused (one line) when it is not one:
    another dtype, rank or size, NaN or inf, or no images at all."""
    if len(images) == 0:
        raise UserError("no {} images given".format(what))
    batches = []
    for index, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[0] != 1:
            raise UserError("{} image {} is shaped {}: expected C x H x W or 1 x C x H x W".format(
                what, index, "x".join(map(str, image.shape))))
        if image.dtype != dtype:
            raise UserError("{} image {} is {} but the model takes {}".format(what, index, image.dtype.name,
                                                                                np.dtype(dtype).name))
        if any(want is not None and want != got for want, got in zip(shape[1:], image.shape[1:])):
            raise UserError("{} image {} is {} but the model takes {}".format(
                what, index, "x".join(map(str, image.shape[1:])),
                "x".join("?" if d is None else str(d) for d in shape[1:])))
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise UserError("{} image {} holds NaN or inf".format(what, index))
        batches.append(np.ascontiguousarray(image))
    return batches


def _check_paths(model_path: str, output_path: str) -> None:
    check_output_file(output_path, "--output")
    check_outputs_apart({"--output": output_path}, {"the float model": model_path})


def _write_model(model, output_path: str) -> None:
    import onnx

    with atomic_path(output_path) as tmp:
        onnx.save(model, tmp)


def float_node_names(graph, keep_float: str) -> List[str]:
    """The names of the nodes left float (module docstring): keep_float is one of KEEP_FLOAT."""
    if keep_float not in KEEP_FLOAT:
        raise ValueError("keep_float must be one of {}, not {!r}".format(tuple(KEEP_FLOAT), keep_float))
    if keep_float == "none":
        return []
    head = head_node_names(graph)
    if keep_float == "head":
        return head
    op_types = {node.name: node.op_type for node in graph.node}
    return [name for name in head if op_types[name] != "Conv"]


def _ignored_scope(nncf, model, keep_float: str) -> Tuple[object, int]:
    names = float_node_names(model.graph, keep_float)
    return (nncf.IgnoredScope(names=names) if names else None), len(names)


@contextlib.contextmanager
def _nncf_errors(what: str):
    """An NNCF failure (a graph it cannot quantise, a shape it cannot run) as one line."""
    try:
        yield
    except UserError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:   # NNCF and ONNX Runtime raise many types of their own
        raise UserError("{} failed: {}".format(what, exception_line(exc))) from None


# --- plain post-training quantisation -------------------------------------------------------------------

def quantize_onnx(model_path: str, output_path: str, calibration: Sequence[np.ndarray], *,
                  keep_float: str = DEFAULT_KEEP_FLOAT, fast_bias_correction: bool = True) -> dict:
    """Quantise the float ONNX model in `model_path` with NNCF (min-max ranges from `calibration`, then bias
    correction) and write the QDQ model to `output_path` atomically (nothing is written when it fails).

    calibration: images shaped C x H x W or 1 x C x H x W, of the model's input type (the preprocess bins).
    fast_bias_correction: NNCF's; False asks for its full bias correction, which NNCF 3.4.0's ONNX backend fails on
    this network's graph ("Failed to find node output": a one-line error here), so the command line offers only
    the fast one.
    Returns {"calibration_images", "calibration_size" ([H, W] of the first), "quantized_ops" (op type -> count),
    "ignored_nodes", "kept_float", "opset", "seconds"}.
    """
    _check_paths(model_path, output_path)
    model = load_float_model(model_path)
    name, dtype, shape = model_input(model)
    batches = checked_images(calibration, dtype, shape, "calibration")
    nncf = import_nncf()
    began = time.perf_counter()
    with output_lock(output_path):
        model = prepared_model(model)
        scope, ignored = _ignored_scope(nncf, model, keep_float)
        dataset = nncf.Dataset(batches, lambda image: {name: image})
        with _nncf_errors("NNCF's quantisation"):
            quantized = nncf.quantize(model, dataset, subset_size=len(batches), ignored_scope=scope,
                                      fast_bias_correction=fast_bias_correction)
        _write_model(quantized, output_path)
    return {"calibration_images": len(batches), "calibration_size": list(batches[0].shape[2:]),
            "quantized_ops": quantized_op_counts(quantized),
            "ignored_nodes": ignored, "kept_float": keep_float, "opset": model_opset(quantized),
            "seconds": round(time.perf_counter() - began, 2)}


# --- quantisation under an mIoU budget -----------------------------------------------------------------

class SessionCache(object):
    """The ONNX Runtime session of the last model validated. NNCF's accuracy restorer scores one candidate model
    image by image (a validation_fn call per image); a session made per call cost most of the run. Keyed by the
    model's bytes, not the object: a model changed in place gets a new session."""

    def __init__(self) -> None:
        self.key, self.session = None, None

    def session_for(self, model):
        import hashlib

        import onnxruntime as ort

        data = model.SerializeToString()
        key = hashlib.sha256(data).digest()
        if key != self.key:
            self.key, self.session = None, None   # the old session is freed before the new one is made
            self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            self.key = key
        return self.session


def _image_miou(counts: np.ndarray) -> float:
    from hrnetseg.evaluation.metrics import scores

    value = scores(counts, 1)["mIoU"]
    return 0.0 if value is None else float(value)


def validation_miou(model, items: Iterable[Tuple[np.ndarray, np.ndarray]], input_name: str,
                    sessions: Optional[SessionCache] = None) -> Tuple[float, List[float]]:
    """(mIoU over `items`, each item's own mIoU): the model's main output run in ONNX Runtime one image at a
    time, as python -m hrnetseg.evaluate runs it (batch 1), through the same upsample + argmax and confusion
    matrix. This is NNCF's validation_fn."""
    from hrnetseg.evaluation.metrics import ConfusionMatrix, confusion
    from hrnetseg.evaluation.upsample_argmax import logits_to_labels

    session = (sessions or SessionCache()).session_for(model)
    matrix = ConfusionMatrix()
    per_item = []
    for image, labels in items:
        logits = session.run(None, {input_name: image})[MAIN_OUTPUT][0]
        counts = confusion(logits_to_labels(logits, labels.shape[0], labels.shape[1]), labels)
        matrix.add(counts)
        per_item.append(_image_miou(counts))
    miou = matrix.compute()["mIoU"]
    return (0.0 if miou is None else float(miou)), per_item


def checked_validation(validation: Sequence[Tuple[np.ndarray, np.ndarray]], dtype: np.dtype,
                       shape: Sequence[Optional[int]]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The (1 x C x H x W image, H x W uint8 trainIds) pairs, refused (one line) when an image or a label does
    not fit."""
    if len(validation) == 0:
        raise UserError("no validation images given")
    images = checked_images([pair[0] for pair in validation], dtype, shape, "validation")
    pairs = []
    for index, (image, (_, labels)) in enumerate(zip(images, validation)):
        labels = np.asarray(labels)
        if labels.dtype != np.uint8 or labels.shape != image.shape[2:]:
            raise UserError("validation label {} is {} {}; expected uint8 trainIds of the image's size {}".format(
                index, labels.dtype.name, "x".join(map(str, labels.shape)), "x".join(map(str, image.shape[2:]))))
        pairs.append((image, labels))
    return pairs


def quantize_onnx_with_accuracy_control(model_path: str, output_path: str, calibration: Sequence[np.ndarray],
                                        validation: Sequence[Tuple[np.ndarray, np.ndarray]], *,
                                        max_drop_points: float = 0.5, keep_float: str = DEFAULT_KEEP_FLOAT) -> dict:
    """Quantise as quantize_onnx, then let NNCF put operations back to float, the most harmful first, until the
    int8 model's mIoU on `validation` is at most `max_drop_points` mIoU points (absolute) below the float one.

    validation: (image C x H x W of the model's input type, trainIds H x W uint8, 255 ignored) pairs; the metric
    is our mIoU of the main output (validation_miou). The fp32 and int8 figures are measured again on the
    models themselves (two more passes over `validation`), not taken from NNCF's log.
    Returns quantize_onnx's report plus fp32_miou, int8_miou, drop_points (all in points, 0-100),
    max_drop_points, reverted_ops and validation_images.
    """
    if not 0.0 <= max_drop_points <= 100.0:
        raise UserError("max_drop must be between 0 and 100 mIoU points, not {}".format(max_drop_points))
    _check_paths(model_path, output_path)
    model = load_float_model(model_path)
    name, dtype, shape = model_input(model)
    batches = checked_images(calibration, dtype, shape, "calibration")
    pairs = checked_validation(validation, dtype, shape)
    nncf = import_nncf()
    from nncf.parameters import DropType
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    began = time.perf_counter()
    with output_lock(output_path), tempfile.TemporaryDirectory(prefix="hrnetseg-int8-") as scratch:
        model = prepared_model(model)
        scope, ignored = _ignored_scope(nncf, model, keep_float)
        calibration_set = nncf.Dataset(batches, lambda image: {name: image})
        validation_set = nncf.Dataset(pairs)
        restorer = AdvancedAccuracyRestorerParameters(intermediate_model_dir=scratch)
        sessions = SessionCache()
        with _nncf_errors("NNCF's accuracy-controlled quantisation"):
            quantized = nncf.quantize_with_accuracy_control(
                model, calibration_set, validation_set,
                validation_fn=lambda candidate, items: validation_miou(candidate, items, name, sessions),
                max_drop=max_drop_points / 100.0, drop_type=DropType.ABSOLUTE, subset_size=len(batches),
                ignored_scope=scope, advanced_accuracy_restorer_parameters=restorer)
        first = load_onnx(os.path.join(scratch, "intermediate_model.onnx"))
        fp32_miou = validation_miou(model, pairs, name, sessions)[0]
        int8_miou = validation_miou(quantized, pairs, name, sessions)[0]
        _write_model(quantized, output_path)
    before, after = sum(quantized_op_counts(first).values()), quantized_op_counts(quantized)
    return {"calibration_images": len(batches), "calibration_size": list(batches[0].shape[2:]),
            "validation_images": len(pairs), "quantized_ops": after,
            "ignored_nodes": ignored, "kept_float": keep_float, "opset": model_opset(quantized),
            "reverted_ops": before - sum(after.values()),
            "fp32_miou": 100.0 * fp32_miou, "int8_miou": 100.0 * int8_miou,
            "drop_points": 100.0 * (fp32_miou - int8_miou), "max_drop_points": max_drop_points,
            "seconds": round(time.perf_counter() - began, 2)}
