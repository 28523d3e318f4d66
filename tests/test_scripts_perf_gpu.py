"""scripts/perf_gpu.sh end to end, with a stand-in trtexec: the mean GPU compute time read by name, a failed run
named with its time, never an infinite, negative or zero throughput in the table."""
from __future__ import annotations

import os
import re

import pytest

from helpers import assert_user_error, bash, bash_plus_env, calls, table_rows, write_tool

TRTEXEC = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as fh:
    fh.write(json.dumps(["trtexec"] + args) + "\n")
batch = int(args[2].split(":")[1].split("x")[0])
print("[I] Host Latency: min = 1 ms, max = 999 ms, mean = 999.0 ms, median = 5 ms")
print("[01/01/2024-00:00:00] [I] GPU Compute Time: min = 100 ms, max = 300 ms, mean = %.1f ms, median = 7 ms, "
      "percentile(99%%) = 290 ms" % (160.0 * batch))
'''


def test_perf_gpu_reads_the_mean_gpu_compute_time_by_name(tools, tmp_path, tiny_onnx_path):
    folder, env, log = tools
    write_tool(folder, "trtexec", TRTEXEC)
    result = bash("perf_gpu.sh", "--onnx", tiny_onnx_path, "--output_dir", tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert calls(log, "trtexec") == [["--onnx={}".format(tiny_onnx_path), "--fp16",
                                      "--shapes=image:{}x3x1024x2048".format(bs)] for bs in (1, 4)]
    rows = table_rows(result.stdout)
    assert rows == [["1", "160.00", "6.25"], ["4", "640.00", "6.25"]]     # fps = N * 1000 / mean


def test_perf_gpu_names_a_failed_trtexec_run_and_its_time(tools, tmp_path, tiny_onnx_path):
    folder, env, _ = tools
    write_tool(folder, "trtexec", "import sys\nprint('[E] engine build failed')\nsys.exit(4)\n")
    result = bash("perf_gpu.sh", "--onnx", tiny_onnx_path, "--output_dir", tmp_path, env=env)
    assert result.returncode == 4 and "engine build failed" in result.stderr
    assert re.match(r"error: command failed \(exit 4\): trtexec --onnx=\S+ --fp16 --shapes=image:1x3x1024x2048 "
                    r"\(after \d+ s\)$", result.stderr.splitlines()[-1]), result.stderr


def test_perf_gpu_without_trtexec_says_so(tools, tiny_onnx_path):
    _, env, _ = tools
    result = bash("perf_gpu.sh", "--onnx", tiny_onnx_path, env=env)
    assert result.returncode != 0 and "trtexec not found" in result.stderr


TRTEXEC_MEAN = '#!/bin/sh\necho "[I] GPU Compute Time: min = 1 ms, max = 3 ms, mean = {} ms, median = 2 ms"\n'


@pytest.mark.parametrize("mean, row", [
    ("0", None), ("0.0", None), (".", None), ("-5", None), ("1e", None), ("1e-320", None),   # inf fps
    ("1500", "| 1 | 1500.00 | 0.667 |"),                      # below 1 fps: three digits, never 0.00
    ("0.004", "| 1 | 0.004 | 250000.00 |"),
])
def test_perf_gpu_never_shows_an_infinite_negative_or_zero_throughput(tmp_path, mean, row):
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "trtexec").write_text(TRTEXEC_MEAN.format(mean))
    (tools / "trtexec").chmod(0o755)
    (tmp_path / "x.onnx").write_bytes(b"onnx")
    result = bash_plus_env("perf_gpu.sh", "--onnx", "x.onnx", "--batch_sizes", "1", cwd=tmp_path,
                   env={"PATH": "{}:{}".format(tools, os.environ["PATH"])})
    if row is None:
        assert_user_error(result, "'{}' ms".format(mean), "trtexec_bs1.log", "not a usable time")
        assert "| 1 |" not in result.stdout
    else:
        assert result.returncode == 0, result.stderr
        assert row in result.stdout.splitlines()
