"""Cityscapes images -> model input files (<id>.bin, C-order 3 x H x W) and manifest.json.

    python3 HRNet_preprocess.py --src_path ./data --save_path ./prep_dataset

Runs on the Atlas host (the Python that CANN and ais_bench live in): numpy, opencv, pillow, tqdm; no torch.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from hrnetseg.data.images import add_max_pixels_flag, set_max_pixels
from hrnetseg.data.preprocess import DTYPES, preprocess
from hrnetseg.util.cli import ArgumentParser, plain_name, positive_int, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src_path", required=True,
                        help="the folder holding cityscapes/ (the ModelZoo scripts' ./data) or the cityscapes "
                             "folder itself")
    parser.add_argument("--save_path", required=True,
                        help="output folder (created; a rerun resumes, redoing the bins of changed images; "
                             "locked by <save_path>.lock while the run lasts)")
    parser.add_argument("--split", type=plain_name, default="val",
                        help="leftImg8bit split to convert, a folder name (default val)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="float32: the upstream transform (the ModelZoo scripts' format); float16: the same, "
                             "rounded; uint8: raw RGB pixels for models that normalize inside (4x smaller)")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    parser.add_argument("--limit", type=positive_int, default=None, help="convert only the first N images (by id)")
    parser.add_argument("--skip_bad", action="store_true",
                        help="leave out unreadable images (and anything at an image's name that is not a regular "
                             "file) and list them at the end instead of stopping")
    add_max_pixels_flag(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    set_max_pixels(args.max_pixels)
    preprocess(args.src_path, args.save_path, split=args.split, dtype=args.dtype, workers=args.workers,
               limit=args.limit, skip_bad=args.skip_bad)
    return 0


def run() -> None:
    """The console script hrnetseg-preprocess: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
