"""What a graph rewrite costs: the original and the rewritten model in ONNX Runtime on one random input.

performance_optimize_resize.py runs both models on the input check_input makes and reports, per output,
the relative error and the share of pixels whose class (argmax) stays the same.

Valid Python 3.7, no torch: the rewrite runs on the Atlas host too.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from hrnetseg.graph.structure import fed_inputs, format_shape, tensor_dims
from hrnetseg.util.errors import UserError, exception_line, one_line
from hrnetseg.util.numerics import relative_error

UNKNOWN_DIM_DEFAULT = 256    # spatial size used for a random check input when the graph leaves it open


def check_input(model, seed: int = 0):
    """(input name, a random input for one image) matching the model's only input's type and shape."""
    inputs = fed_inputs(model.graph)
    if len(inputs) != 1:
        raise UserError("cannot check the rewrite: the model has {} inputs ({}) and the check feeds one image; "
                        "--no_verify skips it".format(len(inputs), ", ".join(i.name for i in inputs) or "none"))
    info = inputs[0]
    dims = tensor_dims(info)
    shape = [1 if i == 0 and d is None else (d or UNKNOWN_DIM_DEFAULT) for i, d in enumerate(dims)]
    dtype = numpy_dtype(info.type.tensor_type.elem_type)
    if dtype is None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise UserError("cannot check the rewrite: input {} is not a numeric tensor ({}); --no_verify skips the "
                        "check".format(info.name, one_line(str(info.type))[:80]))
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        data = rng.integers(0, 256, size=shape).astype(dtype)
    else:
        data = rng.standard_normal(shape).astype(dtype)
    return info.name, data


def numpy_dtype(elem_type: int):
    """The numpy dtype of an ONNX tensor element type, or None (undefined, string, or unknown to numpy)."""
    import onnx

    try:
        if hasattr(onnx.helper, "tensor_dtype_to_np_dtype"):
            return onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        return onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[elem_type]   # onnx < 1.13, as on older Atlas hosts
    except (KeyError, ValueError, TypeError):
        return None


def run_onnxruntime(model_bytes: bytes, feed: Dict[str, object]) -> list:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return session.run(None, feed)
    except Exception as exc:   # ORT raises its own Fail/InvalidGraph/RuntimeException types
        raise UserError("ONNX Runtime cannot run the model: {}".format(exception_line(exc)), exit_code=1)


def compare_outputs(before: list, after: list) -> List[Tuple[float, Optional[float]]]:
    """Per output: (relative error, share of positions whose argmax over axis 1 agrees; None below 2-D).

    Both sides must be finite (numerics.check_outputs_finite): the figures mean nothing otherwise. A changed
    shape is a UserError (exit code 1): a mode change keeps every shape.
    """
    result = []
    for index, (old, new) in enumerate(zip(before, after)):
        old = np.asarray(old, np.float64)
        new = np.asarray(new, np.float64)
        if old.shape != new.shape:
            raise UserError("the rewrite changed output {}'s shape from {} to {}".format(
                index, format_shape(old.shape), format_shape(new.shape)), exit_code=1)
        rel = relative_error(new, old)
        agree = None
        if old.ndim >= 2:
            agree = float((old.argmax(axis=1) == new.argmax(axis=1)).mean())
        result.append((rel, agree))
    return result
