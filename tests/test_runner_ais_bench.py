"""The runner as ais_bench (the CANN 6 era frontend): its summary file, printed lines, --outfmt NPY/TXT, options.

The formats checked here are ais_bench's as documented in README.md (summary keys, full-float printed lines, NPY
with the batch axis, TXT rows of `%f ` values); the byte-for-byte comparison with the real frontend is a
developer check described there.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from hrnetseg.runner import cli as infer
from hrnetseg.runner import options as infer_options
from hrnetseg.util.errors import UserError

from helpers import OUT_SHAPE, RUNNER, TINY_IMAGES, assert_user_error, manifest_ids, run_infer

STATS_KEYS = {"min", "max", "mean", "median", "percentile(99%)", "count"}
AIS_BENCH_KEYS = {"filesinfo", "args", "NPU_compute_time", "H2D_latency", "D2H_latency", "throughput",
                  "npu_compute_time_list", "pid"}


@pytest.fixture(scope="module")
def formats(tmp_path_factory, tiny_onnx_path, tiny_prep_path):
    """bs4 over the 5 tiny images as BIN (short options, ais_bench's boolean syntax, NPU-only options, --device 0),
    TXT and NPY: (results folder, {name: completed process})."""
    from helpers import run_script

    out = tmp_path_factory.mktemp("ais") / "results"
    runs = {
        "bin": ["-m", tiny_onnx_path, "-i", tiny_prep_path, "-o", out, "--output_dirname", "bin", "--batchsize", "4",
                "-l", "2", "-d", "0", "--display_all_summary", "TRUE", "--profiler", "yes", "--dymHW", "64,128",
                "--run_mode", "full"],
        "txt": ["--model", tiny_onnx_path, "--input", tiny_prep_path, "--output", out, "--output_dirname", "txt",
                "--batchsize", "4", "--outfmt", "TXT", "--display_all_summary", "false", "--device", "cpu"],
        "npy": ["--model", tiny_onnx_path, "--input", tiny_prep_path, "--output", out, "--output_dirname", "npy",
                "--outfmt", "NPY", "--output_indices", "1", "--device", "cpu"],
    }
    done = {}
    for name, args in runs.items():
        done[name] = run_script(RUNNER + list(map(str, args)))
        assert done[name].returncode == 0, done[name].stderr
    return out, done


def test_summary_file_has_ais_bench_keys_units_and_ours(formats, tiny_prep_path):
    out, _ = formats
    summary = json.loads((out / "bin_summary.json").read_text())
    assert AIS_BENCH_KEYS <= set(summary)
    runs = 2 * 2   # 5 images at batch 4: 2 batches, --loop 2 each
    for key in ("NPU_compute_time", "H2D_latency", "D2H_latency"):
        assert set(summary[key]) == STATS_KEYS and summary[key]["count"] == runs, summary[key]
    assert summary["H2D_latency"]["max"] == 0.0 == summary["D2H_latency"]["max"]   # nothing copied on the CPU
    times = summary["npu_compute_time_list"]
    assert len(times) == runs and summary["NPU_compute_time"]["mean"] == pytest.approx(np.mean(times))
    assert summary["NPU_compute_time"]["median"] == pytest.approx(np.median(times))
    # ais_bench's figure: every run at the batch size, 4 (the padded last batch too); ours: 4, 4, 1, 1 real images
    assert summary["throughput"] == pytest.approx(1000 * 4 / np.mean(times))
    assert summary["throughput_real_images"] == pytest.approx(1000 * 2.5 / np.mean(times))
    assert isinstance(summary["pid"], int) and summary["args"][0].endswith("infer.py")   # sys.argv, as ais_bench
    assert summary["args"][1] == "-m" and summary["args"][-2:] == ["--run_mode", "full"]
    assert all(isinstance(arg, str) for arg in summary["args"]) and "--display_all_summary" in summary["args"]
    # filesinfo: sample index in natural-sort order as a string, its input bin, its output files
    ids = sorted(manifest_ids(tiny_prep_path))
    assert sorted(summary["filesinfo"], key=int) == [str(i) for i in range(TINY_IMAGES)]
    for index, sample_id in enumerate(ids):
        entry = summary["filesinfo"][str(index)]
        assert entry["infiles"] == [str(tiny_prep_path / "{}.bin".format(sample_id))]
        assert entry["outfiles"] == [str(out / "bin" / "{}_{}.bin".format(sample_id, k)) for k in (0, 1)]
    assert summary["backend"] == "onnxruntime" and summary["output_dtype"] == "float32" and summary["loop"] == 2


def stats_line(name: str, stats: dict) -> str:
    """ais_bench's line for one statistic, with Python's full float repr of the summary's own numbers."""
    return "[INFO] {} (ms): min = {!r}, max = {!r}, mean = {!r}, median = {!r}, percentile(99%) = {!r}".format(
        name, stats["min"], stats["max"], stats["mean"], stats["median"], stats["percentile(99%)"])


def test_printed_block_is_ais_bench_s_with_full_floats(formats):
    out, runs = formats
    for name, all_lines in (("bin", True), ("txt", False)):
        summary = json.loads((out / "{}_summary.json".format(name)).read_text())
        lines = runs[name].stdout.splitlines()
        start = lines.index("[INFO] -----------------Performance Summary------------------")
        expected = ([stats_line("H2D_latency", summary["H2D_latency"])] if all_lines else []) + \
            [stats_line("NPU_compute_time", summary["NPU_compute_time"])] + \
            ([stats_line("D2H_latency", summary["D2H_latency"])] if all_lines else []) + \
            ["[INFO] throughput 1000*batchsize.mean({})/NPU_compute_time.mean({!r}): {!r}".format(
                4, summary["NPU_compute_time"]["mean"], summary["throughput"]),   # the padded batch at full size
             "[INFO] ------------------------------------------------------"]
        assert lines[start + 1:start + 1 + len(expected)] == expected


def test_first_line_says_the_cpu_runs_for_device_0_and_npu_options_are_noted_once(formats):
    import onnxruntime

    out, runs = formats
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider: --device 0 may run on a GPU")
    output_path, first = runs["bin"].stdout.splitlines()[:2]   # the folder made, then the model loaded
    assert output_path == "[INFO] output path:{}".format(out / "bin")
    assert first.startswith("[INFO] onnxruntime on cpu") and "--device 0:" in first and "running on the CPU" in first
    notes = [line for line in runs["bin"].stderr.splitlines() if "ignored off an Ascend NPU" in line]
    assert notes == ["note: ignored off an Ascend NPU: --profiler, --run_mode, --dymHW"]
    assert "ignored" not in runs["txt"].stderr


def test_txt_is_rows_of_the_last_axis_with_six_decimals(formats, tiny_prep_path):
    out, _ = formats
    for sample_id in manifest_ids(tiny_prep_path):
        for k in (0, 1):
            exact = np.fromfile(str(out / "bin" / "{}_{}.bin".format(sample_id, k)), np.float32).reshape(OUT_SHAPE)
            text = (out / "txt" / "{}_{}.txt".format(sample_id, k)).read_text()
            lines = text.split("\n")
            assert lines[-1] == "" and len(lines) - 1 == OUT_SHAPE[0] * OUT_SHAPE[1]   # one row per line
            rows = exact.reshape(-1, OUT_SHAPE[2])
            for line, row in zip(lines, rows):
                assert line == "".join("{:f} ".format(float(v)) for v in row)   # "%f" and a space after each
            parsed = np.array([[float(v) for v in line.split()] for line in lines[:-1]], np.float64)
            assert np.abs(parsed - rows).max() <= 5e-7 and np.abs(parsed - rows).max() > 0   # lossy: 6 decimals


def test_npy_keeps_the_batch_axis(formats, tiny_prep_path):
    out, _ = formats
    ids = manifest_ids(tiny_prep_path)
    assert sorted(p.name for p in (out / "npy").iterdir()) == sorted("{}_1.npy".format(i) for i in ids)
    for sample_id in ids:
        array = np.load(str(out / "npy" / "{}_1.npy".format(sample_id)))
        assert array.shape == (1,) + OUT_SHAPE and array.dtype == np.float32
        exact = np.fromfile(str(out / "bin" / "{}_1.bin".format(sample_id)), np.float32).reshape(OUT_SHAPE)
        assert np.abs(array[0] - exact).max() <= 1e-5 * np.abs(exact).max()   # bs1 against bs4: same model


def test_ais_bench_option_syntax():
    parser = infer.build_parser()
    args = parser.parse_args(["-m", "a.onnx", "-i", "prep", "-o", "out", "-l", "3", "-d", "1", "--debug", "Y",
                              "--display_all_summary", "0", "--dump", "t", "--auto_set_dymshape_mode", "FALSE",
                              "--dymShape_range", "image:1~4,3,64,128", "--outputSize", "100,100",
                              "--output_batchsize_axis", "0", "--pure_data_type", "random", "--acl_json_path", "a.json",
                              "--dymBatch", "4", "--dymDims", "image:1,3,64,128", "--dymShape", "image:1,3,64,128",
                              "--auto_set_dymdims_mode", "n"])
    assert (args.model, args.input, args.output, args.loop, args.device) == ("a.onnx", "prep", "out", 3, "1")
    assert args.debug is True and args.display_all_summary is False and args.dump is True
    assert args.auto_set_dymshape_mode is False and args.auto_set_dymdims_mode is False
    defaults = parser.parse_args(["-m", "a.onnx", "-i", "prep"])
    assert (defaults.warmup_count, defaults.loop, defaults.outfmt, defaults.display_all_summary) == (1, 1, "BIN", False)
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["-m", "a.onnx", "-i", "prep", "--debug", "maybe"])
    assert caught.value.code == 2


