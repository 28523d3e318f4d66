"""--backend auto (hrnetseg.backends.auto): the candidates under stand-in CPU feature sets and packages, the check
of a reduced-precision candidate against the reference path (stand-in backends), its kept verdicts and hostile
cache files, the first line and the records of predict and evaluate, and the runner's default left alone."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hrnetseg.backends import Backend, InputSpec, auto
from hrnetseg.backends.auto import Candidate, candidates, resolve
from hrnetseg.backends.verdicts import VerdictCache
from hrnetseg.util.errors import UserError

from helpers import TINY_PRESET, run_in_process

BF16 = ("avx2", "avx512f", "avx512_bf16")
PLAIN = ("avx2", "avx512f")


def names(found):
    return [str(c) for c in found]


@pytest.fixture
def packages(monkeypatch):
    """Which of onnxruntime, openvino, torch count as installed: set `installed` to change it."""
    installed = {"onnxruntime", "openvino", "torch"}
    monkeypatch.setattr(auto, "importable", lambda name: name in installed)
    return installed


# --- the candidates ---------------------------------------------------------------------------------------------

def test_candidates_follow_the_cpu_flags_and_the_packages(packages):
    assert names(candidates("onnx", "cpu", frozenset(BF16))[0]) == ["openvino bf16", "onnxruntime fp32"]
    assert names(candidates("onnx", "cpu", frozenset(("amx_bf16",)))[0])[0] == "openvino bf16"
    found, missing = candidates("onnx", "cpu", frozenset(PLAIN))
    assert names(found) == ["onnxruntime fp32"] and "neither avx512_bf16 nor amx_bf16" in missing[0]
    assert names(candidates("onnx", "gpu", frozenset(BF16))[0]) == ["onnxruntime fp32"]
    assert names(candidates("pth", "cpu", frozenset(BF16))[0]) == ["torch bf16", "torch fp32"]
    assert names(candidates("pth", "cpu", frozenset(PLAIN))[0]) == ["torch fp32"]
    assert names(candidates("pth", "gpu", frozenset(PLAIN))[0]) == ["torch fp16", "torch fp32"]
    packages.discard("openvino")
    found, missing = candidates("onnx", "cpu", frozenset(BF16))
    assert names(found) == ["onnxruntime fp32"] and "OpenVINO is not installed" in missing[0]
    packages.discard("onnxruntime")
    packages.add("openvino")
    assert names(candidates("onnx", "cpu", frozenset(PLAIN))[0]) == ["openvino fp32"]
    packages.discard("torch")
    assert candidates("pth", "cpu", frozenset(BF16))[0] == []


def test_an_int8_model_runs_int8_on_the_cpu(packages):
    found, missing = candidates("onnx", "cpu", frozenset(PLAIN), int8=True)
    assert names(found) == ["openvino int8", "onnxruntime int8"] and missing == []
    found, missing = candidates("onnx", "gpu", frozenset(BF16), int8=True)
    assert names(found) == ["onnxruntime int8"] and "run on the CPU" in missing[0]
    packages.discard("openvino")
    assert names(candidates("onnx", "cpu", frozenset(BF16), int8=True)[0]) == ["onnxruntime int8"]


def test_cpu_flags_from_the_environment_and_proc(monkeypatch):
    monkeypatch.setenv(auto.CPU_FLAGS_ENV, "avx2,avx512_bf16  sse2")
    assert auto.cpu_flags() == frozenset(("avx2", "avx512_bf16", "sse2"))
    assert auto.cpu_flags(["x"]) == frozenset(("x",))
    monkeypatch.delenv(auto.CPU_FLAGS_ENV)
    assert isinstance(auto.cpu_flags(), frozenset)   # this machine's, whatever they are


# --- the check and its kept verdicts -------------------------------------------------------------------------

class Stand(Backend):
    """A backend with fixed logits (2 outputs), `noise` added to the main one; counts the runs per (name, precision)."""

    opened: list = []

    def __init__(self, kind, precision, noise=0.0, runs_as=None, offset=0.0):
        self.name, self.precision, self.device = kind, runs_as or precision, "cpu"
        self.offset = offset
        self.input = InputSpec("image", np.dtype("float32"), (None, 3, None, None))
        self.output_names = ["aux", "main"]
        self.noise = noise

    def run(self, batch):
        h, w = batch.shape[2] // 8, batch.shape[3] // 8
        rng = np.random.default_rng(0)
        logits = rng.normal(self.offset, 3.0, (batch.shape[0], 19, h, w)).astype(np.float32)
        return [logits, logits + np.float32(self.noise) * rng.normal(0, 3.0, logits.shape).astype(np.float32)]


def opener(noise=None, runs_as=None, fails=(), offset=0.0):
    """A stand-in load_backend: `noise` per candidate name ("openvino bf16": 0.05), a log of what was opened;
    offset: added to every logit (a large one keeps the relative error small while the labels change)."""
    opened = []

    def open_backend(kind, model, precision="fp32", **_):
        opened.append("{} {}".format(kind, precision))
        if "{} {}".format(kind, precision) in fails:
            raise UserError("cannot open it")
        return Stand(kind, precision, (noise or {}).get("{} {}".format(kind, precision), 0.0),
                     (runs_as or {}).get("{} {}".format(kind, precision)), offset)

    open_backend.opened = opened
    return open_backend


@pytest.fixture
def model(tmp_path, tiny_onnx_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_onnx_path.read_bytes())
    return str(path)


def test_a_close_candidate_is_chosen_once_checked_then_from_the_cache(tmp_path, model, packages):
    first = opener({"openvino bf16": 1e-3})
    choice = resolve(model, "cpu", flags=BF16, cache_dir=str(tmp_path / "c"), open_backend=first)
    assert (choice.backend, choice.precision) == ("openvino", "bf16")
    assert first.opened == ["openvino bf16", "onnxruntime fp32"]
    line = choice.first_line()
    assert line.startswith("backend: openvino bf16 on cpu (auto: fastest verified here, rel error 1.0e-03 <= 1e-02")
    assert "against onnxruntime fp32; --backend onnxruntime for the reference path)" in line
    again = opener()
    assert resolve(model, "cpu", flags=BF16, cache_dir=str(tmp_path / "c"), open_backend=again).first_line() == line
    assert again.opened == []
    os.utime(model, ns=(1, 1))   # the model changed: checked again
    resolve(model, "cpu", flags=BF16, cache_dir=str(tmp_path / "c"), open_backend=again)
    assert again.opened == ["openvino bf16", "onnxruntime fp32"]


@pytest.mark.parametrize("case", ["off", "labels", "fp32 instead", "cannot open", "nan"])
def test_a_candidate_that_fails_its_check_is_refused_and_the_next_chosen(tmp_path, model, packages, case):
    stand = {"off": opener({"openvino bf16": 0.05}), "labels": opener({"openvino bf16": 1.0}, offset=1000.0),
             "fp32 instead": opener(runs_as={"openvino bf16": "fp32"}),
             "cannot open": opener(fails=("openvino bf16",)),
             "nan": opener({"openvino bf16": float("nan")})}[case]
    choice = resolve(model, "cpu", flags=BF16, cache_dir=str(tmp_path / "c"), open_backend=stand)
    assert (choice.backend, choice.precision) == ("onnxruntime", "fp32")
    assert choice.first_line().startswith("backend: onnxruntime fp32 on cpu (auto: the reference path; "
                                          "openvino bf16: ")
    assert {"off": "rel error 5.0e-02 > 1e-02", "labels": "% alike (< 99%)", "fp32 instead": "runs fp32 here",
            "cannot open": "cannot run here: cannot open it", "nan": "holds"}[case] in choice.first_line()
    again = opener()
    assert resolve(model, "cpu", flags=BF16, cache_dir=str(tmp_path / "c"), open_backend=again).backend == \
        "onnxruntime" and again.opened == []   # the failure is kept


def test_precision_with_auto_picks_only_the_candidates_that_run_it(tmp_path, model, packages):
    stand = opener()
    choice = resolve(model, "cpu", "fp32", flags=BF16, cache_dir=str(tmp_path / "c"), open_backend=stand)
    assert (choice.backend, choice.precision, stand.opened) == ("onnxruntime", "fp32", [])
    assert resolve(model, "cpu", "bf16", flags=BF16, cache_dir=str(tmp_path / "c"),
                   open_backend=stand).backend == "openvino"
    with pytest.raises(UserError, match=r"--backend auto --precision bf16: no backend here runs this onnx model at "
                                        r"bf16 on the cpu \(candidates: onnxruntime fp32\); no openvino bf16"):
        resolve(model, "cpu", "bf16", flags=PLAIN, cache_dir=str(tmp_path / "c"), open_backend=stand)
    with pytest.raises(UserError, match="every candidate .* failed its check here"):
        resolve(model, "cpu", "bf16", flags=BF16, cache_dir=str(tmp_path / "d"),
                open_backend=opener({"openvino bf16": 0.5}))


def hostile(path, case):
    """Replace the kept verdict at `path` by something not to trust."""
    good = json.loads(path.read_text())
    path.unlink()
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_text(json.dumps(good)[:40])
    elif case == "nan":
        path.write_text(json.dumps(dict(good, rel_error=float("nan"))))
    elif case == "above bound":
        path.write_text(json.dumps(dict(good, rel_error=0.5)))
    elif case == "foreign":
        path.write_text(json.dumps(dict(good, key=dict(good["key"], model="/elsewhere.onnx"))))
    elif case == "wrong types":
        path.write_text(json.dumps(dict(good, passed="yes")))
    elif case == "array":
        path.write_text("[1, 2]")
    elif case == "fifo":
        os.mkfifo(str(path))
    elif case == "symlink":
        (path.parent / "elsewhere.json").write_text(json.dumps(good))
        os.symlink("elsewhere.json", str(path))


@pytest.mark.parametrize("case", ["empty", "truncated", "nan", "above bound", "foreign", "wrong types", "array",
                                  "fifo", "symlink"])
def test_a_hostile_cache_file_is_ignored_and_rewritten(tmp_path, model, packages, case):
    cache = str(tmp_path / "c")
    resolve(model, "cpu", flags=BF16, cache_dir=cache, open_backend=opener({"openvino bf16": 1e-3}))
    (kept,) = (tmp_path / "c" / "backend-verdicts").glob("*.json")
    hostile(kept, case)
    again = opener({"openvino bf16": 1e-3})
    assert resolve(model, "cpu", flags=BF16, cache_dir=cache, open_backend=again).backend == "openvino"
    if case == "fifo":   # never opened, never replaced: checked again each time
        assert again.opened and kept.is_fifo()
        return
    assert again.opened == ["openvino bf16", "onnxruntime fp32"]
    assert not kept.is_symlink() and json.loads(kept.read_text())["passed"] is True
    if case == "symlink":
        assert json.loads((tmp_path / "c" / "backend-verdicts" / "elsewhere.json").read_text())["rel_error"] < 1e-2


def test_a_cache_that_cannot_be_written_costs_a_note_not_the_run(tmp_path, model, packages, capsys):
    (tmp_path / "c").write_text("a file where the cache folder belongs")
    choice = resolve(model, "cpu", flags=BF16, cache_dir=str(tmp_path / "c"), open_backend=opener())
    assert choice.backend == "openvino" and "verdict is not kept" in capsys.readouterr().err


def test_the_cache_entry_key_holds_what_the_verdict_depends_on(tmp_path, model, packages):
    resolve(model, "cpu", flags=BF16, cache_dir=str(tmp_path / "c"), open_backend=opener())
    (kept,) = (tmp_path / "c" / "backend-verdicts").glob("*.json")
    key = json.loads(kept.read_text())["key"]
    assert key["model"] == os.path.realpath(model) and key["backend"] == "openvino" and key["precision"] == "bf16"
    assert {"model_size", "model_mtime_ns", "device", "cpu_flags", "versions", "bounds"} <= set(key)
    other = VerdictCache(str(tmp_path / "c"))
    assert other.get(dict(key, cpu_flags="0" * 16), (1e-2, 0.99)) is None


def test_a_real_check_of_openvino_fp32_against_onnxruntime_on_the_tiny_model(model):
    """The real backends and probe: the tiny export fixes 64x128, so the probe is 64x128 (not the 256x512 of a
    model with open axes). fp32 against fp32, so the verdict does not hang on this CPU's bf16."""
    pytest.importorskip("openvino")
    from hrnetseg.backends.probe import check_candidate

    verdict = check_candidate(model, Candidate("openvino", "fp32"), Candidate("onnxruntime", "fp32"),
                              dict(preset=TINY_PRESET, input_dtype="float32", threads=1, device="cpu"),
                              auto.load_backend, {}, (1e-2, 0.99))
    assert verdict["passed"] and verdict["rel_error"] < 1e-4 and verdict["probe"] == "1x3x64x128"


