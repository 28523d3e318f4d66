"""Train the reference model (tiny_ocr on synthetic scenes) and score it on held-out scenes, per class.

    python3 scripts/train_reference_model.py                      # train, write models/reference_tiny_ocr.pth, score
    python3 scripts/train_reference_model.py --eval_only models/reference_tiny_ocr.pth   # score a checkpoint

What the model is: the `tiny_ocr` preset (HRNetV2 + OCR with the W48 model's topology, ~281k parameters) trained
from scratch on the CPU for a fixed number of iterations on synthetic Cityscapes-layout scenes
(hrnetseg.data.sample_scenes, the generator as the demo uses it). It gives a network that has learned something,
so the deploy chain (preprocess, export, runner, postprocess) can be checked in mIoU points on this machine.
What it is not: a Cityscapes model. It has never seen a real photo and would segment one poorly; the official
HRNetV2-W48 + OCR checkpoint (hrnet_ocr_cs_8162_torch11.pth) gives 81.6% mIoU on Cityscapes val.

Data: training scenes are those `python -m hrnetseg.sample_data DIR --seed 1000 --n SCENES` writes (scene i made
with RandomState([1000, i])), made in memory at --scene_size; the held-out scenes are those of --eval_seed
(default 0, what sample_data writes by default), which training never uses. Any --eval_seed other than
--scene_seed is held out. Evaluation runs the model at the full image size, takes the main output (output2), upsamples
it bilinearly (align_corners=True) and argmaxes it as the project's postprocess does (the exact
hrnetseg.evaluation.upsample_argmax), and counts IoU per class with hrnetseg.evaluation.metrics.

The checkpoint is in the official checkpoint's format (keys behind `model.`, the loss's class weights as
`loss.criterion.weight`), so `HRNet_pth2onnx.py --pth FILE --preset tiny_ocr` exports it as it exports the official
file. The schedule counts iterations, every random draw is seeded and the thread count is fixed (--threads), so the
same command gives byte-identical weights on the same machine and torch version (other CPUs or torch builds may
round differently).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hrnetseg.util.cli import ArgumentParser, positive_int, run_cli, whole_number
from hrnetseg.util.errors import UserError

DEFAULT_SAVE_PATH = os.path.join("models", "reference_tiny_ocr.pth")
DEFAULT_EVAL_SIZES = "512x1024,1024x2048"


def size_pair(text: str, separator: str = "x") -> Tuple[int, int]:
    """argparse type: HEIGHTxWIDTH (or H,W for --crop), both positive."""
    parts = text.replace(",", separator).split(separator)
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("expected HEIGHT{}WIDTH, got {!r}".format(separator, text))
    return positive_int(parts[0]), positive_int(parts[1])


def size_list(text: str) -> List[Tuple[int, int]]:
    return [size_pair(part) for part in text.split(",") if part]


def scale_range(text: str) -> Tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected LOW,HIGH, got {!r}".format(text))
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError("expected 0 < LOW <= HIGH, got {!r}".format(text))
    return low, high


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number from 0 to 1, got {!r}".format(text))
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("expected a number from 0 to 1, got {!r}".format(text))
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError("expected a positive number, got {!r}".format(text))
    return value


def build_parser() -> argparse.ArgumentParser:
    from hrnetseg.model.training import Recipe

    d = Recipe()
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--save_path", default=DEFAULT_SAVE_PATH,
                        help="checkpoint to write (default: {})".format(DEFAULT_SAVE_PATH))
    parser.add_argument("--eval_only", metavar="CKPT",
                        help="do not train: load this official-format tiny_ocr checkpoint and score it")
    recipe = parser.add_argument_group("the recipe (the defaults made models/reference_tiny_ocr.pth)")
    recipe.add_argument("--iterations", type=positive_int, default=d.iterations,
                        help="optimizer steps (default {})".format(d.iterations))
    recipe.add_argument("--batch", type=positive_int, default=d.batch,
                        help="crops per step (default {})".format(d.batch))
    recipe.add_argument("--scenes", type=positive_int, default=d.scenes,
                        help="training scenes (default {})".format(d.scenes))
    recipe.add_argument("--scene_seed", type=lambda t: whole_number(t, 0, 2 ** 32 - 1), default=d.scene_seed,
                        help="sample_data --seed of the training scenes (default {})".format(d.scene_seed))
    recipe.add_argument("--scene_size", type=size_pair, default=d.scene_size, metavar="HxW",
                        help="size the training scenes are made at (default {}x{})".format(*d.scene_size))
    recipe.add_argument("--crop", type=lambda t: size_pair(t, ","), default=d.crop, metavar="H,W",
                        help="training crop (default {},{})".format(*d.crop))
    recipe.add_argument("--scale", type=scale_range, default=d.scale, metavar="LOW,HIGH",
                        help="random rescale range of a scene before cropping (default {},{})".format(*d.scale))
    recipe.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer,
                        help="default {}".format(d.optimizer))
    recipe.add_argument("--lr", type=positive_float, default=d.lr,
                        help="base learning rate, poly decay (power 0.9) to 0 (default {})".format(d.lr))
    recipe.add_argument("--weight_decay", type=fraction, default=d.weight_decay,
                        help="default {}".format(d.weight_decay))
    recipe.add_argument("--class_weights", choices=("none", "upstream", "scenes"), default=d.class_weights,
                        help="cross-entropy class weights: none, upstream's Cityscapes weights, or 1/ln(1.02 + f) of "
                             "the training scenes' class frequencies f (default {})".format(d.class_weights))
    recipe.add_argument("--ohem_keep", type=fraction, default=d.ohem_keep,
                        help="> 0: average the loss over only this share of the hardest pixels (default {})"
                        .format(d.ohem_keep))
    recipe.add_argument("--class_crops", type=fraction, default=d.class_crops,
                        help="share of crops placed around a pixel of a class drawn uniformly from those in the "
                             "scene (class-uniform sampling, for the thin classes; default {})".format(d.class_crops))
    recipe.add_argument("--seed", type=lambda t: whole_number(t, 0, 2 ** 32 - 1), default=d.seed,
                        help="seed of the initialisation, dropout and the augmentation (default {})".format(d.seed))
    recipe.add_argument("--threads", type=positive_int, default=d.threads,
                        help="torch threads; part of the recipe: another count may round differently (default {})"
                        .format(d.threads))
    scoring = parser.add_argument_group("the held-out evaluation")
    scoring.add_argument("--eval_seed", type=lambda t: whole_number(t, 0, 2 ** 32 - 1), default=0,
                         help="sample_data --seed of the held-out scenes; must differ from --scene_seed (default 0)")
    scoring.add_argument("--eval_scenes", type=whole_number, default=20,
                         help="held-out scenes per size; 0 skips the evaluation (default 20)")
    scoring.add_argument("--eval_sizes", type=size_list, default=size_list(DEFAULT_EVAL_SIZES), metavar="HxW,...",
                         help="image sizes to score at, the model run at each (default {})".format(DEFAULT_EVAL_SIZES))
    scoring.add_argument("--result", metavar="FILE.json",
                         help="also write the scores (per size: mIoU, per-class IoU, confusion matrix) as JSON")
    return parser


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recipe_from_args(args: argparse.Namespace):
    from hrnetseg.model.training import Recipe

    return Recipe(iterations=args.iterations, batch=args.batch, scenes=args.scenes, scene_seed=args.scene_seed,
                  scene_size=tuple(args.scene_size), crop=tuple(args.crop), scale=tuple(args.scale),
                  optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                  class_weights=args.class_weights, ohem_keep=args.ohem_keep, class_crops=args.class_crops,
                  seed=args.seed, threads=args.threads)


def run_training(args: argparse.Namespace):
    from hrnetseg.model import training
    from hrnetseg.util.files import check_output_file, make_output_folder
    from hrnetseg.util.locks import output_lock

    make_output_folder(os.path.dirname(os.path.abspath(args.save_path)))   # models/ in a fresh clone
    check_output_file(args.save_path, "--save_path")
    recipe = recipe_from_args(args)
    with output_lock(args.save_path):
        print("recipe: {}".format(json.dumps(recipe.as_dict(), sort_keys=True)), flush=True)
        started = time.time()
        scenes = training.make_scenes(recipe.scene_seed, recipe.scenes, *recipe.scene_size)
        made = time.time() - started
        print("made {} training scenes at {}x{} (seed {}) in {:.1f} s".format(
            recipe.scenes, recipe.scene_size[0], recipe.scene_size[1], recipe.scene_seed, made), flush=True)
        weights = training.class_weights_for(recipe, scenes)
        model, losses = training.train(recipe, scenes, log=lambda line: print(line, flush=True))
        del scenes
        training.save_official_checkpoint(model, args.save_path, weights)
        wall = time.time() - started
    print("wrote {} (sha256 {}) after {} iterations; {:.1f} s in all ({:.1f} s making scenes), final loss {:.4f}"
          .format(args.save_path, sha256_of(args.save_path), recipe.iterations, wall, made, losses[-1]), flush=True)
    return model


def load_for_eval(path: str):
    from hrnetseg.model.checkpoint import load_checkpoint
    from hrnetseg.model.network import build_model

    model = load_checkpoint(build_model("tiny_ocr"), path, "tiny_ocr")
    model.eval()
    return model


def score(model, args: argparse.Namespace) -> list:
    from hrnetseg.model import training

    results = []
    for height, width in args.eval_sizes:
        started = time.time()
        result = training.evaluate(model, args.eval_seed, args.eval_scenes, height, width, threads=args.threads)
        print("scored {} held-out scenes (seed {}) at {}x{}: mIoU {:.2f}% ({:.1f} s)".format(
            args.eval_scenes, args.eval_seed, height, width, 100 * result["mIoU"], time.time() - started), flush=True)
        results.append(("{}x{}".format(height, width), result))
    print(training.format_per_class(results))
    return results


def write_result(path: str, checkpoint: str, args: argparse.Namespace, results: list) -> None:
    from hrnetseg.util.files import write_bytes_atomic

    body = {"checkpoint": checkpoint, "sha256": sha256_of(checkpoint), "eval_seed": args.eval_seed,
            "eval_scenes": args.eval_scenes,
            "sizes": {name: {"mIoU": r["mIoU"], "per_class": r["per_class"], "pixel_accuracy": r["pixel_accuracy"],
                             "confusion_matrix": r["confusion_matrix"]} for name, r in results}}
    write_bytes_atomic(path, (json.dumps(body, indent=1) + "\n").encode())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.eval_seed == args.scene_seed:
        raise UserError("--eval_seed {} is the training scenes' seed: those scenes are not held out".format(
            args.eval_seed))
    if args.eval_only is not None:
        model = load_for_eval(args.eval_only)
        checkpoint = args.eval_only
        print("scoring {} (sha256 {})".format(checkpoint, sha256_of(checkpoint)), flush=True)
    else:
        model = run_training(args)
        checkpoint = args.save_path
    if args.eval_scenes:
        results = score(model, args)
        if args.result:
            write_result(args.result, checkpoint, args, results)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
