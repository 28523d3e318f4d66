"""The local runner (python -m hrnetseg.infer): ais_bench's files and summary lines, batching, backends, refusals."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from hrnetseg.util.numerics import relative_error

from helpers import (
    OUT_SHAPE,
    RUNNER,
    TINY_HEIGHT,
    TINY_IMAGES,
    TINY_PRESET,
    TINY_WIDTH,
    assert_user_error,
    manifest_ids,
    run_in_process,
)

# The parsing scripts/eval_acc_perf.sh applies to ais_bench's output and to ours.
THROUGHPUT = re.compile(r"throughput 1000\*batchsize\.mean\(([\d.]+)\)/NPU_compute_time\.mean\(([\d.]+)\):"
                        r"\s*([\d.]+)\s*$", re.M)
COMPUTE = re.compile(r"NPU_compute_time \(ms\): min = [\d.]+, max = [\d.]+, mean = [\d.]+, median = [\d.]+, "
                     r"percentile\(99%\) = [\d.]+")


def read_out(path) -> np.ndarray:
    return np.fromfile(str(path), dtype=np.float32).reshape(OUT_SHAPE)


@pytest.fixture(scope="module")
def bs1_bs4(tmp_path_factory, tiny_onnx_path, tiny_prep_path):
    """The runner at bs1 and bs4 over the 5 tiny images: (results folder, {batch: completed process})."""
    from helpers import run_script

    out = tmp_path_factory.mktemp("infer") / "results"
    runs = {}
    for batch in (1, 4):
        runs[batch] = run_script(RUNNER + ["--model", tiny_onnx_path, "--input", tiny_prep_path, "--output", out,
                                           "--output_dirname", "bs{}".format(batch), "--batchsize", str(batch),
                                           "--device", "cpu"])
        assert runs[batch].returncode == 0, runs[batch].stderr
    return out, runs


def test_one_file_per_input_and_output_named_like_ais_bench(bs1_bs4, tiny_prep_path):
    out, _ = bs1_bs4
    ids = manifest_ids(tiny_prep_path)
    assert len(ids) == TINY_IMAGES
    for batch in (1, 4):
        names = sorted(p.name for p in (out / "bs{}".format(batch)).iterdir())
        assert names == sorted("{}_{}.bin".format(i, k) for i in ids for k in (0, 1))
        for name in names:
            assert (out / "bs{}".format(batch) / name).stat().st_size == 4 * int(np.prod(OUT_SHAPE))


def test_bs1_and_bs4_agree_and_padding_is_dropped(bs1_bs4, tiny_prep_path):
    out, _ = bs1_bs4
    for sample_id in manifest_ids(tiny_prep_path):     # the 5th image rode in a padded batch of 4
        for k in (0, 1):
            one = read_out(out / "bs1" / "{}_{}.bin".format(sample_id, k))
            four = read_out(out / "bs4" / "{}_{}.bin".format(sample_id, k))
            assert np.isfinite(one).all() and one.std() > 0
            assert relative_error(four, one) <= 1e-4


def test_summary_lines_and_json(bs1_bs4):
    out, runs = bs1_bs4
    # ais_bench's B: the batch size of every run (bs4's padded last batch of 1 too); the real images: 1, then 2.5
    for batch, images_per_run in ((1, 1.0), (4, 2.5)):
        result = runs[batch]
        assert COMPUTE.search(result.stdout), result.stdout
        match = THROUGHPUT.search(result.stdout)
        assert match and match.group(1) == str(batch), result.stdout
        summary = json.loads((out / "bs{}_summary.json".format(batch)).read_text())
        assert summary["backend"] == "onnxruntime" and summary["device"] == "cpu" and summary["precision"] == "fp32"
        assert summary["batchsize"] == batch and summary["images"] == TINY_IMAGES
        assert summary["batchsize_mean"] == batch and summary["real_images_per_run"] == images_per_run
        assert summary["output_dtype"] == "float32"
        times = summary["compute_time_ms"]
        assert times["min"] <= times["median"] <= times["max"] and times["min"] <= times["p99"] <= times["max"]
        assert summary["throughput"] == pytest.approx(1000 * batch / times["mean"])
        assert summary["throughput_real_images"] == pytest.approx(1000 * images_per_run / times["mean"])
        assert float(match.group(3)) == pytest.approx(summary["throughput"], rel=1e-3)
        assert summary["warmup_count"] == 1              # ais_bench's default


def test_output_indices_npy_loop_and_file_list(run, tmp_path, tiny_onnx_path, tiny_prep_path, bs1_bs4):
    ids = manifest_ids(tiny_prep_path)
    files = ",".join(str(tiny_prep_path / "{}.bin".format(i)) for i in ids[:2])
    result = run(RUNNER + ["--model", tiny_onnx_path, "--input", files, "--output", tmp_path, "--output_dirname", "x",
                           "--output_indices", "1", "--outfmt", "NPY", "--loop", "2", "--warmup_count", "1",
                           "--batchsize", "2"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted("{}_1.npy".format(i) for i in ids[:2])
    reference = read_out(bs1_bs4[0] / "bs1" / "{}_1.bin".format(ids[0]))
    assert relative_error(np.load(str(tmp_path / "x" / "{}_1.npy".format(ids[0]))), reference) <= 1e-4
    summary = json.loads((tmp_path / "x_summary.json").read_text())
    assert summary["images"] == 2 and summary["loop"] == 2 and summary["output_indices"] == [1]


def test_without_output_nothing_is_written(run, tmp_path, tiny_onnx_path, tiny_prep_path):
    result = run(RUNNER + ["--model", tiny_onnx_path, "--input", tiny_prep_path], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert THROUGHPUT.search(result.stdout) and list(tmp_path.iterdir()) == []


def test_torch_backend_matches_onnxruntime(run, tmp_path, tiny_pth_path, tiny_prep_path, bs1_bs4, capsys):
    result = run(RUNNER + ["--model", tiny_pth_path, "--preset", TINY_PRESET, "--input", tiny_prep_path,
                           "--output", tmp_path, "--output_dirname", "t", "--batchsize", "2", "--device", "cpu"])
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "t_summary.json").read_text())
    assert summary["backend"] == "torch" and summary["device"] == "cpu"
    for sample_id in manifest_ids(tiny_prep_path):
        ours = read_out(tmp_path / "t" / "{}_1.bin".format(sample_id))
        assert relative_error(ours, read_out(bs1_bs4[0] / "bs1" / "{}_1.bin".format(sample_id))) <= 1e-4

    from hrnetseg.runner import cli as infer

    bf16 = run_in_process(infer.main, ["--model", tiny_pth_path, "--preset", TINY_PRESET, "--input", tiny_prep_path,
                                       "--output", tmp_path, "--output_dirname", "b", "--precision", "bf16",
                                       "--output_indices", "1"], capsys)
    assert bf16.returncode == 0, bf16.stderr
    out = np.fromfile(str(tmp_path / "b" / "{}_1.bin".format(manifest_ids(tiny_prep_path)[0])), dtype=np.float32)
    assert out.size == int(np.prod(OUT_SHAPE)) and np.isfinite(out).all()   # float32 whatever the precision


def edit_manifest(prep, **changes) -> None:
    manifest = json.loads((prep / "manifest.json").read_text())
    manifest.update(changes)
    (prep / "manifest.json").write_text(json.dumps(manifest))


def test_refusals_are_one_clear_line(run, tmp_path, tiny_onnx_path, tiny_pth_path, prep_copy, capsys):
    """The first refusal runs the real command line; the rest run its main() under run_cli in this process."""
    from hrnetseg.runner import cli as infer

    def refused(*fragments, model=tiny_onnx_path, inputs=prep_copy, extra=()):
        args = ["--model", model, "--input", inputs, "--output", tmp_path / "out"] + list(extra)
        assert_user_error(run_in_process(infer.main, args, capsys), *fragments)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run(RUNNER + ["--model", tiny_onnx_path, "--input", empty, "--output", tmp_path / "out"]),
                      "no manifest.json")
    ids = manifest_ids(prep_copy)
    victim = prep_copy / "{}.bin".format(ids[2])
    victim.write_bytes(victim.read_bytes()[:-4])
    refused(victim.name, "bytes")
    victim.unlink()
    refused("missing", victim.name)
    edit_manifest(prep_copy, ids=[])
    refused("no input files")
    originals = {i: np.fromfile(str(prep_copy / "{}.bin".format(i)), np.float32) for i in ids[:2]}

    def bins_as(dtype, **changes):   # bins that match their manifest, of a dtype or shape the model does not take
        edit_manifest(prep_copy, ids=ids[:2], dtype=dtype, **changes)
        size = int(np.prod(changes.get("shape", (3, TINY_HEIGHT, TINY_WIDTH))))
        for sample_id, values in originals.items():
            np.resize(values, size).astype(dtype).tofile(str(prep_copy / "{}.bin".format(sample_id)))

    bins_as("uint8")
    refused("uint8", "float32")
    bins_as("float16")
    refused("float16", "float32")
    bins_as("float32", shape=[3, TINY_HEIGHT * 2, TINY_WIDTH * 2])
    refused("3x{}x{}".format(TINY_HEIGHT * 2, TINY_WIDTH * 2), "the model takes")
    bins_as("float32", shape=[3, TINY_HEIGHT, TINY_WIDTH])

    refused("ais_bench", model=tmp_path / "hrnet_bs1.om")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    refused("cannot load", model=tmp_path / "junk.onnx")
    refused("not found", model=tmp_path / "missing.onnx")
    refused("--device", extra=["--device", "tpu"])
    refused("fp32", extra=["--precision", "fp16"])
    refused("--output_indices", extra=["--output_indices", "2"])
    if not torch.cuda.is_available():
        refused("fp16 needs a GPU", model=tiny_pth_path, extra=["--preset", TINY_PRESET, "--precision", "fp16"])
    refused("does not fit", model=tiny_pth_path)    # a tiny checkpoint is not the default w48_ocr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.bin"))
