"""How far apart two models' outputs are, and whether they hold NaN or inf: the figures every check reports.

The export (ONNX Runtime against PyTorch), the Resize rewrite (rewritten against original), the upstream
parity check and the benchmark (each backend against ONNX Runtime fp32) all compare with these.

Valid Python 3.7, no torch: the Resize rewrite uses it on the Atlas host.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from hrnetseg.util.errors import UserError


def relative_error(actual, expected) -> float:
    """||a - b||_2 / ||b||_2 over the whole tensor (||a - b||_2 where b is all zeros): the project's one
    definition.

    NaN when either side holds NaN or inf, so it never passes a `<=` bound (computed without numpy's
    "invalid value" warnings). Shapes broadcast as in numpy: callers compare like with like.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if not (np.isfinite(actual).all() and np.isfinite(expected).all()):
        return float("nan")
    denom = np.linalg.norm(expected.ravel())
    diff = np.linalg.norm((actual - expected).ravel())
    return float(diff / denom) if denom > 0 else float(diff)


def max_abs_error(actual, expected) -> float:
    """max |a - b|; NaN when either side holds NaN or inf."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if not (np.isfinite(actual).all() and np.isfinite(expected).all()):
        return float("nan")
    return float(np.max(np.abs(actual - expected))) if actual.size else 0.0


def nonfinite_counts(array) -> Optional[str]:
    """None when every value is finite, else e.g. "12 NaN and 3 inf of 4864 values"."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return None
    counts = (("NaN", int(np.isnan(array).sum())), ("inf", int(np.isinf(array).sum())))
    found = ["{} {}".format(count, label) for label, count in counts if count]
    return "{} of {} values".format(" and ".join(found), array.size) if found else None


def check_outputs_finite(outputs: Sequence[object], names: Sequence[str], whose: str, hint: str = "") -> None:
    """UserError (exit code 1) naming the first output that holds NaN or inf."""
    for name, values in zip(names, outputs):
        bad = nonfinite_counts(values)
        if bad:
            raise UserError("{} {} holds {} on the random check input{}".format(
                whose, name, bad, " ({})".format(hint) if hint else ""), exit_code=1)
