"""Hostile and damaged input to the runner (python3 -m hrnetseg.infer), the streaming evaluator
(python -m hrnetseg.evaluate) and the checks of scripts/eval_acc_perf.sh (python3 -m hrnetseg.atlas.acc_perf):
one-line refusals before any work, throughput of real images only, nothing half-written, one writer per output.

Most cases run in-process with a stand-in model (no model load, no Python start-up); the command-line path is
exercised where the exit code and the one line on stderr are the point.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from helpers import (OUT_SHAPE, TINY_HEIGHT, TINY_IMAGES, TINY_WIDTH, assert_user_error, lock_held_elsewhere, run_infer,
                      run_script)
from hrnetseg.atlas import acc_perf, figures
from hrnetseg.data import cityscapes
from hrnetseg.evaluation import cli as evaluate, streaming
from hrnetseg.runner import cli as infer, outputs as run_outputs
from hrnetseg.util.errors import UserError

# ------------------------------------------------------------------------------------- infer: throughput

def test_throughput_counts_real_images_only(tmp_path, tiny_onnx_path, tiny_prep_path, stub, capsys):
    # 5 images at batch 7: one run of 5 images and 2 padding rows. At batch 4 with --loop 2: runs of 4, 4, 1, 1.
    for batch, loop, images_per_run in ((7, 1, 5.0), (4, 2, 2.5)):
        out = tmp_path / "bs{}".format(batch)
        run_infer(tiny_onnx_path, tiny_prep_path, out, "--batchsize", batch, "--loop", loop)
        printed = capsys.readouterr().out
        summary = json.loads((out / "bs_summary.json").read_text())
        assert "batchsize.mean({:g})/".format(images_per_run) in printed, printed
        assert summary["batchsize"] == batch and summary["batchsize_mean"] == images_per_run
        assert summary["throughput"] == pytest.approx(1000 * images_per_run / summary["compute_time_ms"]["mean"])
        assert summary["output_dtype"] == "float32" and summary["images"] == TINY_IMAGES
    assert stub.batches[:1] == [7]


def test_outputs_are_float32_whatever_the_backend_returns(tmp_path, monkeypatch, tiny_onnx_path, tiny_prep_path, stub):
    """The summary says float32; a backend handing back float16 must not make it a lie."""
    real_run = stub.run
    monkeypatch.setattr(stub, "run", lambda batch: [o.astype(np.float16) for o in real_run(batch)])
    run_infer(tiny_onnx_path, tiny_prep_path, tmp_path, "--output_indices", "1")
    files = sorted((tmp_path / "bs").iterdir())
    assert len(files) == TINY_IMAGES and all(f.stat().st_size == 4 * int(np.prod(OUT_SHAPE)) for f in files)


# ---------------------------------------------------------------------- infer: failed runs leave nothing

@pytest.mark.parametrize("failure", ["full disk", "Ctrl-C"])
def test_a_failed_run_removes_what_it_wrote(tmp_path, monkeypatch, tiny_onnx_path, tiny_prep_path, stub, failure):
    writes = []
    if failure == "full disk":   # the third output file of each run hits ENOSPC half-way
        real_write = run_outputs._write_array

        def write(fh, array):
            writes.append(1)
            if len(writes) % 3 == 0:
                fh.write(array.data[:100])
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(fh, array)

        monkeypatch.setattr(run_outputs, "_write_array", write)
        expected = (UserError, "no space left on the device while writing")
    else:                        # Ctrl-C in the second batch, after the first batch's files were written
        stub.fail_at, stub.error = 2, KeyboardInterrupt()
        expected = (KeyboardInterrupt, None)

    fresh = tmp_path / "fresh"                   # a folder this run creates: gone afterwards, lock file too
    with pytest.raises(expected[0], match=expected[1]):
        run_infer(tiny_onnx_path, tiny_prep_path, fresh, "--batchsize", 2)
    assert not fresh.exists() and not list(tmp_path.iterdir())

    stub.calls = 0
    kept = tmp_path / "kept"                     # a folder with earlier files: they stay, this run's go
    (kept / "bs").mkdir(parents=True)
    (kept / "bs" / "earlier_notes.txt").write_bytes(b"earlier")   # (earlier outputs it would not replace: refused)
    (kept / "bs_summary.json").write_text('{"images": 500}')   # describes files this run replaces: removed
    with pytest.raises(expected[0], match=expected[1]):
        run_infer(tiny_onnx_path, tiny_prep_path, kept, "--batchsize", 2)
    assert sorted(p.name for p in kept.rglob("*")) == ["bs", "earlier_notes.txt"]


def test_a_second_run_into_the_same_folder_stops_at_once(tmp_path, tiny_onnx_path, tiny_prep_path, stub):
    with lock_held_elsewhere(tmp_path / "bs") as pid:
        with pytest.raises(UserError, match=r"bs is being written by another run \(PID {}\)".format(pid)):
            run_infer(tiny_onnx_path, tiny_prep_path, tmp_path)
    assert not stub.loaded and not (tmp_path / "bs").exists()   # before the model load and any write


# ------------------------------------------------------------------------------------ infer: refusals

def test_infer_refusals_before_the_model_loads(tmp_path, tiny_onnx_path, tiny_prep_path, stub):
    def refused(match, model=tiny_onnx_path, prep=tiny_prep_path, out=tmp_path / "out", extra=()):
        with pytest.raises(UserError, match=match):
            run_infer(model, prep, out, *extra)

    (tmp_path / "file").write_text("x")
    refused(r"--output .*file exists and is a file, not a folder", out=tmp_path / "file")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "bs").write_text("x")
    refused(r"--output_dirname .*bs exists and is a file, not a folder")
    os.mkfifo(str(tmp_path / "model.onnx"))
    refused(r"model .*model.onnx is a FIFO, not a regular file", model=tmp_path / "model.onnx")
    om = tmp_path / "hrnet_bs1.om"
    om.write_bytes(b"om")
    refused("Ascend offline model: run it with ais_bench", model=om, extra=["--backend", "onnxruntime"])
    refused("--output_indices takes comma-separated integers", extra=["--output_indices", ","])
    for entry in ("-1", "1_0", " 0,x"):   # each entry read as --output_index reads one, before the model loads
        refused("--output_indices takes comma-separated integers.*expected an output number",
                extra=["--output_indices", entry])
    with pytest.raises(UserError, match="is the input folder"):
        infer.main(["--model", str(tiny_onnx_path), "--input", str(tiny_prep_path), "--output",
                    str(tiny_prep_path.parent), "--output_dirname", tiny_prep_path.name])

    prep = tmp_path / "prep"                     # damaged bins
    shutil.copytree(str(tiny_prep_path), str(prep))
    ids = json.loads((prep / "manifest.json").read_text())["ids"]
    victim = prep / "{}.bin".format(ids[1])
    victim.write_bytes(np.fromfile(str(victim), np.float32).astype(np.float16).tobytes())   # another dtype
    refused(r"{} has 49152 bytes; float32 3x{}x{} needs 98304".format(victim.name, TINY_HEIGHT, TINY_WIDTH),
            prep=prep)
    victim.unlink()
    os.mkfifo(str(victim))                       # never opened: a reader would block for ever
    refused(r"input file .*{} is a FIFO, not a regular file".format(victim.name), prep=prep)
    refused(r"input file .*{} is a FIFO".format(victim.name), prep=victim)       # as a --input file list
    refused("names a file twice", prep="{0},{0}".format(prep / "{}.bin".format(ids[0])))
    assert not stub.loaded
    assert not any((tmp_path / "out").rglob("*.bin"))


def refused_by_argparse(main, argv, capsys, *fragments) -> None:
    """argparse's refusal: exit 2 and its one-line error naming the flag."""
    with pytest.raises(SystemExit) as caught:
        main(list(map(str, argv)))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert caught.value.code == 2 and "error:" in last and all(f in last for f in fragments), last


