"""Compare our model (and optionally our ONNX export) with the original HRNet-OCR code on the same weights.

Needs a checkout of upstream HRNet-Semantic-Segmentation at commit 0bbb288 (head of its HRNet-OCR
branch) with HRNet.patch applied, and yacs (a dev-only dependency: pip install -r requirements-dev.txt):

    git clone -b HRNet-OCR https://github.com/HRNet/HRNet-Semantic-Segmentation.git upstream
    git -C upstream checkout 0bbb2880446ddff2d78f8dd7e8c4c610151d5a51
    (cd upstream && patch -p1 < ../HRNet.patch)
    python3 scripts/check_upstream_parity.py --upstream upstream --pth hrnet_ocr_cs_8162_torch11.pth

Both models load the same official-format checkpoint: ours through hrnetseg.model.checkpoint (strict), the
upstream one with upstream's own key handling (`model.` stripped, `loss.*` dropped, `last_layer` read as
`aux_head`) and a strict load_state_dict. Both run in eval mode on one seeded random image, normalized
as upstream does. Prints the relative error ||a - b|| / ||b|| of output1 (aux) and output2 (main)
against upstream; exit code 1 if any is >= 1e-5, 2 for a usage problem.

With --scales / --flip / --base_size / --crop_size it compares multi-scale testing instead: upstream's
Cityscapes.multi_scale_inference (its dataset object, built with that base and crop size) against our
hrnetseg.evaluation.multiscale.summed_scores through our torch backend (and --onnx, a --dynamic_hw export, in ONNX
Runtime), on one image normalized by upstream's own input_transform: --image FILE, or a seeded smooth random
scene of --height x --width. Prints the relative error of the summed maps and the share of pixels whose
argmax agrees; exit code 1 if the error is >= 1e-5 (torch fp32; 1e-4 for ONNX Runtime) or the agreement
is below 99.99%:

    python3 scripts/check_upstream_parity.py --upstream upstream --pth hrnet_ocr_cs_8162_torch11.pth \
        --image frankfurt_000000_000294_leftImg8bit.png --scales 0.5,0.75,1.0,1.25,1.5,1.75 --flip
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hrnetseg.evaluation.multiscale import DEFAULT_CROP_SIZE
from hrnetseg.evaluation.tta_flags import add_tta_flags, tta_from_args
from hrnetseg.util.cli import ArgumentParser, positive_int, run_cli
from hrnetseg.util.errors import UserError, exception_line
from hrnetseg.util.files import require_file

TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4       # ONNX Runtime's kernels round differently from torch's
MIN_ARGMAX_AGREEMENT = 0.9999
EXIT_MISMATCH = 1
UPSTREAM_MODEL = os.path.join("lib", "models", "seg_hrnet_ocr.py")
UPSTREAM_BN_HELPER = os.path.join("lib", "models", "bn_helper.py")
UPSTREAM_CONFIG = os.path.join("experiments", "cityscapes",
                               "seg_hrnet_ocr_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml")
PRESET = "w48_ocr"   # the only network the upstream config above builds
OUTPUTS = (("output1", "aux"), ("output2", "main"))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description="Compare our HRNet-OCR model (and an ONNX export of it) with the patched upstream code "
                    "on the same checkpoint; exit 1 if a relative error is >= {:g}.".format(TOLERANCE))
    parser.add_argument("--upstream", required=True, metavar="DIR",
                        help="upstream HRNet-Semantic-Segmentation checkout (commit 0bbb288) with HRNet.patch applied")
    parser.add_argument("--pth", required=True, metavar="FILE",
                        help="checkpoint in the official format (model.* keys, loss.criterion.weight, "
                             "optionally wrapped as {'state_dict': ...})")
    parser.add_argument("--height", type=positive_int, default=256, help="input height (default: 256)")
    parser.add_argument("--width", type=positive_int, default=512, help="input width (default: 512)")
    parser.add_argument("--batch", type=positive_int, default=2, help="batch size (default: 2)")
    parser.add_argument("--onnx", metavar="FILE",
                        help="also run this ONNX export of ours in ONNX Runtime on the same input and compare")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input image (default: 0)")
    parser.add_argument("--image", metavar="FILE",
                        help="with the multi-scale flags: compare on this picture (read as upstream reads it) instead "
                             "of a random scene of --height x --width")
    add_tta_flags(parser)
    return parser


def multi_scale_requested(args: argparse.Namespace) -> bool:
    return (tuple(args.scales) != (1.0,) or args.flip or args.base_size is not None
            or tuple(args.crop_size) != DEFAULT_CROP_SIZE or args.image is not None)


def check_upstream_dir(folder: str) -> str:
    """Refuse a folder that is not an upstream checkout, or one without HRNet.patch applied."""
    model_file = os.path.join(folder, UPSTREAM_MODEL)
    if not os.path.isfile(model_file):
        raise UserError("{} is not an upstream HRNet-Semantic-Segmentation checkout: {} not found "
                        "(check out commit 0bbb288, the head of its HRNet-OCR branch)".format(folder, model_file))
    with open(model_file, encoding="utf-8", errors="replace") as fh:
        model_text = fh.read()
    bn_file = os.path.join(folder, UPSTREAM_BN_HELPER)
    bn_text = ""
    if os.path.isfile(bn_file):
        with open(bn_file, encoding="utf-8", errors="replace") as fh:
            bn_text = fh.read()
    if "np.int(" in model_text or "torch.nn.SyncBatchNorm" in bn_text or "def get_seg_model" not in model_text:
        raise UserError("HRNet.patch is not applied in {}: run `patch -p1 < HRNet.patch` inside it "
                        "(against commit 0bbb288)".format(folder))
    if not os.path.isfile(os.path.join(folder, UPSTREAM_CONFIG)):
        raise UserError("upstream config not found: {}".format(os.path.join(folder, UPSTREAM_CONFIG)))
    return folder


def import_upstream(folder: str):
    """Upstream's config and model modules, imported from DIR/lib as upstream's tools do."""
    lib = os.path.abspath(os.path.join(folder, "lib"))
    for name in ("config", "models", "datasets"):
        loaded = sys.modules.get(name)
        if loaded is not None and not os.path.abspath(getattr(loaded, "__file__", "") or "").startswith(lib):
            raise UserError("a module named {!r} is already imported from elsewhere; cannot import upstream's"
                            .format(name))
    try:
        import yacs  # noqa: F401
    except ImportError:
        raise UserError("yacs is needed for upstream's config: pip install -r requirements-dev.txt")
    sys.path.insert(0, lib)
    try:
        import models.seg_hrnet_ocr as seg_hrnet_ocr  # upstream lib/models
        from config import config as default_config  # upstream lib/config (yacs CfgNode)
    except Exception as exc:   # anything upstream raises on import is a setup problem, shown on one line
        raise UserError("cannot import upstream's model from {}: {}: {}".format(lib, type(exc).__name__, exc))
    return default_config, seg_hrnet_ocr


def upstream_config(folder: str):
    """Upstream's Cityscapes HRNet-OCR config (yacs), as tools/test.py merges it, and its model module."""
    default_config, seg_hrnet_ocr = import_upstream(folder)
    cfg = default_config.clone()
    cfg.defrost()
    cfg.merge_from_file(os.path.join(folder, UPSTREAM_CONFIG))
    cfg.MODEL.PRETRAINED = ""   # no ImageNet weights: the checkpoint is loaded next
    cfg.freeze()
    return cfg, seg_hrnet_ocr


