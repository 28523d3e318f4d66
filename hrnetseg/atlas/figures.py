"""How eval_acc_perf.sh reads and writes its figures: plain decimals in (never "nan" or "inf" from a log), fps
out with two decimals (three significant digits below 1 fps). The table (acc_perf) and the gate (ci_gate) share it.

Valid Python 3.7, no torch: the Atlas host runs it.
"""
from __future__ import annotations

from hrnetseg.util.cli import plain_decimal


def decimal_value(text: str) -> float:
    """The value of a plain decimal number in ASCII (digits, point, exponent), NaN for anything else."""
    value = plain_decimal(text)
    return float("nan") if value is None else value


def format_fps(fps: float) -> str:
    """Two decimals, or three significant digits below 1 fps (a slow CPU run must not show as 0.00)."""
    return "{:.2f}".format(fps) if fps >= 1 else "{:.3g}".format(fps)
