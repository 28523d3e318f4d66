"""The runner's files (python3 -m hrnetseg.infer) under hostile input, with a stand-in model: ais_bench's
throughput and ours of the real images, float32 outputs, nothing half-written, one writer per output, only the
manifest's bins as inputs, refusals before the model loads.

The cases run in this process with the stand-in (no model load, no Python start-up); the command-line path is
exercised in test_runner_cli.py.
"""
from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest

from hrnetseg.runner import cli as infer
from hrnetseg.runner import outputs as run_outputs
from hrnetseg.util.errors import UserError

from helpers import (
    OUT_SHAPE,
    TINY_HEIGHT,
    TINY_IMAGES,
    TINY_WIDTH,
    lock_held_elsewhere,
    manifest_ids,
    refused_by_argparse,
    run_infer,
)

# --- throughput and outputs ------------------------------------------------------------------------------------

def test_throughput_counts_a_padded_batch_in_full_as_ais_bench_and_the_real_images_apart(
        tmp_path, tiny_onnx_path, tiny_prep_path, stub, capsys):
    # 5 images at batch 7: one run of 5 images and 2 padding rows. At batch 4 with --loop 2: runs of 4, 4, 1, 1.
    # ais_bench's B and throughput count every run at the batch size; our real images' figure counts 5 and 2.5.
    for batch, loop, images_per_run in ((7, 1, 5.0), (4, 2, 2.5)):
        out = tmp_path / "bs{}".format(batch)
        run_infer(tiny_onnx_path, tiny_prep_path, out, "--batchsize", batch, "--loop", loop)
        printed = capsys.readouterr().out.splitlines()
        summary = json.loads((out / "bs_summary.json").read_text())
        mean = summary["NPU_compute_time"]["mean"]
        assert summary["batchsize"] == batch and summary["batchsize_mean"] == batch
        assert summary["throughput"] == 1000.0 * batch / mean
        assert summary["real_images_per_run"] == images_per_run
        assert summary["throughput_real_images"] == 1000.0 * images_per_run / mean
        assert summary["output_dtype"] == "float32" and summary["images"] == TINY_IMAGES
        assert printed[-3:] == [
            "[INFO] throughput 1000*batchsize.mean({})/NPU_compute_time.mean({!r}): {!r}".format(
                batch, mean, summary["throughput"]),
            "[INFO] ------------------------------------------------------",
            "[INFO] throughput of the real images 1000*images.mean({:g})/NPU_compute_time.mean({!r}): {!r}".format(
                images_per_run, mean, summary["throughput_real_images"])]
    assert stub.batches[:1] == [7]
    run_infer(tiny_onnx_path, tiny_prep_path, tmp_path / "bs5", "--batchsize", TINY_IMAGES)   # no padding: no line
    assert capsys.readouterr().out.splitlines()[-1] == "[INFO] ------------------------------------------------------"


def test_outputs_are_float32_whatever_the_backend_returns(tmp_path, monkeypatch, tiny_onnx_path, tiny_prep_path, stub):
    """The summary says float32; a backend handing back float16 must not make it a lie."""
    real_run = stub.run
    monkeypatch.setattr(stub, "run", lambda batch: [o.astype(np.float16) for o in real_run(batch)])
    run_infer(tiny_onnx_path, tiny_prep_path, tmp_path, "--output_indices", "1")
    files = sorted((tmp_path / "bs").iterdir())
    assert len(files) == TINY_IMAGES and all(f.stat().st_size == 4 * int(np.prod(OUT_SHAPE)) for f in files)


# --- failed runs leave nothing; one writer per output --------------------------------------------------------

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


def test_a_second_run_into_the_same_folder_stops_at_once(tmp_path, tiny_onnx_path, tiny_prep_path, stub):
    with lock_held_elsewhere(tmp_path / "bs") as pid:
        with pytest.raises(UserError, match=r"bs is being written by another run \(PID {}\)".format(pid)):
            run_infer(tiny_onnx_path, tiny_prep_path, tmp_path)
    assert not stub.loaded and not (tmp_path / "bs").exists()   # before the model load and any write


@pytest.fixture
def prep(prep_copy):
    """prep_copy with one stale bin beside the listed ones (a rerun with --limit): (folder, ids)."""
    ids = manifest_ids(prep_copy)
    shutil.copy(str(prep_copy / "{}.bin".format(ids[0])), str(prep_copy / "stale_000000_000000.bin"))
    return prep_copy, ids