def build_upstream_model(folder: str):
    cfg, seg_hrnet_ocr = upstream_config(folder)
    return seg_hrnet_ocr.get_seg_model(cfg)


def upstream_keys(state: Dict) -> Dict:
    """Upstream's own reading of a checkpoint: `last_layer` -> `aux_head`, `model.` removed, `loss.*` dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("loss."):
            continue
        out[key.replace("last_layer", "aux_head").replace("model.", "")] = value
    return out


def load_upstream_weights(model, pth: str) -> None:
    from hrnetseg.model.checkpoint import read_state_dict

    state = upstream_keys(read_state_dict(pth))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UserError("{} does not fit the upstream model (strict load): {}".format(
            pth, " ".join(first[:2])[:300]))


def random_image(batch: int, height: int, width: int, seed: int):
    """A seeded random RGB uint8 image and its upstream normalization (float32 NCHW)."""
    import torch

    from hrnetseg.data.cityscapes import MEAN, STD

    gen = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return raw, ((raw.float() / 255.0 - mean) / std).contiguous()


def run_onnx(path: str, raw, image) -> List:
    import onnxruntime as ort

    from hrnetseg.model.export import OUTPUT_NAMES

    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError("{} is not a loadable ONNX model: {}".format(path, exception_line(exc, 200)))
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise UserError("{} has {} inputs; expected one image input".format(path, len(inputs)))
    feed = raw.numpy() if inputs[0].type == "tensor(uint8)" else image.numpy()
    want = list(feed.shape)
    shape = inputs[0].shape
    if len(shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(shape, want)):
        raise UserError("{} takes input {} of shape {}; this run feeds {} (match --batch/--height/--width)".format(
            path, inputs[0].name, "x".join(str(d) for d in shape), "x".join(map(str, want))))
    names = [o.name for o in session.get_outputs()]
    if all(n in names for n in OUTPUT_NAMES):
        names = list(OUTPUT_NAMES)
    elif len(names) != 2:
        raise UserError("{} has {} outputs; expected output1 (aux) and output2 (main)".format(path, len(names)))
    return session.run(names, {inputs[0].name: feed})


# --- multi-scale testing -----------------------------------------------------------------------------------

def upstream_dataset(cfg, tta, list_folder: str):
    """Upstream's Cityscapes dataset object as tools/test.py builds it for testing (its base and crop size),
    over a one-line test list: only its transform and multi_scale_inference are used."""
    try:
        import datasets  # upstream lib/datasets (lib is on sys.path since upstream_config)
    except Exception as exc:
        raise UserError("cannot import upstream's datasets from {}: {}: {}".format(
            os.path.dirname(list_folder), type(exc).__name__, exc))
    with open(os.path.join(list_folder, "test.lst"), "w") as fh:
        fh.write("image.png\n")
    return datasets.cityscapes(root=list_folder + os.sep, list_path="test.lst", num_samples=None,
                               num_classes=cfg.DATASET.NUM_CLASSES, multi_scale=False, flip=False,
                               ignore_label=cfg.TRAIN.IGNORE_LABEL, base_size=tta.base_size,
                               crop_size=tuple(tta.crop_size), downsample_rate=1)


def parity_image(args: argparse.Namespace):
    """The BGR uint8 picture to compare on: --image as upstream reads it (cv2.IMREAD_COLOR), or a seeded
    smooth random scene (noise upsampled: regions, as in a photo, rather than a class per pixel)."""
    import cv2
    import numpy as np

    if args.image is not None:
        from hrnetseg.data.images import read_image, unreadable_reason

        image = read_image(args.image, cv2.IMREAD_COLOR)
        if image is None:
            raise UserError("--image {} {}".format(args.image, unreadable_reason(args.image)))
        return image
    rng = np.random.default_rng(args.seed)
    small = rng.integers(0, 256, (max(2, args.height // 16), max(2, args.width // 16), 3), dtype=np.uint8)
    return cv2.resize(small, (args.width, args.height), interpolation=cv2.INTER_CUBIC)


def compare_multi_scale(args: argparse.Namespace, folder: str) -> int:
    import tempfile

    from hrnetseg.evaluation.multiscale import check_memory, check_model_takes, main_output_runner, summed_scores

    tta = tta_from_args(args)
    picture = parity_image(args)
    check_memory(tta, [picture.shape[:2]])   # before torch, upstream's code and the models are loaded

    import numpy as np
    import torch

    from hrnetseg.backends import load_backend
    from hrnetseg.util.numerics import max_abs_error, relative_error

    cfg, seg_hrnet_ocr = upstream_config(folder)
    upstream = seg_hrnet_ocr.get_seg_model(cfg)
    load_upstream_weights(upstream, args.pth)
    upstream.eval()
    with tempfile.TemporaryDirectory() as list_folder:
        dataset = upstream_dataset(cfg, tta, list_folder)
    image = dataset.input_transform(picture)   # float32 H x W x 3, upstream's own normalization
    height, width = image.shape[:2]
    ours = {"PyTorch (ours)": (load_backend("torch", args.pth, device="cpu", preset=PRESET), TOLERANCE)}
    if args.onnx is not None:
        ours["ONNX Runtime (ours)"] = (load_backend("onnxruntime", args.onnx, device="cpu"), ONNX_TOLERANCE)
    for backend, _ in ours.values():
        check_model_takes(backend.input, tta.input_sizes(height, width))

    print("upstream {} multi_scale_inference vs ours: checkpoint {}, image {} ({}x{}), {}; {} forward passes".format(
        os.path.abspath(folder), args.pth, args.image or "random (seed {})".format(args.seed), height, width,
        tta.describe(), tta.forward_passes(height, width)), flush=True)
    with torch.no_grad():
        want = dataset.multi_scale_inference(cfg, upstream, torch.from_numpy(image.transpose(2, 0, 1).copy()[None]),
                                             scales=list(tta.scales), flip=tta.flip)[0].numpy()
    want_labels = want.argmax(axis=0)
    failed = []
    for label, (backend, tolerance) in ours.items():
        got = summed_scores(image, main_output_runner(backend, batch_size=args.batch), tta)
        rel = relative_error(got, want) if got.shape == want.shape else float("inf")
        agreement = float(np.mean(got.argmax(axis=0) == want_labels)) if got.shape == want.shape else 0.0
        print("{:<20} summed map: relative error {:.3g}, max abs error {:.3g}; argmax agreement {:.4%} "
              "(shape {})".format(label, rel, max_abs_error(got, want) if got.shape == want.shape else float("nan"),
                                  agreement, "x".join(map(str, want.shape))), flush=True)
        if not rel < tolerance or agreement < MIN_ARGMAX_AGREEMENT:   # NaN fails too
            failed.append("{} (relative error {:.3g} vs < {:g}, agreement {:.4%} vs >= {:.2%})".format(
                label, rel, tolerance, agreement, MIN_ARGMAX_AGREEMENT))
    if failed:
        print("MISMATCH: {}".format("; ".join(failed)))
        return EXIT_MISMATCH
    print("OK: the summed maps match upstream's multi_scale_inference")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    folder = check_upstream_dir(args.upstream)
    require_file(args.pth, "checkpoint")
    if args.onnx is not None:
        require_file(args.onnx, "ONNX model")
    if args.image is not None:
        require_file(args.image, "image")
    if multi_scale_requested(args):
        return compare_multi_scale(args, folder)

    import torch

    from hrnetseg.model.checkpoint import load_checkpoint
    from hrnetseg.model.network import build_model
    from hrnetseg.util.numerics import max_abs_error, relative_error

    upstream = build_upstream_model(folder)
    load_upstream_weights(upstream, args.pth)
    upstream.eval()
    ours = load_checkpoint(build_model(PRESET), args.pth, PRESET).eval()

    raw, image = random_image(args.batch, args.height, args.width, args.seed)
    with torch.no_grad():
        want = [t.numpy() for t in upstream(image.clone())]
        got = {"PyTorch (ours)": [t.numpy() for t in ours(image.clone())]}
    if args.onnx is not None:
        got["ONNX Runtime (ours)"] = run_onnx(args.onnx, raw, image)

    print("upstream {} vs ours: checkpoint {}, input {} (seed {}), pass if relative error < {:g}".format(
        os.path.abspath(folder), args.pth, "x".join(map(str, image.shape)), args.seed, TOLERANCE))
    worst = 0.0
    for label, outputs in got.items():
        for (name, role), mine, ref in zip(OUTPUTS, outputs, want):
            if tuple(mine.shape) != tuple(ref.shape):
                print("{:<20} {} ({}): shape {} != upstream {}".format(
                    label, name, role, "x".join(map(str, mine.shape)), "x".join(map(str, ref.shape))))
                worst = float("inf")
                continue
            rel = relative_error(mine, ref)
            worst = max(worst, rel) if rel == rel else float("inf")   # NaN counts as a failure
            print("{:<20} {} ({}): relative error {:.3g}, max abs error {:.3g} (shape {})".format(
                label, name, role, rel, max_abs_error(mine, ref), "x".join(map(str, ref.shape))))
    if worst < TOLERANCE:
        print("OK: every output matches upstream (worst relative error {:.3g})".format(worst))
        return 0
    print("MISMATCH: worst relative error {:.3g} >= {:g}".format(worst, TOLERANCE))
    return EXIT_MISMATCH


if __name__ == "__main__":
    run_cli(main)
