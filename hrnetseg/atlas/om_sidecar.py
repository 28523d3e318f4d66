"""The sidecar of an Ascend .om: what the model takes, written beside it, checked against the bins before a run.

An .om file does not say in a form a script can read what input it was built for, and ais_bench given bins of
another dtype or size crashes with a traceback (float16 bins into a float32 model) or, where the byte counts
happen to fit, computes on misread data. scripts/pth2om.sh therefore writes `hrnet_bs<N>.om.json` beside each
`hrnet_bs<N>.om`; scripts/eval_acc_perf.sh checks the preprocess manifest against it before calling ais_bench.

    python3 -m hrnetseg.atlas.om_sidecar write hrnet_bs4.om --batch 4 --height 1024 --width 2048 --input_dtype float32
    python3 -m hrnetseg.atlas.om_sidecar check hrnet_bs4.om --prep prep_dataset --batch 4
        exit 2 with one line when the bins do not fit the .om (dtype, layout, height x width, batch); an .om
        without a sidecar (made before pth2om.sh wrote one) gets a one-line warning and no check

Atlas-side module: standard library only (the manifest is read through hrnetseg.data.manifest, the sidecar
through hrnetseg.util.structured), valid Python 3.7.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from hrnetseg.data.manifest import read_manifest
from hrnetseg.model.presets import MODEL_INPUT_DTYPES
from hrnetseg.util.cli import ArgumentParser, positive_int, run_cli
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import check_outputs_apart, write_text_atomic
from hrnetseg.util.structured import read_json

SUFFIX = ".json"   # hrnet_bs4.om -> hrnet_bs4.om.json
LAYOUT = "NCHW"    # atc --input_format, as scripts/pth2om.sh passes it
KEYS = ("batch", "height", "width", "input_format", "input_dtype")


def sidecar_path(om: str) -> str:
    return om + SUFFIX


def sidecar(batch: int, height: int, width: int, input_dtype: str) -> dict:
    return {"batch": batch, "height": height, "width": width, "input_format": LAYOUT, "input_dtype": input_dtype}


def write_sidecar(om: str, batch: int, height: int, width: int, input_dtype: str) -> str:
    """Write (atomically) the sidecar of om; returns its path."""
    path = sidecar_path(om)
    check_outputs_apart({"the sidecar": path}, {"the .om": om})   # written through a link: never into the .om
    write_text_atomic(path, json.dumps(sidecar(batch, height, width, input_dtype), indent=1) + "\n")
    return path


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_sidecar(path: str) -> dict:
    """A sidecar's content, checked; UserError (one line) for one that is damaged or not a regular file."""
    data = read_json(path, ".om sidecar")   # a FIFO is never opened; not JSON, or no object: one line
    problem = None
    missing = [key for key in KEYS if key not in data]
    odd = [key for key in ("batch", "height", "width") if key in data and not _is_positive_int(data[key])]
    if missing:
        problem = "{} missing".format(", ".join(missing))
    elif odd:
        problem = "{} is {!r}, not a positive integer".format(odd[0], data[odd[0]])
    elif data["input_format"] != LAYOUT:
        problem = "input_format is {!r}, not {!r}".format(data["input_format"], LAYOUT)
    elif data["input_dtype"] not in MODEL_INPUT_DTYPES:
        problem = "input_dtype is {!r}, not {}".format(data["input_dtype"], " or ".join(MODEL_INPUT_DTYPES))
    if problem is not None:
        raise UserError("the .om sidecar {} is not usable: {}; remake it with scripts/pth2om.sh".format(path, problem))
    return data


STALE_S = 60   # pth2om.sh writes the sidecar after atc: an .om this much newer was rebuilt without it


def check_bins_fit(om: str, prep: str, batch: int) -> Optional[str]:
    """UserError when PREP's bins or the batch size do not fit om's sidecar; a warning (returned) when om has
    no sidecar, or is newer than it (checked all the same), None when all fits."""
    path = sidecar_path(om)
    if not os.path.lexists(path):
        return ("warning: no {} beside {} (made before scripts/pth2om.sh wrote sidecars?): the bins of {} are not "
                "checked against it".format(os.path.basename(path), om, prep))
    expected = read_sidecar(path)
    warning = None
    if os.path.isfile(om) and os.path.getmtime(om) > os.path.getmtime(path) + STALE_S:
        warning = ("warning: {} is newer than its sidecar {} (rebuilt without scripts/pth2om.sh?): checked against "
                   "the sidecar all the same; if the .om now takes other input, rewrite it with python3 -m "
                   "hrnetseg.atlas.om_sidecar write".format(om, path))
    manifest = read_manifest(prep)
    channels, height, width = manifest["shape"]
    bins = "{} {} {}x{}x{}".format(manifest["dtype"], manifest["layout"], channels, height, width)
    takes = "{} {} 3x{}x{}".format(expected["input_dtype"], expected["input_format"], expected["height"],
                                   expected["width"])
    if manifest["dtype"] != expected["input_dtype"]:
        raise UserError("the bins in {} are {} but {} takes {} (its sidecar {}): ais_bench would crash or misread "
                        "them; make the bins with --input_format {}, or rebuild the .om".format(
                            prep, bins, om, takes, path, expected["input_dtype"]))
    if manifest["layout"] != expected["input_format"] or (channels, height, width) != (3, expected["height"],
                                                                                       expected["width"]):
        raise UserError("the bins in {} are {} but {} takes {} (its sidecar {}): preprocess at the .om's size, or "
                        "rebuild the .om with scripts/pth2om.sh --height/--width".format(prep, bins, om, takes, path))
    if expected["batch"] != batch:
        raise UserError("{} was built for batch size {} (its sidecar {}), not {}: rebuild it with scripts/pth2om.sh "
                        "--batch_sizes {}".format(om, expected["batch"], path, batch, batch))
    return warning


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    commands = parser.add_subparsers(dest="subcommand")
    write = commands.add_parser("write", help="write OM.json beside OM (scripts/pth2om.sh, after atc)")
    write.add_argument("om", help="the .om file atc wrote")
    write.add_argument("--batch", required=True, type=positive_int)
    write.add_argument("--height", required=True, type=positive_int)
    write.add_argument("--width", required=True, type=positive_int)
    write.add_argument("--input_dtype", required=True, choices=MODEL_INPUT_DTYPES)
    check = commands.add_parser("check", help="exit 2 unless PREP's bins fit OM (scripts/eval_acc_perf.sh)")
    check.add_argument("om", help="the .om ais_bench will run")
    check.add_argument("--prep", required=True, help="the preprocess folder (its manifest.json)")
    check.add_argument("--batch", required=True, type=positive_int, help="the batch size it will run at")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.subcommand == "write":
        if not os.path.isfile(args.om):
            raise UserError("no .om file {} to describe".format(args.om))
        print(write_sidecar(args.om, args.batch, args.height, args.width, args.input_dtype))
    elif args.subcommand == "check":
        warning = check_bins_fit(args.om, args.prep, args.batch)
        if warning is not None:
            print(warning, file=sys.stderr)
    else:
        parser.error("choose a command: write or check")
    return 0


if __name__ == "__main__":
    run_cli(main)
