"""The inference cases of the benchmark: `backend:precision:batch[:compile]`, and the baseline case."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Tuple

from hrnetseg.util.cli import positive_int
from hrnetseg.util.errors import UserError

BASELINE_SPEC = "onnxruntime:fp32:1"
# Cheap defaults (1024x2048 on 2 cores: ~13 s, ~6.5 s, ~15 s and ~7.5 s per image), the recommended CPU setting second.
DEFAULT_CASES = ("onnxruntime:fp32:1", "openvino:bf16:1", "torch:fp32:1", "torch:bf16:1")
INT8 = "int8"   # an int8-quantised ONNX (bench/calibration makes or takes it)
INT8_BACKENDS = ("onnxruntime", "openvino")   # those that run it; torch runs the checkpoint
CASE_OPTIONS = ("compile",)   # optional 4th field: torch:bf16:1:compile -> load_backend(..., compile=True)


@dataclass(frozen=True)
class Case:
    backend: str
    precision: str
    batch: int
    options: Tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        return ":".join([self.backend, self.precision, str(self.batch)] + list(self.options))

    @property
    def label(self) -> str:
        return " ".join([self.backend, self.precision, "bs{}".format(self.batch)] + list(self.options))


def parse_case(text: str) -> Case:
    from hrnetseg.backends import BACKENDS, PRECISIONS

    parts = [p.strip() for p in text.split(":")]
    if len(parts) < 3:
        raise UserError("--cases: {!r} is not backend:precision:batch[:compile] (like torch:bf16:1)".format(text))
    backend, precision, batch = parts[:3]
    if backend not in BACKENDS:
        raise UserError("--cases {!r}: unknown backend {!r}; choose one of {}".format(
            text, backend, ", ".join(BACKENDS)))
    if precision not in PRECISIONS:
        raise UserError("--cases {!r}: unknown precision {!r}; choose one of {}".format(
            text, precision, ", ".join(PRECISIONS)))
    if precision == INT8 and backend not in INT8_BACKENDS:
        raise UserError("--cases {!r}: int8 runs a quantised ONNX model, on {} (not {})".format(
            text, " or ".join(INT8_BACKENDS), backend))
    try:
        size = positive_int(batch)
    except argparse.ArgumentTypeError:
        raise UserError("--cases {!r}: the batch size must be a positive integer, not {!r}".format(text, batch))
    bad = [o for o in parts[3:] if o not in CASE_OPTIONS]
    if bad:
        raise UserError("--cases {!r}: unknown option {!r}; options: {}".format(text, bad[0], ", ".join(CASE_OPTIONS)))
    return Case(backend, precision, size, tuple(sorted(set(parts[3:]))))


def parse_cases(text: str) -> List[Case]:
    cases = []
    for part in text.split(","):
        if part.strip():
            case = parse_case(part.strip())
            if case not in cases:
                cases.append(case)
    if not cases:
        raise UserError("--cases is empty; give backend:precision:batch items, e.g. {}".format(",".join(DEFAULT_CASES)))
    return cases