def test_infer_command_line_refusals(tmp_path, tiny_onnx_path, tiny_prep_path, stub, capsys):
    base = ["--model", tiny_onnx_path, "--input", tiny_prep_path, "--output", tmp_path]
    refused_by_argparse(infer.main, base + ["--preset", "w18"], capsys, "--preset", "invalid choice")
    refused_by_argparse(infer.main, base + ["--output_dirname", "../bs1"], capsys, "--output_dirname", "plain name")
    os.mkfifo(str(tmp_path / "bs1_summary.json"))   # never opened
    with pytest.raises(UserError, match="cannot write summary .*bs1_summary.json: it is a FIFO"):
        infer.main(list(map(str, base + ["--output_dirname", "bs1"])))
    assert not stub.loaded and not (tmp_path / "bs1").exists()


# -------------------------------------------------------------------------------------------- evaluate

def non_regular_files(folder: Path):
    """(what, path) for a FIFO, a socket and (as root) a character device, made in `folder`."""
    os.mkfifo(str(folder / "fifo.json"))
    made = [("a FIFO", folder / "fifo.json")]
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.json"))
    server.close()
    made.append(("a socket", folder / "socket.json"))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import stat

        os.mknod(str(folder / "null.json"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))   # /dev/null's numbers
        made.append(("a character device", folder / "null.json"))
    return made


