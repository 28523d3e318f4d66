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
from typing import Optional, Sequence

from hrnetseg.graph.resize_rewrite import rewrite_file
from hrnetseg.graph.structure import DEFAULT_NEAREST_MODE, MODES, NEAREST_MODES, SELECT_HEAD, load_onnx, resize_report
from hrnetseg.util.cli import ArgumentParser, run_cli
from hrnetseg.util.files import require_file


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
    rewrite_file(args.input, args.output, select=args.select, mode=args.mode, nearest_mode=args.nearest_mode,
                 verify=not args.no_verify)
    return 0


def run() -> None:
    """The console script hrnetseg-optimize-resize: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
