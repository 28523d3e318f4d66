"""Switch the HRNet head's Resize nodes to nearest-neighbour, found by graph structure (not by names).

    python3 performance_optimize_resize.py hrnet.onnx hrnet.onnx          # the ModelZoo scripts' form, in place
    python3 performance_optimize_resize.py hrnet.onnx --list              # every Resize node
    python3 performance_optimize_resize.py in.onnx out.onnx --select all

Attributes are edited in place: the file keeps its IR version and opset. Before the file is written the
result passes onnx.checker and runs in ONNX Runtime next to the original on one random input, and a line
reports how far the outputs moved (relative error, argmax agreement): the accuracy price of the rewrite.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from hrnetseg.cli import ArgumentParser, UserError, exception_line, run_cli
from hrnetseg.files import atomic_path, check_output_file, remove_stale_temporaries_beside, require_file
from hrnetseg.locks import output_lock
from hrnetseg.numerics import check_outputs_finite
from hrnetseg.onnx_graph import (DEFAULT_NEAREST_MODE, MODES, NEAREST_MODES, SELECT_HEAD, load_onnx, resize_report,
                                 select_resize_nodes, set_resize_mode, uses_external_data)
from hrnetseg.rewrite_check import check_input, compare_outputs, run_onnxruntime


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("input", metavar="IN", help="ONNX model to rewrite")
    parser.add_argument("output", metavar="OUT", nargs="?", help="where to write the result (may equal IN)")
    parser.add_argument("--select", default=SELECT_HEAD,
                        help="'head' (default): the 3 Resize nodes that upsample branches 2-4 into the 4-way "
                             "Concat; 'all'; or comma-separated Resize node names (see --list)")
    parser.add_argument("--mode", choices=MODES, default="nearest", help="new Resize mode (default: nearest)")
    parser.add_argument("--nearest_mode", choices=NEAREST_MODES, default=DEFAULT_NEAREST_MODE,
                        help="rounding of nearest mode (default: {}, half the error of the exporter's 'floor' "
                             "with align_corners); 'keep' leaves it as exported".format(DEFAULT_NEAREST_MODE))
    parser.add_argument("--list", action="store_true",
                        help="print every Resize node (shapes, mode, the node it feeds) and exit")
    parser.add_argument("--no_verify", action="store_true",
                        help="skip the ONNX Runtime comparison (onnx.checker still runs)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_file(args.input, "ONNX model")
    if args.list:
        lines = resize_report(load_onnx(args.input))
        print("\n".join(lines) if lines else "no Resize nodes in {}".format(args.input))
        return 0
    if args.output is None:
        parser.error("OUT is required (give IN twice to rewrite in place)")
    check_output_file(args.output, "OUT")
    import onnx

    with output_lock(args.output):
        # A killed rewrite leaves its temporary file (hundreds of MB for w48) beside the target.
        remove_stale_temporaries_beside(args.output)
        model = load_rewritable(args.input)
        rewrite(model, args)
        with atomic_path(args.output) as tmp:
            onnx.save(model, tmp)
    print("wrote {} (IR version {}, opset {})".format(
        args.output, model.ir_version, ", ".join("{}:{}".format(o.domain or "ai.onnx", o.version)
                                                 for o in model.opset_import)))
    return 0


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


def rewrite(model, args) -> None:
    """Switch the selected Resize nodes in place; check the result and report what it costs."""
    import onnx

    original = model.SerializeToString() if not args.no_verify else b""
    nodes = select_resize_nodes(model.graph, args.select)
    changed = set_resize_mode(nodes, args.mode, args.nearest_mode)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise UserError("the rewritten model fails onnx.checker: {}".format(str(exc).splitlines()[0]), exit_code=1)
    print("selected {} Resize node(s) ({}): {}; {} changed to mode {}".format(
        len(nodes), args.select, ", ".join(n.name or "(unnamed)" for n in nodes), changed, args.mode))
    if changed and not args.no_verify:
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


if __name__ == "__main__":
    run_cli(main)
