"""`python3 -m hrnetseg.infer --device 0,1`: ais_bench's split (natural sort, contiguous parts of ceil(n/devices)),
its layout (DIRNAME/device<N>/, DIRNAME/device<N>_summary.json), per-device lines, summed throughput and exit code.
Without GPUs each device is a CPU process, so the layout runs here."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from hrnetseg.runner import cli as infer
from hrnetseg.runner import multi_device
from hrnetseg.runner.inputs import natural_key
from hrnetseg.runner.multi_device import split_contiguous
from hrnetseg.util.errors import UserError

from helpers import OUT_SHAPE, RUNNER, TINY_IMAGES, lock_held_elsewhere, manifest_ids, run_infer

DEVICE_LINE = re.compile(r"^i:(\d+) device_(\d+) throughput:([\d.e+-]+) start_time:([\d.]+) end_time:([\d.]+)$")


def sorted_ids(prep) -> list:
    return sorted(manifest_ids(prep), key=natural_key)


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory, tiny_onnx_path, tiny_prep_path):
    """The 5 tiny images at bs1 on --device 0,1 and on one device: (results folder, {name: process})."""
    from helpers import run_script

    out = tmp_path_factory.mktemp("devices") / "results"
    runs = {}
    for name, device in (("split", "0,1"), ("one", "cpu")):
        runs[name] = run_script(RUNNER + ["--model", tiny_onnx_path, "--input", tiny_prep_path, "--output", out,
                                          "--output_dirname", name, "--device", device])
        assert runs[name].returncode == 0, runs[name].stderr
    return out, runs


def test_ais_bench_split():
    assert split_contiguous(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    assert split_contiguous(list("abcde"), 2) == [list("abc"), list("de")]
    assert split_contiguous(list("abcd"), 3) == [list("ab"), list("cd")]   # device 2 would get nothing
    assert sorted(["x10.bin", "X2.bin", "x1.bin"], key=natural_key) == ["x1.bin", "X2.bin", "x10.bin"]
    assert sorted(["x1\u00b22.bin", "x1\u00b21.bin"], key=natural_key) == ["x1\u00b21.bin", "x1\u00b22.bin"]


def test_layout_is_ais_bench_s_and_outputs_equal_one_device(two_devices, tiny_prep_path):
    out, _ = two_devices
    ids = sorted_ids(tiny_prep_path)
    assert sorted(p.name for p in (out / "split").iterdir()) == [
        "device0", "device0_summary.json", "device1", "device1_summary.json"]
    assert not (out / "split_summary.json").exists()
    for device, part in ((0, ids[:3]), (1, ids[3:])):   # 5 on 2: ceil(5/2) = 3, then 2
        folder = out / "split" / "device{}".format(device)
        assert sorted(p.name for p in folder.iterdir()) == sorted("{}_{}.bin".format(i, k) for i in part for k in (0,
                                                                                                                   1))
        summary = json.loads((out / "split" / "device{}_summary.json".format(device)).read_text())
        assert summary["images"] == len(part) and summary["NPU_compute_time"]["count"] == len(part)
        assert [summary["filesinfo"][str(n)]["outfiles"][0] for n in range(len(part))] == [
            str(folder / "{}_0.bin".format(i)) for i in part]
        for sample_id in part:
            for k in (0, 1):
                name = "{}_{}.bin".format(sample_id, k)
                split = np.fromfile(str(folder / name), np.float32)
                one = np.fromfile(str(out / "one" / name), np.float32)
                assert split.size == int(np.prod(OUT_SHAPE)) and np.abs(split - one).max() <= 1e-6 * np.abs(one).max()


def test_per_device_blocks_lines_and_summed_throughput(two_devices):
    out, runs = two_devices
    lines = runs["split"].stdout.splitlines()
    assert lines[0].startswith("[INFO] multidevice:[0, 1] run begin: {} images in parts of 3 + 2".format(TINY_IMAGES))
    assert lines.count("[INFO] -----------------Performance Summary------------------") == 2
    device_lines = [DEVICE_LINE.match(line) for line in lines if line.startswith("i:")]
    assert sorted((m.group(1), m.group(2)) for m in device_lines) == [("0", "0"), ("1", "1")]
    for match in device_lines:
        summary = json.loads((out / "split" / "device{}_summary.json".format(match.group(2))).read_text())
        assert float(match.group(3)) == summary["throughput"] and float(match.group(4)) <= float(match.group(5))
    assert lines[-1] == "[INFO] summary throughput:{!r}".format(sum(float(m.group(3)) for m in device_lines))
    firsts = [line for line in lines if line.startswith("[INFO] onnxruntime on ")]
    assert sorted(re.search(r"device (\d) of --device 0,1 \(images (\d-\d) of 5\)", line).groups()
                  for line in firsts) == [("0", "1-3"), ("1", "4-5")], runs["split"].stdout
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert all("on cpu" in line and "a CPU process with" in line for line in firsts)


def test_a_failed_device_fails_the_run_and_removes_the_other_parts(run, tmp_path, tiny_onnx_path, tiny_prep_path):
    (tmp_path / "bs1" / "device1").mkdir(parents=True)
    stranger = tmp_path / "bs1" / "device1" / "another_0.bin"   # device 1 refuses to run beside it
    stranger.write_bytes(b"x")
    result = run(RUNNER + ["--model", tiny_onnx_path, "--input", tiny_prep_path, "--output", tmp_path,
                           "--output_dirname", "bs1", "--device", "0,1", "--warmup_count", "0"])
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "that this run would not replace" in result.stderr
    # device 0 finished (3 images x 2 outputs and its summary): removed, and said; device 1 removed its own
    assert result.stderr.strip().splitlines()[-1].endswith("device 1 failed (see above); removed what device 0 "
                                                           "wrote (7 files)")
    assert "[INFO] summary throughput:" in result.stdout
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "bs1", "bs1/device1", "bs1/device1/another_0.bin"]


def test_a_device_killed_by_a_signal_is_named_with_its_kill(monkeypatch, tiny_prep_path, capsys):
    """A device process the kernel killed (the OOM killer's SIGKILL) printed nothing: the last line says so."""
    report = {"throughput": 10.0, "start_time": 1.0, "end_time": 2.0}
    monkeypatch.setattr(multi_device, "_run_parts", lambda *args, **kwargs: [(0, (0, report)), (1, (-9, None))])
    with pytest.raises(UserError, match=r"^device 1 \(killed by SIGKILL \(out of memory\?\)\) failed \(see above\)$"):
        multi_device.run_devices(str(tiny_prep_path), "0,1", [0, 1], None, None, None, "onnxruntime", [])
    assert "1 of 2 devices done" in capsys.readouterr().out


def test_the_failure_message_says_what_was_removed_and_only_that(tmp_path):
    """Nothing finished: no removal claimed; a listed file that cannot be removed (here a folder in its place) is
    named, not claimed removed."""
    assert multi_device.removal_note([], []) == ""
    top = tmp_path / "bs"
    (top / "device0" / "a_0.bin").mkdir(parents=True)   # os.remove cannot remove it
    (top / "device0" / "a_1.bin").write_bytes(b"x")
    (top / "device0_summary.json").write_text(json.dumps({"filesinfo": {"0": {
        "infiles": ["prep/a.bin"], "outfiles": [str(top / "device0" / "a_0.bin"), str(top / "device0" / "a_1.bin"),
                                                str(top / "device0" / "gone_0.bin")]}}}))
    removed, kept = multi_device._remove_parts(str(top), [0, 1], [])
    assert removed == [(0, 2)] and kept == [str(top / "device0" / "a_0.bin")]   # a_1.bin and the summary
    assert multi_device.removal_note(removed, kept) == (
        "; removed what device 0 wrote (2 files); could not remove {}: remove it before evaluating this folder"
        .format(kept[0]))
    assert multi_device.removal_note([(0, 7), (2, 1)], []) == "; removed what devices 0, 2 wrote (8 files)"


def test_device_summaries_record_one_run_and_the_model(two_devices, tiny_onnx_path):
    """Each device process records the run id its parent made and the model file it ran; a one-device run records
    its own id; each device process prints ais_bench's output path line for its device folder."""
    out, runs = two_devices
    device_summaries = [json.loads((out / "split" / "device{}_summary.json".format(d)).read_text()) for d in (0, 1)]
    one = json.loads((out / "one_summary.json").read_text())
    stat = tiny_onnx_path.stat()
    model = {"path": str(tiny_onnx_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    assert [s["model_file"] for s in device_summaries] == [model, model] and one["model_file"] == model
    assert re.fullmatch("[0-9a-f]{32}", one["run_id"]) and device_summaries[0]["run_id"] == device_summaries[1][
        "run_id"] != one["run_id"]
    lines = runs["split"].stdout.splitlines()
    assert sorted(line for line in lines if "output path:" in line) == [
        "[INFO] output path:{}".format(out / "split" / "device{}".format(d)) for d in (0, 1)]
    assert runs["one"].stdout.splitlines()[0] == "[INFO] output path:{}".format(out / "one")


def test_a_damaged_device_part_or_report_is_one_line_or_a_failed_device(tmp_path, stub, tiny_prep_path):
    """The files between the parent of --device 0,1 and its device processes go through the one reader: a part
    nested 100000 deep, cut short or of wrong types is one line naming it; such a report is a failed device."""
    from hrnetseg.runner import multi_device

    model, part = tmp_path / "model.onnx", tmp_path / "shard0.json"
    model.write_bytes(b"stand-in")
    for content, fragment in (("[" * 100000 + "]" * 100000, "nests arrays or objects deeper than 100 levels"),
                              ('{"index": 0', "is not JSON"), (json.dumps({"index": "0"}), "has no 'device'")):
        part.write_text(content)
        with pytest.raises(UserError, match="device part {} {}".format(part, re.escape(fragment))):
            run_infer(model, tiny_prep_path, None, "--shard", part)
    assert not stub.loaded
    report = tmp_path / "report0.json"
    for content in ("[" * 100000 + "]" * 100000, '{"throughput": "9", "start_time": 0, "end_time": 1}'):
        report.write_text(content)
        assert multi_device._read_report(str(report)) is None


def test_device_layout_refusals(tmp_path, tiny_onnx_path, tiny_prep_path):
    def refused(dirname, device, message):
        with pytest.raises(UserError, match=message):
            infer.main(["--model", str(tiny_onnx_path), "--input", str(tiny_prep_path), "--output", str(tmp_path),
                        "--output_dirname", dirname, "--device", device])

    refused("many", "0,1,2,3,4,5", r"5 images for 6 devices: in parts of ceil\(5/6\) = 1 images, device 5 gets none")
    for device in ("0,\u0661", "cuda:\u0661", "\u0661"):   # \d and int() take an Arabic-Indic one as 1
        refused("odd", device, "device numbers are written in ASCII digits 0-9")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "x_1.bin").write_bytes(b"x")   # a one-device run's output beside the device folders
    refused("mixed", "0,1", "holds x_1.bin from an earlier run")
    (tmp_path / "three" / "device2").mkdir(parents=True)   # an earlier run on three devices
    refused("three", "0,1", "holds device2 from an earlier run")
    refused("three", "cpu", "holds device2 of an earlier --device 0,1 run")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["device2", "mixed", "three", "x_1.bin"]


def test_a_second_device_split_run_into_the_same_folder_stops_at_once(tmp_path, tiny_onnx_path, tiny_prep_path):
    with lock_held_elsewhere(tmp_path / "bs") as pid:
        with pytest.raises(UserError, match=r"bs is being written by another run \(PID {}\)".format(pid)):
            run_infer(tiny_onnx_path, tiny_prep_path, tmp_path, "--device", "0,1")
    assert not (tmp_path / "bs").exists()   # no device process started


def test_ctrl_c_stops_every_device_and_leaves_nothing(tmp_path, tiny_onnx_path, tiny_prep_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import REPO, default_sigint

    env = dict(os.environ, PYTHONPATH=str(REPO), HRNETSEG_PROGRESS="0")
    parent = subprocess.Popen([sys.executable] + RUNNER + [
        "--model", str(tiny_onnx_path), "--input", str(tiny_prep_path), "--output", str(tmp_path / "out"),
        "--output_dirname", "bs1", "--device", "0,1", "--loop", "300"], cwd=str(REPO), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("out/bs1/device0/*_1.bin")) and time.monotonic() < deadline:
        time.sleep(0.02)   # device 0's first batch written; its second one runs (--loop 300)
    assert parent.poll() is None, parent.communicate()
    parent.send_signal(signal.SIGINT)   # the parent alone: it stops the devices
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 130, err
    # the parent and device 0 at least (device 1, with 2 images, may have finished: its outputs go too)
    assert err.count("interrupted") >= 2 and "Traceback" not in err
    assert not (tmp_path / "out").exists()   # the devices' files, folders and the locks are gone
