"""The graph steps of the Ascend path, found by graph structure instead of exporter-generated names.

- the head's Resize nodes: the ones whose outputs meet the branch-1 tensor in the 4-way Concat
  (branches 2-4 upsampled to branch-1 size), whatever the exporter called them;
- switching Resize nodes to another mode by editing their attributes in place (IR version, opset and
  everything else in the file stay as they were: CANN 6's atc reads IR 6 / opset 11);
- the nodes that produce the graph outputs, for atc's --out_nodes ("<node>:<index>;...", output1 first).

Valid Python 3.7, no torch: it runs wherever the export runs, the Atlas host included.

    python -m hrnetseg.onnx_graph out_nodes hrnet.onnx     # prints e.g. /aux_head/aux_head.3/Conv:0;/cls_head/Conv:0
    python -m hrnetseg.onnx_graph list hrnet.onnx          # every Resize node, its shapes, mode and consumer
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .cli import UserError, add_alias_flags, run_cli
from .files import require_file

HEAD_BRANCHES = 4            # HRNetV2 concatenates branch 1 with branches 2-4 upsampled to its size
SELECT_HEAD = "head"
SELECT_ALL = "all"
MODES = ("nearest", "linear")
NEAREST_MODES = ("keep", "round_prefer_ceil", "round_prefer_floor", "floor", "ceil")
DEFAULT_NEAREST_MODE = "round_prefer_ceil"
UNKNOWN_DIM_DEFAULT = 256    # spatial size used for a random check input when the graph leaves it open
OUT_NODES_SEPARATOR = ";"    # atc --out_nodes "<node>:<index>;<node>:<index>"


def load_model(path: str):
    """The ModelProto in `path`, or a one-line UserError for a missing, non-regular or non-ONNX file.

    External data files are not read: these tools need the graph, and the export writes self-contained
    files (see uses_external_data).
    """
    import onnx

    require_file(path, "ONNX model")
    if os.path.getsize(path) == 0:
        raise UserError("{} is not an ONNX model (an empty file)".format(path))
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:   # protobuf raises DecodeError, onnx raises ValueError/OSError: all mean "not ONNX"
        raise UserError("{} is not an ONNX model (truncated or another format: {}: {})".format(
            path, type(exc).__name__, " ".join(str(exc).split())[:160]))
    missing = missing_parts(model)
    if missing:
        raise UserError("{} is not an ONNX model (no {})".format(path, ", no ".join(missing)))
    return model


def missing_parts(model) -> List[str]:
    """What a parsed ModelProto lacks to be a model (protobuf parses b"" and some garbage as an empty one)."""
    graph = model.graph
    parts = (("IR version", model.ir_version > 0), ("opset import", len(model.opset_import) > 0),
             ("graph nodes", len(graph.node) > 0), ("graph inputs", len(graph.input) > 0),
             ("graph outputs", len(graph.output) > 0))
    return [name for name, present in parts if not present]


def uses_external_data(model) -> List[str]:
    """Names of the graph's tensors whose data lives in a separate file (not read by load_model)."""
    import onnx

    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            tensors.extend([attr.t] if attr.HasField("t") else [])
            tensors.extend(attr.tensors)
    return [t.name or "(unnamed)" for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


# ---------------------------------------------------------------------------------------------- structure

def producers(graph) -> Dict[str, Tuple[object, int]]:
    """tensor name -> (node, output index) for every node output."""
    found = {}
    for node in graph.node:
        for index, name in enumerate(node.output):
            if name:
                found[name] = (node, index)
    return found


def consumers(graph) -> Dict[str, List[object]]:
    """tensor name -> nodes reading it."""
    found = {}   # type: Dict[str, List[object]]
    for node in graph.node:
        for name in node.input:
            if name:
                found.setdefault(name, []).append(node)
    return found


def _attr(node, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            import onnx

            value = onnx.helper.get_attribute_value(attr)
            return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    return default


def _ancestor_shape_sources(tensors: Iterable[str], made_by: Dict[str, Tuple[object, int]]) -> set:
    """Names of the tensors whose Shape feeds the given tensors (their size computation)."""
    sources, seen = set(), set()
    stack = [t for t in tensors if t]
    while stack:
        name = stack.pop()
        if name in seen or name not in made_by:
            continue
        seen.add(name)
        node = made_by[name][0]
        if node.op_type == "Shape":
            sources.add(node.input[0])
            continue
        stack.extend(t for t in node.input if t)
    return sources


def head_resize_nodes(graph) -> List[object]:
    """The Resize nodes that upsample branches 2-4 right before the head's 4-way Concat, in Concat order.

    A head Concat has 4 inputs: the branch-1 tensor (not made by a Resize) and 3 Resize outputs whose
    target size, where it is computed in the graph, comes from the branch-1 tensor's Shape.
    """
    made_by = producers(graph)
    found = []
    for node in graph.node:
        if node.op_type != "Concat" or len(node.input) != HEAD_BRANCHES:
            continue
        resizes = [made_by[t][0] for t in node.input if t in made_by and made_by[t][0].op_type == "Resize"]
        others = [t for t in node.input if not (t in made_by and made_by[t][0].op_type == "Resize")]
        if len(resizes) != HEAD_BRANCHES - 1 or len(others) != 1:
            continue
        branch1 = others[0]
        if all(_sized_like(resize, branch1, made_by) for resize in resizes):
            found.extend(resizes)
    return found


def _sized_like(resize, branch1: str, made_by) -> bool:
    """True unless the Resize's target size is computed from some tensor other than branch 1.

    (The exporter takes the batch and channel sizes from the Resize's own input, so that one is allowed.)
    """
    sources = _ancestor_shape_sources(resize.input[1:], made_by) - {_first(resize.input)}
    return not sources or sources == {branch1}


def _first(names: Sequence[str]) -> str:
    """A node's first input or output name; "" for a node without any (a malformed graph)."""
    return names[0] if len(names) else ""


def resize_nodes(graph) -> List[object]:
    return [node for node in graph.node if node.op_type == "Resize"]


def select_resize_nodes(graph, select: str) -> List[object]:
    """`head`, `all`, or comma-separated Resize node names; a UserError when nothing matches."""
    select = select.strip()
    if select == SELECT_HEAD:
        nodes = head_resize_nodes(graph)
        if not nodes:
            raise UserError("no Resize nodes feed a 4-way Concat next to the branch-1 tensor (the HRNet head): "
                            "not an HRNet export? See the Resize nodes with --list and name them with --select")
        return nodes
    if select == SELECT_ALL:
        nodes = resize_nodes(graph)
        if not nodes:
            raise UserError("the model has no Resize nodes")
        return nodes
    wanted = [name.strip() for name in select.split(",") if name.strip()]
    if not wanted:
        raise UserError("--select needs 'head', 'all' or comma-separated Resize node names")
    resizes = resize_nodes(graph)
    by_name = {node.name: node for node in resizes}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise UserError("no Resize node named {} (see the Resize nodes with --list)".format(", ".join(missing)))
    named = {name: sum(node.name == name for node in resizes) for name in wanted}
    shared = [name for name in wanted if named[name] > 1]
    if shared:   # only one of them would change, and which one is chance
        raise UserError("{} Resize nodes are named {}: --select cannot tell them apart; use 'head' or 'all'".format(
            named[shared[0]], shared[0]))
    return [by_name[name] for name in dict.fromkeys(wanted)]


def set_resize_mode(nodes: Sequence[object], mode: str, nearest_mode: str = DEFAULT_NEAREST_MODE) -> int:
    """Set `mode` (and, for nearest, `nearest_mode` unless 'keep') on the nodes in place; return how many changed.

    coordinate_transformation_mode stays as exported (align_corners for this model), which atc accepts
    with mode nearest (as in the ModelZoo scripts' rewrite).
    """
    import onnx

    wanted = {"mode": mode}
    if mode == "nearest" and nearest_mode != "keep":
        wanted["nearest_mode"] = nearest_mode
    changed = 0
    for node in nodes:
        before = [(a.name, a.SerializeToString()) for a in node.attribute]
        for name, value in wanted.items():
            for attr in node.attribute:
                if attr.name == name:
                    attr.s = value.encode("utf-8")
                    break
            else:
                node.attribute.extend([onnx.helper.make_attribute(name, value)])
        changed += before != [(a.name, a.SerializeToString()) for a in node.attribute]
    return changed


def output_producers(graph) -> List[str]:
    """'<node>:<index>' for each graph output, in graph output order (output1 first for our export)."""
    made_by = producers(graph)
    named = name_counts(graph)
    result = []
    for output in graph.output:
        if output.name not in made_by:
            raise UserError("graph output {} is not produced by any node (an input or a constant)".format(output.name))
        node, index = made_by[output.name]
        if not node.name:
            raise UserError("the node producing graph output {} has no name; atc --out_nodes needs one"
                            .format(output.name))
        if named[node.name] > 1:   # atc would take whichever node of that name it finds first
            raise UserError("the node producing graph output {} is named {}, a name {} nodes share: atc "
                            "--out_nodes names nodes, so it would be ambiguous".format(
                                output.name, node.name, named[node.name]))
        if OUT_NODES_SEPARATOR in node.name:
            raise UserError("the node producing graph output {} is named {!r}: atc --out_nodes separates nodes "
                            "with {!r}, so it cannot name this one".format(output.name, node.name,
                                                                         OUT_NODES_SEPARATOR))
        result.append("{}:{}".format(node.name, index))
    return result


def name_counts(graph) -> Dict[str, int]:
    """node name -> how many of the graph's nodes carry it."""
    counts = {}   # type: Dict[str, int]
    for node in graph.node:
        counts[node.name] = counts.get(node.name, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------------- listing

def tensor_shapes(model) -> Dict[str, List[object]]:
    """Best-effort shapes of every tensor: ONNX Runtime's symbolic inference, else onnx's own."""
    import copy

    import onnx

    inferred = None
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(copy.deepcopy(model), auto_merge=True)
    except Exception:   # optional tool (needs onnxruntime and sympy); fall back to onnx's inference
        inferred = None
    if inferred is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:
            inferred = model
    shapes = {}
    graph = inferred.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return shapes


def format_shape(shape: Optional[Sequence[object]]) -> str:
    return "x".join(str(d) for d in shape) if shape else "?"


def resize_report(model) -> List[str]:
    """One line per Resize node: name, input -> output shape, mode, the node(s) it feeds, head or not."""
    graph = model.graph
    shapes = tensor_shapes(model)
    readers = consumers(graph)
    head = {id(node) for node in head_resize_nodes(graph)}
    outputs = {output.name for output in graph.output}
    lines = []
    for node in resize_nodes(graph):
        source, result = _first(node.input), _first(node.output)
        fed = readers.get(result, [])
        lines.append("{}  {} -> {}  mode={} coordinate_transformation_mode={} nearest_mode={}  feeds {}{}".format(
            node.name or "(unnamed)", format_shape(shapes.get(source)), format_shape(shapes.get(result)),
            _attr(node, "mode", "nearest"), _attr(node, "coordinate_transformation_mode", "half_pixel"),
            _attr(node, "nearest_mode", "round_prefer_floor"),
            ", ".join("{} ({})".format(n.name or "(unnamed)", n.op_type) for n in fed)
            or ("a graph output" if result in outputs else "nothing"),
            "  [head]" if id(node) in head else ""))
    return lines


# ------------------------------------------------------------------------------------ checking a rewrite

def check_input(model, seed: int = 0):
    """(input name, a random input for one image) matching the model's only input's type and shape."""
    import numpy as np

    graph = model.graph
    initialisers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise UserError("cannot check the rewrite: the model has {} inputs ({}) and the check feeds one image; "
                        "--no_verify skips it".format(len(inputs), ", ".join(i.name for i in inputs) or "none"))
    info = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    shape = [1 if i == 0 and d is None else (d or UNKNOWN_DIM_DEFAULT) for i, d in enumerate(dims)]
    dtype = _numpy_dtype(info.type.tensor_type.elem_type)
    if dtype is None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise UserError("cannot check the rewrite: input {} is not a numeric tensor ({}); --no_verify skips the "
                        "check".format(info.name, " ".join(str(info.type).split())[:80]))
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        data = rng.integers(0, 256, size=shape).astype(dtype)
    else:
        data = rng.standard_normal(shape).astype(dtype)
    return info.name, data


def _numpy_dtype(elem_type: int):
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
        raise UserError("ONNX Runtime cannot run the model: {}".format(" ".join(str(exc).split())[:300]), exit_code=1)


def relative_error(actual, expected) -> float:
    """||a - b||_2 / ||b||_2 over the whole tensor (||a - b||_2 where b is all zeros): the project's one
    definition.

    NaN when either side holds NaN or inf, so it never passes a `<=` bound (computed without numpy's
    "invalid value" warnings). Shapes broadcast as in numpy: callers compare like with like.
    """
    import numpy as np

    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if not (np.isfinite(actual).all() and np.isfinite(expected).all()):
        return float("nan")
    denom = np.linalg.norm(expected.ravel())
    diff = np.linalg.norm((actual - expected).ravel())
    return float(diff / denom) if denom > 0 else float(diff)


def nonfinite_counts(array) -> Optional[str]:
    """None when every value is finite, else e.g. "12 NaN and 3 inf of 4864 values"."""
    import numpy as np

    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return None
    counts = (("NaN", int(np.isnan(array).sum())), ("inf", int(np.isinf(array).sum())))
    found = ["{} {}".format(count, label) for label, count in counts if count]
    return "{} of {} values".format(" and ".join(found), array.size) if found else None


def check_finite(outputs: Sequence[object], names: Sequence[str], whose: str, hint: str = "") -> None:
    """UserError (exit code 1) naming the first output that holds NaN or inf."""
    for name, values in zip(names, outputs):
        bad = nonfinite_counts(values)
        if bad:
            raise UserError("{} {} holds {} on the random check input{}".format(
                whose, name, bad, " ({})".format(hint) if hint else ""), exit_code=1)


def compare_outputs(before: list, after: list) -> List[Tuple[float, Optional[float]]]:
    """Per output: (relative error, share of positions whose argmax over axis 1 agrees; None below 2-D).

    Both sides must be finite (check_finite): the figures mean nothing otherwise. A changed shape is a
    UserError (exit code 1): a mode change keeps every shape.
    """
    import numpy as np

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


# ------------------------------------------------------------------------------------------------- CLI

def underscored(text: str) -> str:
    """`out-nodes` as `out_nodes`: the hyphenated spelling the flags accept too (add_alias_flags)."""
    return text.replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hrnetseg.onnx_graph",
                                     description="Graph facts for the Ascend steps, found by structure.")
    parser.add_argument("command", choices=("out_nodes", "list"), type=underscored,
                        help="out_nodes: atc's --out_nodes value (output producers, output1 first); "
                             "list: every Resize node with shapes, mode and consumer")
    parser.add_argument("model", help="ONNX file")
    add_alias_flags(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    model = load_model(args.model)
    if args.command == "out_nodes":
        print(";".join(output_producers(model.graph)))
    else:
        lines = resize_report(model)
        print("\n".join(lines) if lines else "no Resize nodes in {}".format(os.path.basename(args.model)))
    return 0


if __name__ == "__main__":
    run_cli(main)
