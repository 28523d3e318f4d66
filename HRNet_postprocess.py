"""Model outputs + Cityscapes labels -> mIoU: per-class table on stdout, result.json, optional pictures.

    python3 HRNet_postprocess.py --res_path results/bs1 --data_path data/cityscapes/gtFine/val/ \
        --save_path ./result_bs1.json [--report report.html]

Runs on the Atlas host (the Python that CANN and ais_bench live in): numpy, opencv, pillow, tqdm; no torch.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from hrnetseg.data.images import add_max_pixels_flag, set_max_pixels
from hrnetseg.evaluation.postprocess import OUTPUT_DTYPES, evaluate_folder
from hrnetseg.evaluation.report import add_report_flags
from hrnetseg.util.cli import ArgumentParser, output_index, plain_name, positive_int, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res_path", required=True,
                        help="folder of model outputs (ais_bench's --output/--output_dirname, e.g. results/bs1)")
    parser.add_argument("--data_path", required=True,
                        help="labels: the gtFine/<split> folder (as the ModelZoo scripts take it), or a cityscapes "
                             "root")
    parser.add_argument("--save_path", default=None, help="result.json to write (default: print only)")
    parser.add_argument("--split", default="val", type=plain_name,
                        help="split, when --data_path is a cityscapes root (default val)")
    parser.add_argument("--output_index", type=output_index, default=None,
                        help="ais_bench's 0-based output number: 0 = aux, 1 = main (default: main, or the only one)")
    parser.add_argument("--output_dtype", choices=OUTPUT_DTYPES, default=None,
                        help="what the output files hold: float16 for an .om built with fp16 outputs (atc "
                             "--output_type=FP16). Default: the .npy header, else the runner's "
                             "<res_path>_summary.json, else float32 (a .bin of exactly float16's size is read "
                             "as float16, with a note). Sources that disagree are an error")
    parser.add_argument("--prep_path", default=None, metavar="DIR",
                        help="the preprocess folder (HRNet_preprocess.py --save_path) the outputs were made from: "
                             "every label must be the size of its images (default: each label is held to the "
                             "size of its leftImg8bit photo where that lies beside it)")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    parser.add_argument("--save_vis", default=None, metavar="DIR",
                        help="write <id>_color.png (Cityscapes palette) and <id>_overlay.png (over the photo)")
    parser.add_argument("--save_pred", default=None, metavar="DIR",
                        help="write <id>_labelIds.png predictions (cityscapesScripts / benchmark server format)")
    parser.add_argument("--save_confusion", default=None, metavar="FILE.npz",
                        help="write the confusion matrix and image ids, for python -m hrnetseg.metrics merge")
    parser.add_argument("--allow_missing", action="store_true",
                        help="evaluate the labels that have outputs and list the others (and labels that are not "
                             "regular files), instead of stopping")
    add_max_pixels_flag(parser)
    add_report_flags(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    set_max_pixels(args.max_pixels)
    evaluate_folder(args.res_path, args.data_path, output_index=args.output_index, split=args.split,
                    workers=args.workers, save_path=args.save_path, save_vis=args.save_vis,
                    save_pred=args.save_pred, save_confusion=args.save_confusion,
                    allow_missing=args.allow_missing, output_dtype=args.output_dtype, prep_path=args.prep_path,
                    report=args.report, report_worst=args.report_worst)
    return 0


def run() -> None:
    """The console script hrnetseg-postprocess: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