def test_outputs_of_an_earlier_run_that_would_stay_are_refused(tmp_path, tiny_onnx_path, prep, stub):
    """A rerun on fewer images (or fewer outputs) left the earlier run's files under the new summary: the
    postprocess evaluated both runs' outputs as one, exit 0. The earlier summary stays when refused."""
    folder, ids = prep
    out = tmp_path / "out"
    run_infer(tiny_onnx_path, folder, out)
    summary = (out / "bs_summary.json").read_text()
    with pytest.raises(UserError, match=r"bs holds {} output files that this run would not replace \(e\.g\. "
                                        r"{}_0\.bin\)".format(2 * len(ids) - 2, ids[1])):
        run_infer(tiny_onnx_path, folder / "{}.bin".format(ids[0]), out)
    with pytest.raises(UserError, match="bs holds {} output files".format(len(ids))):
        run_infer(tiny_onnx_path, folder, out, "--output_indices", "1")
    assert (out / "bs_summary.json").read_text() == summary and len(list((out / "bs").iterdir())) == 2 * len(ids)
    run_infer(tiny_onnx_path, folder, out)                        # the same run again replaces every file
    assert json.loads((out / "bs_summary.json").read_text())["images"] == len(ids)


def test_inputs_that_would_write_the_same_output_names_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"inputs a\.x\.bin and a\.y\.bin would both write a_<n>"):
        run_outputs.check_output_stems(["a.x", "b", "a.y"])


# --- refusals before the model loads -------------------------------------------------------------------------

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


def test_no_output_or_summary_replaces_the_model_a_bin_or_the_manifest(tmp_path, tiny_onnx_path, prep_copy, stub):
    """An output file or the summary that links to (or is a hard link of) the model, a bin or the manifest would
    be written through: refused before the model loads, naming both."""
    model = tmp_path / "hrnet.onnx"
    shutil.copy(str(tiny_onnx_path), str(model))
    first = manifest_ids(prep_copy)[0]
    folder = tmp_path / "out" / "bs"
    folder.mkdir(parents=True)
    before = {path: path.read_bytes() for path in (model, prep_copy / "manifest.json", prep_copy / (first + ".bin"))}
    cases = ((folder / (first + "_1.bin"), model, "the output file {} is the model of this run"),
             (folder / (first + "_0.bin"), prep_copy / (first + ".bin"), "the output file {} is an input file of"),
             (tmp_path / "out" / "bs_summary.json", prep_copy / "manifest.json", "the summary {} is the preprocess "
                                                                                "manifest of this run"))
    for link, target, fragment in cases:
        os.symlink(str(target), str(link))
        with pytest.raises(UserError, match=fragment.format(link)):
            run_infer(model, prep_copy, tmp_path / "out")
        link.unlink()
    os.link(str(model), str(folder / (first + "_1.bin")))
    with pytest.raises(UserError, match="is the model of this run"):
        run_infer(model, prep_copy, tmp_path / "out")
    assert not stub.loaded and all(path.read_bytes() == data for path, data in before.items())


def test_infer_command_line_refusals(tmp_path, tiny_onnx_path, tiny_prep_path, stub, capsys):
    base = ["--model", tiny_onnx_path, "--input", tiny_prep_path, "--output", tmp_path]
    refused_by_argparse(infer.main, base + ["--preset", "w18"], capsys, "--preset", "invalid choice")
    refused_by_argparse(infer.main, base + ["--output_dirname", "../bs1"], capsys, "--output_dirname", "plain name")
    os.mkfifo(str(tmp_path / "bs1_summary.json"))   # never opened
    with pytest.raises(UserError, match="cannot write summary .*bs1_summary.json: it is a FIFO"):
        infer.main(list(map(str, base + ["--output_dirname", "bs1"])))
    assert not stub.loaded and not (tmp_path / "bs1").exists()


def test_input_files_must_be_listed_bins_of_their_folder(tmp_path, tiny_onnx_path, prep, stub):
    """x.txt ran the x.bin beside it (named x in the outputs); a bin the manifest does not list ran too."""
    folder, ids = prep
    (folder / "{}.txt".format(ids[0])).write_bytes(b"not model input")
    for name, fragment in (("{}.txt".format(ids[0]), "is not a .bin file of a preprocess folder"),
                           ("manifest.json", "is not a .bin file of a preprocess folder"),
                           ("stale_000000_000000.bin", "is not listed in .*manifest \\(a stale or foreign file\\)")):
        with pytest.raises(UserError, match=fragment):
            run_infer(tiny_onnx_path, folder / name, tmp_path / "out")
    assert not stub.loaded and not (tmp_path / "out").exists()


def test_an_empty_output_name_is_refused(tmp_path, tiny_onnx_path, tiny_prep_path, stub):
    with pytest.raises(UserError, match="--output is an empty name"):
        run_infer(tiny_onnx_path, tiny_prep_path, "")
    assert not stub.loaded
