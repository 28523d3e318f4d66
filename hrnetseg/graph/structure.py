"""The graph steps of the Ascend path, found by graph structure instead of exporter-generated names.

- the head's Resize nodes: the ones whose outputs meet the branch-1 tensor in the 4-way Concat
  (branches 2-4 upsampled to branch-1 size), whatever the exporter called them;
- switching Resize nodes to another mode by editing their attributes in place (IR version, opset and
  everything else in the file stay as they were: CANN 6's atc reads IR 6 / opset 11);
- the nodes that produce the graph outputs, for atc's --out_nodes ("<node>:<index>;...", output1 first);
- a listing of every Resize node (shapes, mode, consumer), to choose what to rewrite.

What a rewrite costs in ONNX Runtime is measured in rewrite_check.py.

Valid Python 3.7, no torch: it runs wherever the export runs, the Atlas host included.

    python -m hrnetseg.graph.structure out_nodes hrnet.onnx     # e.g. /aux_head/aux_head.3/Conv:0;/cls_head/Conv:0
    python -m hrnetseg.graph.structure list hrnet.onnx          # every Resize node, its shapes, mode and consumer
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from hrnetseg.util.cli import ArgumentParser, run_cli
from hrnetseg.util.errors import UserError, exception_line
from hrnetseg.util.files import require_file

HEAD_BRANCHES = 4            # HRNetV2 concatenates branch 1 with branches 2-4 upsampled to its size
SELECT_HEAD = "head"
SELECT_ALL = "all"
MODES = ("nearest", "linear")
NEAREST_MODES = ("keep", "round_prefer_ceil", "round_prefer_floor", "floor", "ceil")
DEFAULT_NEAREST_MODE = "round_prefer_ceil"
OUT_NODES_SEPARATOR = ";"    # atc --out_nodes "<node>:<index>;<node>:<index>"


def load_onnx(path: str):
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
            path, type(exc).__name__, exception_line(exc, 160)))
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
    """Names of the graph's tensors whose data lives in a separate file (not read by load_onnx)."""
    import onnx

    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            tensors.extend([attr.t] if attr.HasField("t") else [])
            tensors.extend(attr.tensors)
    return [t.name or "(unnamed)" for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


# ---------------------------------------------------------------------------------------------- structure

def fed_inputs(graph) -> List[object]:
    """The graph's inputs that are not initialisers: the tensors a caller feeds."""
    initialisers = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in initialisers]


def tensor_dims(value) -> List[Optional[int]]:
    """A value_info's dimensions, None where open (symbolic, or unset)."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.type.tensor_type.shape.dim]


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
    found: Dict[str, List[object]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                found.setdefault(name, []).append(node)
    return found


def attribute_value(node, name: str, default=None):
    """A node attribute's value (strings decoded), or `default` when the node does not set it."""
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
    sources = _ancestor_shape_sources(resize.input[1:], made_by) - {first_name(resize.input)}
    return not sources or sources == {branch1}


def first_name(names: Sequence[str]) -> str:
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
    counts: Dict[str, int] = {}
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
        source, result = first_name(node.input), first_name(node.output)
        fed = readers.get(result, [])
        lines.append("{}  {} -> {}  mode={} coordinate_transformation_mode={} nearest_mode={}  feeds {}{}".format(
            node.name or "(unnamed)", format_shape(shapes.get(source)), format_shape(shapes.get(result)),
            attribute_value(node, "mode", "nearest"),
            attribute_value(node, "coordinate_transformation_mode", "half_pixel"),
            attribute_value(node, "nearest_mode", "round_prefer_floor"),
            ", ".join("{} ({})".format(n.name or "(unnamed)", n.op_type) for n in fed)
            or ("a graph output" if result in outputs else "nothing"),
            "  [head]" if id(node) in head else ""))
    return lines


# ------------------------------------------------------------------------------------------------- CLI

def underscored(text: str) -> str:
    """`out-nodes` as `out_nodes`: the hyphenated spelling the flags accept too (cli.ArgumentParser)."""
    return text.replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Graph facts for the Ascend steps, found by structure.")
    parser.add_argument("command", choices=("out_nodes",), type=underscored,
                        help="out_nodes: atc's --out_nodes value (output producers, output1 first); the Resize "
                             "nodes are listed by performance_optimize_resize.py --list")
    parser.add_argument("model", help="ONNX file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    model = load_onnx(args.model)
    print(";".join(output_producers(model.graph)))
    return 0


if __name__ == "__main__":
    run_cli(main)
