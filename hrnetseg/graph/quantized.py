"""Whether an ONNX model is int8-quantised, by structure: its graph holds quantisation operators.

NNCF's post-training quantisation (python3 -m hrnetseg.quantize) writes QuantizeLinear / DequantizeLinear pairs
(a "QDQ" model); ONNX Runtime's own tools may write QLinear* or *Integer operators instead. Any of them makes
the model an int8 model: a backend runs it as such whatever precision it is asked for, so the runner, evaluate,
predict and bench call it precision int8 and refuse to call it anything else.

Valid Python 3.7, no torch.
"""
from __future__ import annotations

from typing import Dict

from hrnetseg.graph.structure import load_onnx

QUANTIZATION_OPS = frozenset(("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                              "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul"))


def quantization_op_counts(model) -> Dict[str, int]:
    """How many nodes of each quantisation operator the graph (subgraphs not included) holds."""
    counts: Dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZATION_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def is_quantized(path: str) -> bool:
    """True for an ONNX file whose graph holds any quantisation operator; a one-line UserError for a file
    that is not ONNX (load_onnx's refusals)."""
    return bool(quantization_op_counts(load_onnx(path)))
