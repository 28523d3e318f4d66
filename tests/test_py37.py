"""The Atlas-side steps run in the Python that CANN and ais_bench live in (3.7 for CANN 6), without torch."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from helpers import REPO, run_script

# The Atlas-side subpackages, whole (their __init__ files too), and the entry points the Atlas host runs.
ATLAS_PACKAGES = ("util", "data", "runner", "evaluation", "atlas", "graph")
ATLAS_SIDE = sorted(path.relative_to(REPO).as_posix() for package in ATLAS_PACKAGES
                    for path in (REPO / "hrnetseg" / package).glob("*.py")) + [
    "hrnetseg/__init__.py", "hrnetseg/model/__init__.py", "hrnetseg/model/presets.py", "hrnetseg/metrics.py",
    "hrnetseg/sample_data.py", "HRNet_preprocess.py", "HRNet_postprocess.py", "performance_optimize_resize.py"]
CLAIM = "Python 3.7"   # what a module's docstring says when it must run there


def test_every_module_that_claims_python_37_is_checked():
    modules = sorted(REPO.glob("hrnetseg/**/*.py")) + sorted(REPO.glob("*.py")) + sorted(REPO.glob("scripts/*.py"))
    claiming = {path.relative_to(REPO).as_posix() for path in modules
                if CLAIM in (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "")}
    assert claiming and not claiming - set(ATLAS_SIDE), sorted(claiming - set(ATLAS_SIDE))


def test_atlas_side_code_is_python_37():
    pytest.importorskip("vermin")
    command = [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())"]
    result = subprocess.run(command + ["--target=3.7-", "--no-tips", "--violations", "--eval-annotations",
                                       *ATLAS_SIDE], cwd=str(REPO), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "ray"):   # neither is needed on the Atlas host
            raise ImportError("{} is not installed on the Atlas host".format(name))
sys.meta_path.insert(0, NoTorch())
import runpy
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_steps_run_without_torch(sample_data_root, sample_results_path, tmp_path):
    prep = run_script(["-c", BLOCK_TORCH, "HRNet_preprocess.py", "--src_path", sample_data_root, "--save_path",
                       tmp_path / "prep", "--limit", "1"])
    assert prep.returncode == 0, prep.stderr
    post = run_script(["-c", BLOCK_TORCH, "HRNet_postprocess.py", "--res_path", sample_results_path, "--data_path",
                       sample_data_root / "cityscapes" / "gtFine" / "val", "--save_path", tmp_path / "r.json",
                       "--save_vis", tmp_path / "vis", "--save_confusion", tmp_path / "c.npz"])
    assert post.returncode == 0, post.stderr
    merge = run_script(["-c", BLOCK_TORCH, "-m", "hrnetseg.metrics", "merge", tmp_path / "c.npz", "--save_path",
                        tmp_path / "m.json"])
    assert merge.returncode == 0, merge.stderr
    check = run_script(["-c", BLOCK_TORCH, "-m", "hrnetseg.atlas.acc_perf", "check_batch_sizes", tmp_path / "prep",
                        "1"])
    assert check.returncode == 0, check.stderr
    sidecar = run_script(["-c", BLOCK_TORCH, "-m", "hrnetseg.atlas.om_sidecar", "check", tmp_path / "none.om", "--prep",
                          tmp_path / "prep", "--batch", "1"])
    gate = run_script(["-c", BLOCK_TORCH, "-m", "hrnetseg.atlas.ci_gate", "check", "--batch_sizes", "1", "--min_fps",
                       "1:2"])
    assert sidecar.returncode == 0 and gate.returncode == 0, sidecar.stderr + gate.stderr
    assert sidecar.stderr.startswith("warning: no none.om.json beside") and gate.stderr == ""
    assert "torch" not in prep.stderr + post.stderr + merge.stderr + check.stderr
