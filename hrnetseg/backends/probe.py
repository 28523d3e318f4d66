"""--backend auto's check of one reduced-precision candidate against the reference path, on one probe input.

The probe: a seeded synthetic street scene (hrnetseg.data.sample_scenes), through the upstream
transform for a float32 input or as raw pixels for a uint8 one, at the size the model takes: its fixed height and
width, or PROBE_SIZE (256x512, a Cityscapes-shaped quarter of 1024x2048 that a dynamic model runs in about a
second) where they are open; batch 1 unless the model fixes another. The main output (1 of 2) of the candidate
is compared with the reference's: relative error (hrnetseg.util.numerics) and the agreement of the labels
upsampled to the probe's size (hrnetseg.evaluation.upsample_argmax, as evaluate scores them).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import numpy as np

from hrnetseg.util.errors import UserError

PROBE_SIZE = (256, 512)
PROBE_SEED = 20240


def probe_picture(height: int, width: int, seed: int = PROBE_SEED) -> np.ndarray:
    """height x width x 3 uint8 BGR: a synthetic street scene of the project's generator (hrnetseg.data.sample_scenes,
    the demo's and the bench's scenes), the same for every run with the same seed."""
    from hrnetseg.data.sample_scenes import scene_labels, scene_photo

    rng = np.random.RandomState([seed])
    return scene_photo(scene_labels(height, width, rng), rng)


def probe_batch(shape: Tuple[Optional[int], ...], dtype) -> np.ndarray:
    """The probe as a batch for an input of `shape` (N, C, H, W; None where open) and `dtype`."""
    from hrnetseg.data.cityscapes import reference_transform

    batch, _, height, width = (shape + (None,) * 4)[:4]
    height, width = height or PROBE_SIZE[0], width or PROBE_SIZE[1]
    bgr = probe_picture(height, width)
    if np.dtype(dtype) == np.uint8:
        image = np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))   # RGB CHW, as the uint8 export takes
    else:
        image = reference_transform(bgr).astype(dtype)
    return np.repeat(image[None], batch or 1, axis=0)


def _main(outputs) -> np.ndarray:
    from hrnetseg.evaluation.multiscale import main_output_index

    return outputs[main_output_index(None, len(outputs))]


def label_agreement(actual: np.ndarray, expected: np.ndarray, height: int, width: int) -> float:
    """The share of pixels whose upsampled label (first image of the batch) is the same in both."""
    from hrnetseg.evaluation.upsample_argmax import logits_to_labels

    return float(np.mean(logits_to_labels(actual[0], height, width) == logits_to_labels(expected[0], height, width)))


def _failed(reason: str) -> dict:
    return {"passed": False, "reason": reason, "rel_error": None, "agreement": None}


def check_candidate(model: str, candidate, reference, settings: dict, open_backend: Callable, state: dict,
                    bounds: Tuple[Optional[float], Optional[float]]) -> dict:
    """The verdict on `candidate` ({"passed", "reason", "rel_error", "agreement", "probe"}). `state` keeps the
    reference's probe output between candidates; a reference that cannot run the model is the run's error."""
    from hrnetseg.util.numerics import nonfinite_counts, relative_error

    opened = dict(preset=settings["preset"], input_dtype=settings["input_dtype"], threads=settings["threads"],
                  device=settings["device"])
    try:
        backend = open_backend(candidate.backend, model, precision=candidate.precision, **opened)
    except UserError as exc:
        return _failed("cannot run here: {}".format(exc))
    if backend.precision != candidate.precision:   # e.g. OpenVINO on a CPU without bf16 runs fp32
        return _failed("runs {} here, not {}".format(backend.precision, candidate.precision))
    batch = probe_batch(backend.input.shape, backend.input.dtype)
    size = "x".join(map(str, batch.shape))
    try:
        actual = _main(backend.run(batch))
    except UserError as exc:
        return _failed("failed on the {} probe: {}".format(size, exc))
    del backend
    bad = nonfinite_counts(actual)
    if bad:
        return _failed("its output holds {} on the {} probe".format(bad, size))
    max_error, min_agreement = bounds
    if max_error is None:   # int8: no float reference in the file
        return {"passed": True, "reason": "ran on the {} probe, outputs finite".format(size), "rel_error": None,
                "agreement": None, "probe": size}
    if state.get("size") != size:
        ref = open_backend(reference.backend, model, precision=reference.precision, **opened)
        state["size"], state["expected"] = size, _main(ref.run(batch))
    expected = state["expected"]
    if expected.shape != actual.shape:
        return _failed("its main output is {}, the reference's {}".format(actual.shape, expected.shape))
    error = relative_error(actual, expected)
    agreement = label_agreement(actual, expected, batch.shape[2], batch.shape[3])
    if not math.isfinite(error):
        return _failed("its output cannot be compared with {}'s (NaN or inf)".format(reference))
    verdict = {"rel_error": error, "agreement": agreement, "probe": size}
    if error > max_error:
        return dict(verdict, passed=False, reason="rel error {:.1e} > {:.0e} against {} on the {} probe".format(
            error, max_error, reference, size))
    if agreement < min_agreement:
        return dict(verdict, passed=False, reason="labels {:.2f}% alike (< {:g}%) against {} on the {} probe".format(
            100.0 * agreement, 100.0 * min_agreement, reference, size))
    return dict(verdict, passed=True, reason="rel error {:.1e} <= {:.0e} against {} on the {} probe".format(
        error, max_error, reference, size))