@pytest.mark.parametrize("argv, message", [
    (["--output_dirname", "bs1"], "--output_dirname needs --output"),
    (["--output", "o", "--output_batchsize_axis", "1"], "hold the batch on axis 0"),
    (["--dymBatch", "4", "--batchsize", "2"], "--dymBatch 4 and --batchsize 2 disagree"),
    (["--profiler", "1", "--dump", "1", "--output", "o"], "cannot both be true"),
    (["--output", "o", "--output_batchsize_axis", "-1"], "hold the batch on axis 0"),
    (["--device", "0,0"], "names a device twice"),
    (["--device", "0,cuda"], r"--device 0,cuda: a device id is an integer 0\.\.255"),
    (["--device", "0,256"], r"--device 0,256: a device id is an integer 0\.\.255"),
    (["--device", "256"], r"--device 256: a device id is an integer 0\.\.255"),   # alone as in a list
])
def test_option_refusals(tmp_path, tiny_onnx_path, tiny_prep_path, argv, message):
    with pytest.raises(UserError, match=message):
        infer.main(["--model", str(tiny_onnx_path), "--input", str(tiny_prep_path)] +
                   [str(tmp_path / a) if a == "o" else a for a in argv])
    assert not (tmp_path / "o").exists()


def test_dymbatch_sets_the_batch_size():
    args = infer.build_parser().parse_args(["-m", "a.onnx", "-i", "prep", "--dymBatch", "4"])
    infer_options.check_options(args)
    assert args.batchsize == 4


