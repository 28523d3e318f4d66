"""Streaming evaluation (python -m hrnetseg.evaluate): the bin pipeline's confusion matrix exactly, overlapping
stages, Ctrl-C, errors in a stage, refusals."""
from __future__ import annotations

import json
import re
import shutil
import threading
import time

import numpy as np
import pytest

from hrnetseg.backends import Backend, InputSpec
from hrnetseg.data import cityscapes
from hrnetseg.evaluation import streaming

from helpers import (
    EVALUATE,
    TINY_HEIGHT,
    TINY_IMAGES,
    TINY_PRESET,
    TINY_WIDTH,
    assert_user_error,
    run_in_process,
    run_script,
)

STAGE_LINE = re.compile(r"^(decode|infer|evaluate)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%$", re.M)
RATIO = re.compile(r"wall / slowest stage busy \((\w+)\) = ([\d.]+)")
WALL = re.compile(r"wall ([\d.]+) s for (\d+) images")


def bin_pipeline(tmp, data, model, batch, capsys, extra=()):
    """HRNet_preprocess.py -> python -m hrnetseg.infer -> HRNet_postprocess.py, as a user runs them: the
    confusion matrix and result.json of the main output. The runner's main() runs under run_cli in this
    process (torch and ONNX Runtime are loaded here already; its command line is tested in test_runner_cli.py)."""
    from hrnetseg.runner import cli as infer

    prep, results = tmp / "prep", tmp / "results"
    steps = [["HRNet_preprocess.py", "--src_path", data, "--save_path", prep, "--workers", "1"],
             [infer.main, "--model", model, "--input", prep, "--output", results, "--output_dirname",
              "bs{}".format(batch), "--batchsize", str(batch)] + list(extra),
             ["HRNet_postprocess.py", "--res_path", results / "bs{}".format(batch), "--data_path", data,
              "--save_path", tmp / "bins.json", "--save_confusion", tmp / "bins.npz", "--workers", "1",
              "--report_worst", "2"]]
    for step in steps:
        result = run_in_process(step[0], step[1:], capsys) if callable(step[0]) else run_script(step)
        assert result.returncode == 0, (step, result.stdout, result.stderr)
    return tmp / "bins.npz", tmp / "bins.json"


def run_streaming(tmp, data, model_flags, batch, extra=()):
    result = run_script(EVALUATE + ["--datasets_path", data, "--batchsize", str(batch), "--save_path",
                                    tmp / "stream.json", "--save_confusion", tmp / "stream.npz"]
                        + list(model_flags) + list(extra))
    assert result.returncode == 0, (result.stdout, result.stderr)
    return tmp / "stream.npz", tmp / "stream.json", result


def same_matrix(a, b) -> None:
    with np.load(str(a)) as one, np.load(str(b)) as two:
        assert one["matrix"].sum() > 0
        np.testing.assert_array_equal(one["matrix"], two["matrix"])
        assert int(one["images"]) == int(two["images"]) == TINY_IMAGES
        assert list(one["ids"]) == list(two["ids"])


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_same_confusion_matrix_as_the_bin_pipeline(tmp_path, tiny_data_root, tiny_onnx_path, tiny_pth_path, backend,
                                                   capsys):
    # 5 images: onnxruntime at batch 4 (a padded last batch of 1), torch at batch 2 (a padded last batch of 1)
    if backend == "onnxruntime":
        batch, model, flags, extra = 4, tiny_onnx_path, ["--onnx", tiny_onnx_path], []
    else:
        batch, model, flags, extra = 2, tiny_pth_path, ["--pth", tiny_pth_path], ["--preset", TINY_PRESET]
    bins_npz, bins_json = bin_pipeline(tmp_path, tiny_data_root, model, batch, capsys, extra)
    page = tmp_path / "report.html"
    stream_npz, stream_json, result = run_streaming(tmp_path, tiny_data_root, flags + ["--backend", backend], batch,
                                                    extra + ["--report", page, "--report_worst", "2"])
    same_matrix(bins_npz, stream_npz)
    # same result.json, same mIoU, and the same two worst images with the same per-image figures; evaluate's
    # result adds what ran (the bin pipeline's summary holds it)
    streamed = json.loads(stream_json.read_text())
    assert streamed.pop("backend") == {"backend": backend, "precision": "fp32", "device": "cpu",
                                       "chosen_by": "--backend", "why": "--backend {}".format(backend)}
    assert streamed == json.loads(bins_json.read_text())
    assert len(json.loads(stream_json.read_text())["worst_images"]) == 2
    html = page.read_text()
    assert "The 2 worst images" in html and html.count('src="data:image/png;base64,') == 8
    assert "report: {}".format(page) in result.stdout

    out = result.stdout
    assert "mIoU" in out and "{} on cpu (fp32), batch size {}".format(backend, batch) in out
    stages = {m.group(1): m for m in STAGE_LINE.finditer(out)}
    assert sorted(stages) == ["decode", "evaluate", "infer"], out
    assert all(int(m.group(3)) == TINY_IMAGES and float(m.group(4)) > 0 for m in stages.values())
    wall = WALL.search(out)
    assert wall and int(wall.group(2)) == TINY_IMAGES and float(wall.group(1)) > 0
    assert RATIO.search(out), out
    assert "model loaded in" in out


