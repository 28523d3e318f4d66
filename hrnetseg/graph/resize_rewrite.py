"""The Resize rewrite of the Ascend path: the selected Resize nodes (by default the head's, found by structure)
switched to another mode by editing their attributes in place, the result checked by onnx.checker and, before
it is written, run in ONNX Runtime next to the original on one random input: the rewrite's accuracy price.

performance_optimize_resize.py is its command line. Valid Python 3.7, no torch.
"""
from __future__ import annotations

import os
import sys

from hrnetseg.graph.rewrite_check import check_input, compare_outputs, run_onnxruntime
from hrnetseg.graph.structure import (
    DEFAULT_NEAREST_MODE,
    SELECT_HEAD,
    load_onnx,
    select_resize_nodes,
    set_resize_mode,
    uses_external_data,
)
from hrnetseg.util.errors import UserError, exception_line
from hrnetseg.util.files import atomic_path, check_output_file, check_outputs_apart, remove_stale_temporaries_beside
from hrnetseg.util.locks import output_lock
from hrnetseg.util.numerics import check_outputs_finite


def rewrite_file(input_path: str, output_path: str, select: str = SELECT_HEAD, mode: str = "nearest",
                 nearest_mode: str = DEFAULT_NEAREST_MODE, verify: bool = True) -> None:
    """Rewrite the model in `input_path` into `output_path` (which may be the same file): checked, locked and
    written atomically; prints what changed, the price in ONNX Runtime and the file written."""
    check_output_file(output_path, "OUT")
    if not _same_file(input_path, output_path):   # in place (IN twice) is the ModelZoo scripts' form
        check_outputs_apart({"OUT": output_path}, {"IN": input_path})
    import onnx

    with output_lock(output_path):
        # A killed rewrite leaves its temporary file (hundreds of MB for w48) beside the target.
        remove_stale_temporaries_beside(output_path)
        model = load_rewritable(input_path)
        rewrite(model, select, mode, nearest_mode, verify)
        with atomic_path(output_path) as tmp:
            onnx.save(model, tmp)
    print("wrote {} (IR version {}, opset {})".format(
        output_path, model.ir_version, ", ".join("{}:{}".format(o.domain or "ai.onnx", o.version)
                                                 for o in model.opset_import)))


def _same_file(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def load_rewritable(path: str):
    """The model in `path` when it is self-contained and passes onnx.checker; a one-line UserError otherwise."""
    import onnx

    model = load_onnx(path)
    external = uses_external_data(model)
    if external:
        raise UserError("{} keeps {} tensor(s) in external data files ({}, ...): this tool rewrites self-contained "
                        "models, as HRNet_pth2onnx.py writes them".format(path, len(external), external[0]))
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:   # ValueError: a model over protobuf's 2 GB
        raise UserError("{} fails onnx.checker: {}".format(path, exception_line(exc)))
    return model


def rewrite(model, select: str = SELECT_HEAD, mode: str = "nearest", nearest_mode: str = DEFAULT_NEAREST_MODE,
            verify: bool = True) -> None:
    """Switch the selected Resize nodes in place; check the result and report what it costs."""
    import onnx

    original = model.SerializeToString() if verify else b""
    nodes = select_resize_nodes(model.graph, select)
    changed = set_resize_mode(nodes, mode, nearest_mode)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise UserError("the rewritten model fails onnx.checker: {}".format(str(exc).splitlines()[0]), exit_code=1)
    print("selected {} Resize node(s) ({}): {}; {} changed to mode {}".format(
        len(nodes), select, ", ".join(n.name or "(unnamed)" for n in nodes), changed, mode))
    if changed and verify:
        report_price(original, model)


def report_price(original: bytes, model) -> None:
    """Run the original and the rewritten model on one random input; print the difference per output."""
    name, data = check_input(model)
    print("checking in ONNX Runtime on a random {} input {}...".format(data.dtype, "x".join(map(str, data.shape))),
          file=sys.stderr)
    before = run_onnxruntime(original, {name: data})
    after = run_onnxruntime(model.SerializeToString(), {name: data})
    outputs = [o.name for o in model.graph.output]
    check_outputs_finite(before, outputs, "the original model's", "the rewrite's price cannot be measured; "
                         "--no_verify skips the check")
    check_outputs_finite(after, outputs, "the rewritten model's")
    parts = ["{}: relative error {:.3g}, argmax agreement {}".format(
        out, rel, "n/a" if agree is None else "{:.2%}".format(agree))
        for out, (rel, agree) in zip(outputs, compare_outputs(before, after))]
    print("rewrite vs original (random input): " + "; ".join(parts))
