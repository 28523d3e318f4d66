"""ONNX export: parity with PyTorch in ONNX Runtime, dynamic batch, odd sizes, atomic writes, CLI; NaN or inf
never passes the export's check (exit 1, no file); bad flags are one line."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import HRNet_pth2onnx as pth2onnx
import hrnetseg.model.export as export
from hrnetseg.model.export import MAX_RELATIVE_ERROR, check_errors, export_onnx, output_errors
from hrnetseg.model.network import build_model, init_random_weights
from hrnetseg.model.random_weights import write_official_checkpoint
from hrnetseg.util.errors import UserError
from hrnetseg.util.numerics import relative_error

from helpers import (
    EXPORT_ARGS,
    REPO,
    TINY_PRESET,
    assert_failed_check,
    assert_user_error,
    no_runtime_warnings,
    save_state,
)
from helpers import run_in_process as cli


def tiny_model(seed=0):
    return init_random_weights(build_model("tiny_ocr"), seed).eval()


@pytest.fixture(scope="module")
def tiny_dynamic(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    report = export_onnx(tiny_model(), str(path), 128, 256)
    return path, report


def ort_run(path, image):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})


def test_export_names_opset_and_verification(tiny_dynamic):
    path, report = tiny_dynamic
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["output1", "output2"]
    assert model.opset_import[0].version == 11
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 128, 256]
    assert set(report.errors) == {"output1", "output2"}
    assert all(rel < 1e-5 for _, rel in report.errors.values())


def test_onnx_runtime_matches_pytorch_and_dynamic_batch_equals_single_runs(tiny_dynamic):
    path, _ = tiny_dynamic
    image = torch.randn(3, 3, 128, 256, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = [t.numpy() for t in tiny_model()(image)]
    got = ort_run(path, image.numpy())
    for g, w in zip(got, want):
        assert g.shape == (3, 19, 32, 64)
        assert relative_error(g, w) < 1e-5
    singles = [ort_run(path, image[i:i + 1].numpy()) for i in range(3)]
    for k in range(2):
        stacked = np.concatenate([s[k] for s in singles])
        assert relative_error(got[k], stacked) < 1e-5


def test_odd_size_and_fixed_batch_export(tmp_path):
    path = tmp_path / "odd.onnx"
    export_onnx(tiny_model(), str(path), 250, 500, batch=2)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 250, 500]
    image = np.random.default_rng(0).standard_normal((2, 3, 250, 500), dtype=np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in tiny_model()(torch.from_numpy(image))]
    for g, w in zip(ort_run(path, image), want):
        assert g.shape == (2, 19, 63, 125) and relative_error(g, w) < 1e-5


def test_failed_verification_exits_1_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "verify_onnx", lambda *a: {"output1": (1.0, 0.5), "output2": (0.0, 0.0)})
    with pytest.raises(UserError) as info:
        export_onnx(tiny_model(), str(tmp_path / "bad.onnx"), 64, 128)
    assert info.value.exit_code == 1 and "relative error 0.5" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(export, "verify_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(tiny_model(), str(tmp_path / "m.onnx"), 64, 128)
    assert list(tmp_path.iterdir()) == []


def test_relative_error_definition():
    b = np.array([3.0, 4.0])
    assert relative_error(b + [0.0, 0.5], b) == pytest.approx(0.1)
    assert relative_error(b, b) == 0.0


def test_cli_exports_an_official_w48_checkpoint(tmp_path, capsys):
    """The script's main() under run_cli in this process (torch is loaded here already; the tests below run
    its command line)."""
    import HRNet_pth2onnx

    from helpers import run_in_process

    pth = write_official_checkpoint(tmp_path / "hrnet.pth", "w48_ocr", seed=1, wrapped=True)
    out = tmp_path / "hrnet.onnx"
    result = run_in_process(HRNet_pth2onnx.main, ["--pth", pth, "--save_path", out, "--height", "64", "--width", "128",
                                                  "--batch", "2"], capsys)
    assert result.returncode == 0, result.stderr
    assert "relative error" in result.stdout and out.exists()
    rels = [float(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines() if "relative error" in line]
    assert len(rels) == 2 and max(rels) < 1e-5


def test_cli_random_weights_warns(tmp_path, run):
    result = run(["HRNet_pth2onnx.py", "--random-weights", "0", "--save-path", tmp_path / "t.onnx",
                  "--preset", "tiny_ocr", "--height", "64", "--width", "128"])
    assert result.returncode == 0, result.stderr
    assert "meaningless" in result.stderr and (tmp_path / "t.onnx").exists()


def test_help_and_argument_errors_do_not_import_torch():
    code = ("import sys, HRNet_pth2onnx as m\n"
            "try:\n    m.main(['--batch', 'zero', '--random_weights', '0'])\nexcept SystemExit as e:\n"
            "    assert e.code == 2, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "expected 'dynamic' or a positive integer" in result.stderr


def test_verification_reuses_the_trace_forward(tmp_path, monkeypatch):
    """The export's trace runs the real forward once; the check compares ORT with those outputs."""
    model = tiny_model()
    calls = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda image: calls.append(1) or original(image))
    report = export_onnx(model, str(tmp_path / "m.onnx"), 64, 128)
    assert all(rel < 1e-5 for _, rel in report.errors.values())
    assert len(calls) == 1