def test_aux_output_and_limit(tmp_path, tiny_data_root, tiny_onnx_path):
    from hrnetseg.evaluation.metrics import ConfusionMatrix

    result = run_script(EVALUATE + ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--limit", "3",
                                    "--output_index", "0", "--save_confusion", tmp_path / "aux.npz"])
    assert result.returncode == 0, result.stderr
    assert "output 0 (output1)" in result.stdout
    matrix = ConfusionMatrix.load(str(tmp_path / "aux.npz"))
    assert matrix.images == 3 and matrix.matrix.sum() > 0


def test_ctrl_c_stops_and_reports_what_was_evaluated(tmp_path, tiny_data_root, tiny_onnx_path):
    # the hook sends the process a real SIGINT once 2 images are evaluated
    result = run_script(EVALUATE + ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--batchsize", "1",
                                    "--save_path", tmp_path / "r.json"],
                        env={streaming.INTERRUPT_AFTER_ENV: "2"}, timeout=60)
    assert result.returncode == 130, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "interrupted: 2 of {} images evaluated".format(TINY_IMAGES) in result.stdout, result.stdout
    assert re.search(r"^mIoU\s+[\d.]+", result.stdout, re.M) and "images 2," in result.stdout
    assert RATIO.search(result.stdout) and not (tmp_path / "r.json").exists()


def test_refusals_are_one_clear_line(tmp_path, tiny_data_root, tiny_onnx_path, tiny_pth_path, capsys):
    """The first refusal runs the real command line; the rest run its main() under run_cli in this process."""
    from hrnetseg.evaluation import cli as evaluate

    def refused(*fragments, data=tiny_data_root, model=("--onnx", tiny_onnx_path), extra=()):
        args = ["--datasets_path", data] + list(model) + list(extra)
        assert_user_error(run_in_process(evaluate.main, args, capsys), *fragments)

    assert_user_error(run_script(EVALUATE + ["--datasets_path", tmp_path / "nowhere", "--onnx", tiny_onnx_path],
                                 timeout=60), "not found")
    refused("not found", model=("--onnx", tmp_path / "missing.onnx"))
    refused("--output_index 2", extra=["--output_index", "2"])
    refused("--save_path", extra=["--save_path", tmp_path / "no" / "r.json"])
    refused("fp32", extra=["--precision", "bf16"])
    refused("does not fit", model=("--pth", tiny_pth_path))   # a tiny checkpoint is not the default w48_ocr
    result = run_in_process(evaluate.main, ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--pth",
                                            tiny_pth_path], capsys)
    assert result.returncode == 2 and "not allowed with" in result.stderr

    big = tmp_path / "big"
    from hrnetseg.data.sample_scenes import generate

    generate(str(big), n=1, height=TINY_HEIGHT * 2, width=TINY_WIDTH, seed=1)
    refused("the images are {}x{}".format(TINY_HEIGHT * 2, TINY_WIDTH), data=big)

    # an error inside a stage (the third image is corrupt) stops the run with one line, no hang
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data_root, broken)
    victim = sorted(broken.rglob("*" + cityscapes.IMAGE_SUFFIX))[2]
    victim.write_bytes(victim.read_bytes()[:200])
    refused("cannot be decoded", victim.name, data=broken, extra=["--batchsize", "1"])
    victim.unlink()
    label = sorted(broken.rglob("*" + cityscapes.LABEL_SUFFIX))[0]
    label.unlink()
    refused("no gtFine label", data=broken)