# --- predict, evaluate and the runner ------------------------------------------------------------------------

@pytest.fixture
def checked_bf16(monkeypatch, packages):
    """A machine with bf16 whose check of openvino bf16 passes (its figures stand-ins); the runs are real."""
    pytest.importorskip("openvino")
    from hrnetseg.backends import probe

    monkeypatch.setenv(auto.CPU_FLAGS_ENV, " ".join(BF16))
    monkeypatch.setattr(probe, "check_candidate", lambda *a, **k: {
        "passed": True, "reason": "stand-in", "rel_error": 6.1e-3, "agreement": 0.998, "probe": "1x3x64x128"})


def predict_args(tmp_path, model, *extra):
    import cv2

    cv2.imwrite(str(tmp_path / "photo.png"), np.full((64, 128, 3), 90, np.uint8))
    return ["--onnx", model, "--input", str(tmp_path / "photo.png"), "--output", str(tmp_path / "out"),
            "--save", "trainIds", "--base_size", "128"] + list(extra)


def test_predict_auto_says_its_choice_first_and_records_the_resolved_one(tmp_path, model, checked_bf16, capsys):
    from hrnetseg.prediction import cli as predict

    result = run_in_process(predict.main, predict_args(tmp_path, model), capsys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "backend: openvino bf16 on cpu (auto: fastest verified here, rel error 6.1e-03 <= 1e-02, labels 99.80% alike "
        "(>= 99%) against onnxruntime fp32; --backend onnxruntime for the reference path)")
    settings = list(json.loads((tmp_path / "out" / "predict_record.json").read_text())["settings"].values())
    assert settings and all((s["backend"], s["precision"]) == ("openvino", "bf16") for s in settings)
    # explicit --backend: as before, no choice line, the reference path recorded
    result = run_in_process(predict.main, predict_args(tmp_path, model, "--backend", "onnxruntime"), capsys)
    assert result.returncode == 0 and result.stdout.startswith("predict: ")
    settings = list(json.loads((tmp_path / "out" / "predict_record.json").read_text())["settings"].values())
    assert all((s["backend"], s["precision"]) == ("onnxruntime", "fp32") for s in settings)