def test_a_bad_boolean_is_one_line(run, tiny_onnx_path, tiny_prep_path):
    result = run(RUNNER + ["--model", tiny_onnx_path, "--input", tiny_prep_path, "--display_all_summary", "maybe"])
    assert_user_error(result, "--display_all_summary", "expected a boolean")


def test_one_device_id_and_a_list_of_them_are_read_by_one_rule():
    from hrnetseg.backends import parse_device
    from hrnetseg.runner.layout import device_ids, device_list

    for text in ("256", "0,256"):
        with pytest.raises(UserError, match=r"--device {}: a device id is an integer 0\.\.255".format(text)):
            device_ids(text)
    with pytest.raises(UserError, match=r"--device 256: a device id is an integer 0\.\.255"):
        parse_device("256")   # evaluate and predict read a bare id by the same rule
    assert device_ids("255") == [255] and device_list("255") is None and device_list("0, 1") == [0, 1]
    assert parse_device(" 255 ") == ("cuda", 255) and device_ids("cuda:1") is None and device_ids(None) is None


def test_output_path_line_infiles_as_given_and_batch_axis_0(tmp_path, monkeypatch, tiny_onnx_path, prep_copy, stub,
                                                            capsys):
    """ais_bench prints `output path:` once it has made OUTPUT/DIRNAME, before the inference, the folder as
    os.path.join spells it; its filesinfo names each input as the command line did (a folder joined with the file's
    name, or a file as given: relative stays relative); --output_batchsize_axis 0 is the default it takes."""
    from hrnetseg.runner.inputs import natural_key

    monkeypatch.chdir(tmp_path)
    ids = sorted(manifest_ids(prep_copy), key=natural_key)
    for spec, dirname, infiles in (
            ("prep", "out", ["prep/{}.bin".format(i) for i in ids]),
            ("./prep/{1}.bin,prep//{0}.bin".format(*ids), "files/", ["./prep/{}.bin".format(ids[1]),
                                                                     "prep//{}.bin".format(ids[0])])):
        assert run_infer(tiny_onnx_path, spec, dirname, "--output_batchsize_axis", "0") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "[INFO] output path:{}bs".format(dirname if dirname.endswith("/") else dirname + "/")
        assert lines[1].startswith("[INFO] stub on cpu")
        summary = json.loads((tmp_path / dirname / "bs_summary.json").read_text())
        assert [summary["filesinfo"][str(n)]["infiles"] for n in range(len(infiles))] == [[f] for f in infiles]
    run_infer(tiny_onnx_path, "prep", None)   # a timing run makes no folder and prints no output path
    assert "output path" not in capsys.readouterr().out
