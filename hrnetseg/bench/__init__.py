"""The benchmark, `python -m hrnetseg.bench`: the speed of every stage on this machine, against the baselines.

Modules, in the order a run uses them:
- __main__: the flags and the run (the stages in order, the tables printed and recorded); `--_child JOB.json`
  runs one measurement.
- cases: the inference cases (backend:precision:batch[:compile]) and the baseline case.
- jobs: one child process per measurement: the parent's runner and the child's side.
- infer_stage: the plain export and the fp32 PyTorch reference outputs, then every case against the baseline.
- scenes: the synthetic scenes as model inputs (timed, held-out, calibration), and the check that no calibration
  scene is a held-out one.
- calibration: the int8 cases' model, calibrated from the bench's own scenes or given (--int8_onnx).
- accuracy: each case's mIoU on held-out scenes (--miou_scenes, trained weights only) and its change against the
  baseline.
- data_stages: preprocess and postprocess, the reference method against ours, with the exactness checks.
- reference: the reference methods (the ModelZoo scripts' preprocess and postprocess, restated).
- machine: what the machine is and how loaded it is; the peak memory of a child.
- report: the tables, the block's heading and its place in BENCHMARKS.md.
"""
from __future__ import annotations

import os

# The folder hrnetseg was imported from: the repository root of a checkout (an editable install too; the commit is
# read from it, BENCHMARKS.md lives in it), site-packages for an installed copy.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where the tables are appended by default: the checkout's BENCHMARKS.md, else (an installed copy) the current
# folder's.
DEFAULT_BENCHMARKS_MD = (os.path.join(REPO, "BENCHMARKS.md") if os.path.isfile(os.path.join(REPO, "BENCHMARKS.md"))
                         else "BENCHMARKS.md")