def test_evaluate_auto_says_its_choice_first_and_keeps_it_in_the_result(tmp_path, tiny_data_root, model,
                                                                        checked_bf16, capsys):
    from hrnetseg.evaluation import cli as evaluate

    base = ["--datasets_path", str(tiny_data_root), "--onnx", model, "--limit", "1", "--save_path",
            str(tmp_path / "r.json")]
    result = run_in_process(evaluate.main, base, capsys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("backend: openvino bf16 on cpu (auto: fastest verified here")
    kept = json.loads((tmp_path / "r.json").read_text())["backend"]
    assert kept["backend"] == "openvino" and kept["chosen_by"] == "--backend auto" and "6.1e-03" in kept["why"]
    result = run_in_process(evaluate.main, base + ["--backend", "onnxruntime"], capsys)
    assert result.stdout.startswith("evaluate: ")
    assert json.loads((tmp_path / "r.json").read_text())["backend"] == {
        "backend": "onnxruntime", "precision": "fp32", "device": "cpu", "chosen_by": "--backend",
        "why": "--backend onnxruntime"}


def test_the_runner_default_stays_onnxruntime_fp32(tmp_path, model, tiny_prep_path, checked_bf16):
    from hrnetseg.runner.cli import build_parser

    from helpers import run_infer

    args = build_parser().parse_args(["--model", model, "--input", "x"])
    assert (args.backend, args.precision) == (None, "fp32")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", model, "--input", "x", "--backend", "auto"])
    assert run_infer(model, tiny_prep_path, tmp_path / "res") == 0
    summary = json.loads((tmp_path / "res" / "bs_summary.json").read_text())
    assert (summary["backend"], summary["precision"]) == ("onnxruntime", "fp32")


def test_predict_auto_runs_a_quantised_model_as_int8_on_openvino(tmp_path, tiny_int8_onnx_path, capsys):
    """The real check (no stand-ins): an int8 model is run at int8, its outputs checked finite, and the choice said."""
    pytest.importorskip("openvino")
    from hrnetseg.prediction import cli as predict

    result = run_in_process(predict.main, predict_args(tmp_path, str(tiny_int8_onnx_path)), capsys)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("backend: openvino int8 on cpu (auto: fastest verified here, it ran here"), first
    settings = list(json.loads((tmp_path / "out" / "predict_record.json").read_text())["settings"].values())
    assert settings and all((s["backend"], s["precision"]) == ("openvino", "int8") for s in settings)
    import cv2

    saved = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (tmp_path / "out").rglob("*.png")]
    assert len(saved) == 1 and saved[0].shape == (64, 128) and saved[0].max() < 19
