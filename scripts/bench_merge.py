"""The multi-scale + flip merge against the model's inference, per image: the merge as first written
(hrnetseg/evaluation/merge_reference.py), the fast one (multiscale_merge.py) and the GPU merge run on the CPU
(multiscale_merge_torch.py), same logits, same run.

    python scripts/bench_merge.py --height 256 --width 512 --repeats 3

The tiny preset (random weights, seed 2) on the torch backend, on one CPU thread (torch and the BLAS), upstream's
six scales with flip, base size the image's long side and crop size the image (upstream's Cityscapes setting at
this size). Prints ms/image of inference and of each merge (best of --repeats, the merges interleaved), the merge
as a share of inference, and the fast merge's relative error and argmax agreement against the reference merge.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from hrnetseg.util.cli import ArgumentParser, positive_int, run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--height", type=positive_int, default=256)
    parser.add_argument("--width", type=positive_int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (best counts; default 3)")
    args = parser.parse_args(argv)

    import cv2
    import torch

    from hrnetseg.backends import load_backend
    from hrnetseg.evaluation.merge_reference import reference_summed_scores
    from hrnetseg.evaluation.multiscale import UPSTREAM_SCALES, TestTimeAugmentation, main_output_runner, scale_runs
    from hrnetseg.evaluation.multiscale_merge import merged_labels, merged_scores
    from hrnetseg.model.random_weights import write_official_checkpoint

    torch.set_num_threads(1)
    height, width = args.height, args.width
    tta = TestTimeAugmentation(UPSTREAM_SCALES, True, max(height, width), (height, width))
    small = np.random.default_rng(0).standard_normal((max(2, height // 16), max(2, width // 16), 3))
    image = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    with tempfile.TemporaryDirectory() as folder:
        pth = write_official_checkpoint(os.path.join(folder, "tiny.pth"), "tiny_ocr", seed=2)
        backend = load_backend("torch", str(pth), device="cpu", preset="tiny_ocr", threads=1)
    run_main = main_output_runner(backend, batch_size=1)
    from hrnetseg.evaluation import multiscale_merge_torch

    times = {"inference": [], "reference merge": [], "fast merge": [], "torch merge (cpu)": []}
    for _ in range(args.repeats):
        began = time.perf_counter()
        runs = [(run.without_batch(), run_main(run.batch)) for run in scale_runs(image, tta)]
        times["inference"].append(time.perf_counter() - began)
        began = time.perf_counter()
        reference_summed_scores(height, width, runs, True).argmax(0)
        times["reference merge"].append(time.perf_counter() - began)
        began = time.perf_counter()
        merged_labels(height, width, runs, True)
        times["fast merge"].append(time.perf_counter() - began)
        began = time.perf_counter()
        multiscale_merge_torch.merged_labels(height, width, runs, True, "cpu")
        times["torch merge (cpu)"].append(time.perf_counter() - began)
    want = reference_summed_scores(height, width, runs, True)
    got = merged_scores(height, width, runs, True)
    labels = merged_labels(height, width, runs, True)
    torch_labels = multiscale_merge_torch.merged_labels(height, width, runs, True, "cpu")
    best = {name: 1000 * min(values) for name, values in times.items()}
    print("{}x{}, tiny_ocr, {}, {} forward passes, 1 thread, best of {}; load average {}".format(
        height, width, tta.describe(), tta.forward_passes(height, width), args.repeats,
        " ".join("{:.2f}".format(v) for v in os.getloadavg())))
    for name, value in best.items():
        share = "" if name == "inference" else "  ({:.2f} x inference)".format(value / best["inference"])
        print("{:<18} {:>10.1f} ms/image{}".format(name, value, share))
    print("fast / reference merge: {:.2f}x faster".format(best["reference merge"] / best["fast merge"]))
    print("fast against reference: relative error {:.2e}, argmax agreement {:.4%}".format(
        float(np.linalg.norm(got - want) / np.linalg.norm(want)), float(np.mean(labels == want.argmax(0)))))
    print("torch merge (the GPU merge, here on the CPU) against reference: argmax agreement {:.4%}".format(
        float(np.mean(torch_labels == want.argmax(0)))))
    return 0


if __name__ == "__main__":
    run_cli(main)