def test_evaluate_refuses_output_files_that_are_not_regular_before_any_work(tmp_path, tiny_onnx_path):
    nowhere = str(tmp_path / "no_data")          # were the data set looked at first, this would be the error
    for what, path in non_regular_files(tmp_path):
        for flag in ("--save_path", "--save_confusion"):
            with pytest.raises(UserError, match="cannot write {} {}: it is {}".format(flag, path, what)):
                evaluate.main(["--datasets_path", nowhere, "--onnx", str(tiny_onnx_path), flag, str(path)])
    with pytest.raises(UserError, match="name the same file"):
        evaluate.main(["--datasets_path", nowhere, "--onnx", str(tiny_onnx_path), "--save_path",
                       str(tmp_path / "r"), "--save_confusion", str(tmp_path / "." / "r")])


def test_evaluate_command_line_refusals(tiny_data_root, tiny_onnx_path, capsys):
    base = ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path]
    refused_by_argparse(evaluate.main, base + ["--preset", "w18"], capsys, "--preset", "invalid choice")
    refused_by_argparse(evaluate.main, base + ["--split", "../val"], capsys, "--split", "plain name")


def test_evaluate_names_an_empty_image_or_label(tmp_path, tiny_data_root):
    data = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(data))
    samples = cityscapes.find_images(str(data))
    Path(samples[0].image).write_bytes(b"")      # the first image: its size is read before the model loads
    with pytest.raises(UserError, match="image {} cannot be decoded".format(samples[0].image)):
        evaluate.main(["--datasets_path", str(data), "--onnx", str(tmp_path / "model_not_loaded_yet.onnx")])

    size = (TINY_HEIGHT, TINY_WIDTH)
    Path(samples[1].label).write_bytes(Path(samples[1].label).read_bytes()[:60])   # truncated label
    with pytest.raises(UserError, match="label {}".format(re.escape(samples[1].label))):
        streaming.decode(samples[1], "float32", size)
    os.remove(samples[2].image)
    os.mkfifo(samples[2].image)                  # never opened
    with pytest.raises(UserError, match="image {} is a FIFO, not a regular file".format(samples[2].image)):
        streaming.decode(samples[2], "float32", size)


def test_evaluate_locks_its_output_files(tmp_path, tiny_data_root, tiny_onnx_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(evaluate, "load_backend", lambda *a, **k: loaded.append(1))
    with lock_held_elsewhere(tmp_path / "c.npz") as pid:
        with pytest.raises(UserError, match=r"c.npz is being written by another run \(PID {}\)".format(pid)):
            evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path), "--save_path",
                           str(tmp_path / "r.json"), "--save_confusion", str(tmp_path / "c.npz")])
    assert not loaded and sorted(p.name for p in tmp_path.iterdir()) == []


# -------------------------------------------------------------------- acc_perf: the checks of eval_acc_perf.sh

LINE = "[INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(100.0): {}\n"


@pytest.mark.parametrize("text, value", [
    (LINE.format("40.0"), 40.0),
    ("[INFO] loading\n" + LINE.format("1e-3") + "[INFO] end\n", 0.001),
    (LINE.format("1.0") + LINE.format("2.5"), 2.5),          # the last line counts
])
def test_throughput_is_read_from_the_last_line(tmp_path, text, value):
    log = tmp_path / "bs4.log"
    log.write_text(text)
    assert acc_perf.throughput(str(log), "ais_bench --model m.om") == value


@pytest.mark.parametrize("text, words", [
    ("", "no 'throughput 1000*batchsize"),
    ("[INFO] throughput: 12\n", "no 'throughput 1000*batchsize"),
    (LINE.format("nan"), "'nan'"), (LINE.format("inf"), "'inf'"), (LINE.format("0.000"), "'0.000'"),
    (LINE.format("-5"), "'-5'"), (LINE.format(""), "''"), (LINE.format("fast"), "'fast'"),
])
def test_an_unusable_throughput_is_an_error_naming_the_log_and_the_command(tmp_path, text, words):
    log = tmp_path / "bs4.log"
    log.write_text(text)
    with pytest.raises(UserError) as caught:
        acc_perf.throughput(str(log), "ais_bench --model m.om")
    message = str(caught.value)
    assert words in message and str(log) in message and "ais_bench --model m.om" in message


