"""HRNet.patch and scripts/check_upstream_parity.py: our model against the original HRNet-OCR code.

The upstream code is never part of this project. Give a checkout of upstream HRNet-Semantic-Segmentation
at commit 0bbb288 through the environment to run the upstream tests:

    HRNET_UPSTREAM=/path/to/unpatched/checkout            (HRNet.patch must apply: patch --dry-run)
    HRNET_UPSTREAM_PATCHED=/path/to/patched/checkout      (parity of our model with upstream's)

With only HRNET_UPSTREAM set, the parity test patches a copy of its lib/ and config in a temporary folder.
Without either, those tests are skipped; the CLI tests always run.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, assert_user_error, run_script

SCRIPT = "scripts/check_upstream_parity.py"
PATCH = REPO / "HRNet.patch"
UPSTREAM = os.environ.get("HRNET_UPSTREAM")
UPSTREAM_PATCHED = os.environ.get("HRNET_UPSTREAM_PATCHED")
CONFIG = "experiments/cityscapes/seg_hrnet_ocr_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml"

needs_upstream = pytest.mark.skipif(not UPSTREAM, reason="set HRNET_UPSTREAM to an upstream checkout at 0bbb288")
needs_any_upstream = pytest.mark.skipif(
    not (UPSTREAM or UPSTREAM_PATCHED),
    reason="set HRNET_UPSTREAM_PATCHED (patched) or HRNET_UPSTREAM (unpatched) upstream checkout at 0bbb288")


def stderr_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


# --- always run -------------------------------------------------------------------------------------

def test_help_is_fast_and_names_the_flags():
    result = run_script([SCRIPT, "--help"], timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--upstream", "--pth", "--height", "--width", "--batch", "--onnx", "--scales", "--flip",
                 "--base_size", "--crop_size", "--image"):
        assert flag in result.stdout


def test_folder_without_upstream_code_is_refused_in_one_line(tmp_path):
    result = run_script([SCRIPT, "--upstream", tmp_path, "--pth", tmp_path / "missing.pth"], timeout=60)
    assert_user_error(result, "seg_hrnet_ocr.py not found")
    assert len(stderr_lines(result)) == 1, result.stderr


def test_unpatched_upstream_is_refused_in_one_line(tmp_path):
    models = tmp_path / "lib" / "models"
    models.mkdir(parents=True)
    (models / "seg_hrnet_ocr.py").write_text(
        "last_inp_channels = np.int(np.sum(pre_stage_channels))\ndef get_seg_model(cfg, **kwargs):\n    pass\n")
    (models / "bn_helper.py").write_text("BatchNorm2d_class = BatchNorm2d = torch.nn.SyncBatchNorm\n")
    result = run_script([SCRIPT, "--upstream", tmp_path, "--pth", tmp_path / "missing.pth"], timeout=60)
    assert_user_error(result, "HRNet.patch is not applied")
    assert len(stderr_lines(result)) == 1, result.stderr


def test_scales_beyond_the_memory_are_refused_before_upstream_is_imported(tmp_path):
    # a folder that passes the checkout check, with no upstream code to import: the refusal comes first
    models = tmp_path / "lib" / "models"
    models.mkdir(parents=True)
    (models / "seg_hrnet_ocr.py").write_text("def get_seg_model(cfg, **kwargs):\n    pass\n")
    (tmp_path / CONFIG).parent.mkdir(parents=True)
    (tmp_path / CONFIG).write_text("")
    (tmp_path / "w.pth").write_bytes(b"")
    result = run_script([SCRIPT, "--upstream", tmp_path, "--pth", tmp_path / "w.pth", "--height", "64", "--width",
                         "128", "--base_size", str(1 << 20)], timeout=60)
    assert_user_error(result, "base size 1048576", "of memory for a 64x128 image", "is available")
    assert len(stderr_lines(result)) == 1, result.stderr


def test_patch_is_a_reviewable_unified_diff_of_upstream_lib():
    text = PATCH.read_text()
    old = re.findall(r"^--- (\S+)", text, flags=re.M)
    new = re.findall(r"^\+\+\+ (\S+)", text, flags=re.M)
    assert old and len(old) == len(new)
    for a, b in zip(old, new):
        assert a.startswith("a/lib/") and b == "b/" + a[2:], (a, b)
    added = [line for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert any("torch.nn.BatchNorm2d" in line for line in added)
    assert not any("np.int(" in line or "np.int)" in line or ".cuda()" in line for line in added)
    assert len(added) < 60, "keep HRNet.patch minimal"


# --- need an upstream checkout ----------------------------------------------------------------------

@needs_upstream
def test_patch_applies_to_upstream_checkout():
    if shutil.which("patch") is None:
        pytest.skip("the patch tool is not installed")
    result = subprocess.run(["patch", "-p1", "--forward", "--dry-run", "-i", str(PATCH)], cwd=UPSTREAM,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout and "Reversed" not in result.stdout, result.stdout


@pytest.fixture(scope="module")
def patched_upstream(tmp_path_factory) -> str:
    """HRNET_UPSTREAM_PATCHED, or a patched copy of HRNET_UPSTREAM's lib/ and config."""
    if UPSTREAM_PATCHED:
        return UPSTREAM_PATCHED
    if shutil.which("patch") is None:
        pytest.skip("the patch tool is not installed")
    copy = tmp_path_factory.mktemp("upstream")
    shutil.copytree(Path(UPSTREAM) / "lib", copy / "lib")
    (copy / CONFIG).parent.mkdir(parents=True)
    shutil.copy2(Path(UPSTREAM) / CONFIG, copy / CONFIG)
    result = subprocess.run(["patch", "-p1", "--forward", "-i", str(PATCH)], cwd=str(copy),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(copy)


@pytest.fixture(scope="module")
def official_w48(tmp_path_factory) -> Path:
    """W48 random weights (seed 0) in the wrapped official format, aux head named last_layer."""
    from hrnetseg.model.random_weights import write_official_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "official_w48.pth"
    write_official_checkpoint(path, preset="w48_ocr", seed=0, wrapped=True, legacy_last_layer=True)
    return path


@needs_any_upstream
def test_our_model_matches_upstream_on_the_same_weights(patched_upstream, official_w48):
    result = run_script([SCRIPT, "--upstream", patched_upstream, "--pth", official_w48,
                         "--height", 64, "--width", 128, "--batch", 2], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    errors = [float(x) for x in re.findall(r"relative error (\S+),", result.stdout)]
    assert len(errors) == 2 and max(errors) < 1e-5, result.stdout


@needs_any_upstream
def test_a_different_onnx_model_is_reported_as_a_mismatch(patched_upstream, official_w48, tmp_path):
    from hrnetseg.model.export import export_onnx
    from hrnetseg.model.network import build_model, init_random_weights

    onnx_path = tmp_path / "tiny.onnx"   # same output shapes as W48, different network: must not pass
    export_onnx(init_random_weights(build_model("tiny_ocr"), 0).eval(), str(onnx_path), 32, 64)
    result = run_script([SCRIPT, "--upstream", patched_upstream, "--pth", official_w48, "--height", 32,
                         "--width", 64, "--batch", 1, "--onnx", onnx_path], timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH" in result.stdout
    assert "ONNX Runtime (ours)" in result.stdout


# 32 x 64 image, base 64, crop 24 x 40: scale 0.5 runs whole (16 x 32); 1.5 makes 48 x 96 in 2 x 3 windows,
# the last column shifted back to 56..96
MULTI_SCALE = ["--height", 32, "--width", 64, "--scales", "0.5,1.5", "--flip", "--base_size", 64,
               "--crop_size", "24,40"]


@needs_any_upstream
def test_multi_scale_summed_map_matches_upstreams_multi_scale_inference(patched_upstream, official_w48):
    result = run_script([SCRIPT, "--upstream", patched_upstream, "--pth", official_w48] + MULTI_SCALE, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "14 forward passes" in result.stdout
    match = re.search(r"PyTorch \(ours\)\s+summed map: relative error (\S+),.*argmax agreement ([\d.]+)%",
                      result.stdout)
    assert match and float(match.group(1)) < 1e-5 and float(match.group(2)) >= 99.99, result.stdout


@needs_any_upstream
def test_a_different_model_fails_the_multi_scale_check(patched_upstream, official_w48, tmp_path):
    from hrnetseg.model.export import export_onnx
    from hrnetseg.model.network import build_model, init_random_weights

    onnx_path = tmp_path / "tiny_any_size.onnx"   # any size, 19 classes, but another network: must not pass
    export_onnx(init_random_weights(build_model("tiny_ocr"), 0).eval(), str(onnx_path), 32, 64, dynamic_hw=True)
    one_scale = MULTI_SCALE[:4] + ["--scales", "1.5", "--base_size", 64, "--crop_size", "24,40"]   # 6 windows
    result = run_script([SCRIPT, "--upstream", patched_upstream, "--pth", official_w48, "--onnx", onnx_path]
                        + one_scale, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH: ONNX Runtime (ours)" in result.stdout and "PyTorch (ours)" not in result.stdout.split(
        "MISMATCH")[1]