# --- the pipeline in-process, with a stand-in model ----------------------------------------------------

class SleepyBackend(Backend):
    """A model that takes `seconds` per batch (sleeping, like a GPU: no CPU used) and returns flat logits."""

    name, device = "stub", "cpu"

    def __init__(self, seconds: float, fail_at: int = -1) -> None:
        self.seconds, self.fail_at, self.calls = seconds, fail_at, 0
        self.input = InputSpec("image", np.dtype("float32"), (None, 3, TINY_HEIGHT, TINY_WIDTH))
        self.output_names = ["output1", "output2"]

    def run(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("stand-in model failure")
        time.sleep(self.seconds)
        logits = np.zeros((batch.shape[0], 19, TINY_HEIGHT // 4, TINY_WIDTH // 4), np.float32)
        return [logits, logits]


def many_samples(root, count):
    found = cityscapes.find_images(str(root))
    return [found[i % len(found)]._replace(id="{}_{:03d}".format(found[i % len(found)].id, i)) for i in range(count)]


def test_stages_overlap(tiny_data_root, monkeypatch):
    # every stage made to take 20 ms per image (sleeping), 30 images: run one after the other they would
    # take 3 x 0.6 s; overlapped, the wall time is the slowest stage's busy time plus filling and draining
    step = 0.02
    real_decode, real_labels = streaming.decode, streaming.logits_to_labels

    def slow_decode(*args):
        time.sleep(step)
        return real_decode(*args)

    def slow_labels(*args):
        time.sleep(step)
        return real_labels(*args)

    monkeypatch.setattr(streaming, "decode", slow_decode)
    monkeypatch.setattr(streaming, "logits_to_labels", slow_labels)
    samples = many_samples(tiny_data_root, 30)
    pipeline = streaming.StreamingEvaluation(SleepyBackend(step), samples, "float32", (TINY_HEIGHT, TINY_WIDTH),
                                            batch=1, output_index=1, queue_size=4)
    matrix = pipeline.run()
    assert matrix.images == 30 and len(set(matrix.ids)) == 30
    busy = max(stage.busy_per_worker_s for stage in pipeline.stages)
    assert all(stage.items == 30 for stage in pipeline.stages)
    assert busy >= 30 * step
    assert pipeline.wall_s <= 1.15 * busy + 0.1, (pipeline.wall_s, [s.busy_s for s in pipeline.stages])
    assert pipeline.wall_s < 0.6 * sum(stage.busy_s for stage in pipeline.stages)


def test_an_error_in_a_stage_reaches_the_caller_and_stops_the_others(tiny_data_root):
    samples = many_samples(tiny_data_root, 12)
    pipeline = streaming.StreamingEvaluation(SleepyBackend(0.0, fail_at=3), samples, "float32",
                                            (TINY_HEIGHT, TINY_WIDTH), batch=2, output_index=1, queue_size=2)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="stand-in model failure"):
        pipeline.run()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:   # threads exit after their last step
        time.sleep(0.01)
    assert threading.active_count() == before and pipeline.finished.is_set()
    assert pipeline.matrix.images <= 4


def test_two_workers_per_stage_keep_the_batches(tiny_data_root, tiny_onnx_path):
    from hrnetseg.backends import load_backend

    backend = load_backend("onnxruntime", str(tiny_onnx_path), device="cpu")
    samples = cityscapes.find_images(str(tiny_data_root))

    def matrix(decode_workers, eval_workers):
        return streaming.StreamingEvaluation(backend, samples, "float32", (TINY_HEIGHT, TINY_WIDTH), batch=2,
                                            output_index=1, queue_size=3, decode_workers=decode_workers,
                                            eval_workers=eval_workers).run()

    one, two = matrix(1, 1), matrix(2, 3)
    np.testing.assert_array_equal(one.matrix, two.matrix)
    assert sorted(one.ids) == sorted(two.ids) == [s.id for s in samples]
