"""The mIoU of each inference case on held-out synthetic scenes (--miou_scenes N), and its change against the
baseline in points.

The scenes are those models/README.md scores the reference model on (sample_data --seed 0), at the bench's size.
Each distinct case runs them in a child of its own, after the timed runs: the case's backend on each scene, its
main output (output2, the OCR head) -> logits_to_labels (bilinear, align_corners=True, argmax) -> our confusion
matrix (hrnetseg.evaluation.metrics), as the postprocess scores. Trained weights only: on random weights an mIoU
means nothing.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.bench.report import progress_note
from hrnetseg.util.errors import UserError

MAIN_OUTPUT = 1   # output2, the OCR head: the output the postprocess scores


def check_miou_request(miou_scenes: int, pth: Optional[str], stages: Sequence[str]) -> None:
    """Refuse --miou_scenes without trained weights or without the infer stage, before any work."""
    if not miou_scenes:
        return
    if pth is None:
        raise UserError("--miou_scenes needs trained weights (--pth CHECKPOINT, e.g. models/reference_tiny_ocr.pth "
                        "--preset tiny_ocr): an mIoU of random weights means nothing")
    if "infer" not in stages:
        raise UserError("--miou_scenes scores the inference cases: add infer to --stages")


def miou_job(job: dict) -> dict:
    """Child side: the case's backend on every held-out scene; the confusion matrix and the scores."""
    from hrnetseg.backends import load_backend
    from hrnetseg.backends.batching import batch_size_for, pad_batch
    from hrnetseg.evaluation.metrics import ConfusionMatrix
    from hrnetseg.evaluation.upsample_argmax import logits_to_labels

    backend = load_backend(job["backend"], job["model"], device=job["device"], precision=job["precision"],
                           preset=job["preset"])
    batch = batch_size_for(backend, None)   # the model's fixed batch, else 1; a short batch is padded
    matrix = ConfusionMatrix()
    for row_path, labels_path in job["scenes"]:
        row, train_ids = np.load(row_path), np.load(labels_path)
        outputs = backend.run(pad_batch([row], batch, row.shape, np.float32))
        labels = logits_to_labels(np.asarray(outputs[MAIN_OUTPUT][0], dtype=np.float32), *train_ids.shape)
        matrix.update(labels, train_ids, row_path)
    scores = matrix.compute()
    return {"miou": scores["mIoU"], "images": scores["images"], "confusion_matrix": scores["confusion_matrix"]}


def case_mious(run: Callable[[dict], dict], jobs: Sequence[Tuple[object, dict]],
               scenes: Sequence[Tuple[str, str]]) -> Dict[object, dict]:
    """{case: {"miou", "images", ...} or {"error"}} for each distinct case; jobs: (case, its infer job)."""
    results: Dict[object, dict] = {}
    for case, job in jobs:
        if case in results:
            continue
        progress_note("mIoU of {} on {} held-out scene(s) ...".format(case.label, len(scenes)))
        result = run({"job": "miou", "backend": job["backend"], "precision": job["precision"],
                      "preset": job["preset"], "model": job["model"], "device": job["device"],
                      "scenes": [list(pair) for pair in scenes]})
        if "error" in result:
            progress_note("  failed: " + result["error"])
        else:
            progress_note("  mIoU {:.2f}%".format(100.0 * result["miou"]))
        results[case] = result
    return results
