"""hrnetseg.graph.quantized: an int8 model is told by its operators, whatever its file is called."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hrnetseg.graph.quantized import is_quantized, quantization_op_counts
from hrnetseg.util.errors import UserError


def _model(quantized: bool) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes, source = [], "x"
    if quantized:
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        source = "xd"
    nodes.append(helper.make_node("Conv", [source, "w"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [weight, scale, zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_qdq_model_is_quantized_and_float_model_is_not(tmp_path):
    qdq, plain = tmp_path / "int8.onnx", tmp_path / "model_int8_named.onnx"
    onnx.save(_model(True), str(qdq))
    onnx.save(_model(False), str(plain))
    assert is_quantized(str(qdq))
    assert quantization_op_counts(onnx.load(str(qdq))) == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    assert not is_quantized(str(plain))   # the name says int8; the graph does not


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage"])
def test_not_onnx_is_one_line_refusal(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not an ONNX model"):
        is_quantized(str(path))


def test_folder_is_refused(tmp_path):
    with pytest.raises(UserError):
        is_quantized(str(tmp_path))