@pytest.mark.parametrize("opset", ["10", "30"])
def test_cli_refuses_an_opset_the_model_cannot_use(tmp_path, capsys, opset):
    """The script's main() under run_cli in this process (the tests above run the real command line)."""
    import HRNet_pth2onnx

    from helpers import assert_user_error, run_in_process

    result = run_in_process(HRNet_pth2onnx.main, ["--random_weights", "0", "--preset", "tiny_ocr", "--height", "64",
                                                  "--width", "128", "--save_path", tmp_path / "m.onnx", "--opset",
                                                  opset], capsys)
    assert_user_error(result, "--opset {}".format(opset))
    assert not list(tmp_path.iterdir())


# --- NaN or inf never passes the export's check ------------------------------------------------------------

def finite_pair(shape=(1, 19, 4, 8)):
    rng = np.random.default_rng(0)
    want = rng.standard_normal(shape).astype(np.float32)
    return want + np.float32(1e-7), want


@pytest.mark.parametrize("side,bad", [("ONNX Runtime's", np.nan), ("ONNX Runtime's", np.inf), ("PyTorch's", np.nan),
                                      ("PyTorch's", -np.inf)])
def test_nan_or_inf_in_either_output_fails_the_check(side, bad):
    got, expected = finite_pair()
    outputs = {"ONNX Runtime's": [got, got.copy()], "PyTorch's": [expected, expected.copy()]}
    outputs[side][1][0, 3, 2, 1] = bad
    with no_runtime_warnings(), pytest.raises(UserError) as info:
        output_errors(outputs["ONNX Runtime's"], outputs["PyTorch's"])
    assert info.value.exit_code == 1
    assert "{} output2 holds 1 {} of 608 values".format(side, "NaN" if math.isnan(bad) else "inf") in str(info.value)


def test_finite_outputs_give_their_errors():
    got, expected = finite_pair()
    errors = output_errors([got, got], [expected, expected])
    assert set(errors) == {"output1", "output2"}
    assert all(0 < rel <= MAX_RELATIVE_ERROR and 0 < max_abs < 1e-6 for max_abs, rel in errors.values())


def test_a_nan_relative_error_never_passes():
    """max() over (3.5e-7, nan) is 3.5e-7: the check looks at every output and NaN fails it."""
    with no_runtime_warnings():
        assert math.isnan(relative_error(np.array([np.nan, 1.0]), np.array([1.0, 1.0])))
        assert math.isnan(relative_error(np.array([1.0, 1.0]), np.array([np.inf, 1.0])))
    with pytest.raises(UserError) as info:
        check_errors({"output1": (3.5e-7, 3.5e-7), "output2": (float("nan"), float("nan"))})
    assert info.value.exit_code == 1 and "output2: relative error nan" in str(info.value)


def test_weights_that_overflow_in_the_forward_pass_fail_the_export_and_write_nothing(tmp_path, capsys,
                                                                                    official_state):
    """Finite weights (one conv scaled by 1e30) whose forward pass overflows float32: NaN on both sides."""
    def scale(state):
        state["model.conv1.weight"] = state["model.conv1.weight"] * 1e30
    pth = save_state(tmp_path / "huge.pth", official_state, scale)
    out = tmp_path / "hrnet.onnx"
    with no_runtime_warnings():
        result = cli(pth2onnx.main, ["--pth", pth, "--save_path", out] + EXPORT_ARGS, capsys)
    assert_failed_check(result, "holds", "NaN", "random check input", "not writing {}".format(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.pth"]


# --- flags ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,fragment", [
    (["--height", "0"], "--height: expected a positive integer"), (["--width", "x"], "--width: expected a positive"),
    (["--batch", "0"], "--batch: expected 'dynamic' or a positive integer"), (["--opset", "-1"], "--opset"),
    (["--random_weights", str(2 ** 70)], "expected a seed from 0 to 18446744073709551615"),
    (["--random_weights", "-1"], "expected a seed from 0 to"),
    (["--preset", "w96"], "--preset: invalid choice"),
])
def test_bad_export_flags_are_one_line_errors(tmp_path, capsys, flags, fragment):
    argv = ["--save_path", tmp_path / "m.onnx"] + (["--random_weights", "0"] if "--random_weights" not in flags
                                                    else []) + flags
    assert_user_error(cli(pth2onnx.main, argv, capsys), fragment)
    assert not list(tmp_path.iterdir())


def test_an_export_too_large_for_memory_is_one_line(tmp_path, capsys):
    result = cli(pth2onnx.main, ["--random_weights", "0", "--preset", TINY_PRESET, "--height", "10000000",
                                 "--width", "10000000", "--save_path", tmp_path / "m.onnx"], capsys)
    assert_user_error(result, "not enough memory to export", "1 x 3 x 10000000 x 10000000")
    assert not list(tmp_path.iterdir())


def test_batch_flag_takes_dynamic_in_any_case_and_says_so_when_refused(capsys):
    parser = pth2onnx.build_parser()
    assert parser.parse_args(["--random_weights", "0", "--batch", "Dynamic"]).batch is None
    assert parser.parse_args(["--random_weights", "0", "--batch", "4"]).batch == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--random_weights", "0", "--batch", "dynamc"])
    assert "--batch: expected 'dynamic' or a positive integer, got 'dynamc'" in capsys.readouterr().err