def test_batch_sizes_larger_than_the_images_are_refused(tiny_prep_path):
    assert acc_perf.check_batch_sizes(str(tiny_prep_path), [1, 4, TINY_IMAGES]) == []
    [note] = acc_perf.check_batch_sizes(str(tiny_prep_path), [1, 4, TINY_IMAGES], counts_padding=True)
    assert note.startswith("note: 5 images at batch size 4 leave a last batch of 1, which ais_bench pads and counts "
                           "as 4") and note.endswith("the table's throughput is its figure x 5/8 (the images' own)")
    # 2 runs of 4 in 1 s: ais_bench says 8 images/s, the 5 real images ran at 5 images/s
    assert acc_perf.real_images_fps(8.0, 5, 4) == 5.0 and acc_perf.real_images_fps(8.0, 8, 4) == 8.0
    with pytest.raises(UserError, match="batch sizes 8, 16 are larger than the {} images".format(TINY_IMAGES)):
        acc_perf.check_batch_sizes(str(tiny_prep_path), [1, 8, 16])


def test_table_row_never_shows_a_zero_throughput_or_a_bad_miou(tmp_path):
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"mIoU": 0.6526}))
    assert acc_perf.table_row(1, "ais_bench", "npu:0", 0.004, acc_perf.miou(str(result))) == \
        "| 1 | ais_bench | npu:0 | 0.004 | 65.26% |"
    assert figures.format_fps(37.456) == "37.46"
    for bad in ('{"mIoU": null}', '{"mIoU": 1.5}', '{"mIoU": "0.5"}', '{"mean_Iou": 0.5}', "[0.5]", "{"):
        result.write_text(bad)
        with pytest.raises(UserError, match="result"):
            acc_perf.miou(str(result))
    assert_user_error(run_script(["-m", "hrnetseg.atlas.acc_perf", "row", "--batch", "1", "--backend", "x", "--device", "d",
                                  "--fps", "nan", "--result", result]), "--fps")


def test_the_ais_bench_row_counts_real_images_not_its_padding(tmp_path, tiny_prep_path):
    """ais_bench reports 1000 x batch size / mean time for a padded last batch too; the table's fps is the
    images' own, as the local runner's is."""
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"mIoU": 0.5, "images": TINY_IMAGES}))
    rows = {}
    for backend in ("ais_bench", "onnxruntime"):
        out = run_script(["-m", "hrnetseg.atlas.acc_perf", "row", "--batch", "4", "--backend", backend, "--device", "d",
                          "--fps", "8.0", "--result", result, "--prep", tiny_prep_path])
        assert out.returncode == 0, out.stderr
        rows[backend] = out.stdout.strip()
    assert rows == {"ais_bench": "| 4 | ais_bench | d | 5.00 | 50.00% |",       # 5 images, padded to 8
                    "onnxruntime": "| 4 | onnxruntime | d | 8.00 | 50.00% |"}


# ------------------------------------------------------------------------------ infer: --device 0,1, --outfmt TXT

def test_a_second_device_split_run_into_the_same_folder_stops_at_once(tmp_path, tiny_onnx_path, tiny_prep_path):
    with lock_held_elsewhere(tmp_path / "bs") as pid:
        with pytest.raises(UserError, match=r"bs is being written by another run \(PID {}\)".format(pid)):
            run_infer(tiny_onnx_path, tiny_prep_path, tmp_path, "--device", "0,1")
    assert not (tmp_path / "bs").exists()   # no device process started


def test_a_full_disk_while_writing_txt_leaves_nothing(tmp_path, monkeypatch, tiny_onnx_path, tiny_prep_path, stub):
    real_rows = run_outputs.text_rows

    def rows(array):
        for number, line in enumerate(real_rows(array)):
            if number == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield line

    monkeypatch.setattr(run_outputs, "text_rows", rows)
    with pytest.raises(UserError, match="no space left on the device while writing"):
        run_infer(tiny_onnx_path, tiny_prep_path, tmp_path / "out", "--outfmt", "TXT")
    assert not (tmp_path / "out").exists()


def test_inputs_that_would_write_the_same_output_names_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"inputs a\.x\.bin and a\.y\.bin would both write a_<n>"):
        run_outputs.check_output_stems(["a.x", "b", "a.y"])
