"""processes: a child's exit status in words, and the bench's children reporting a kill as one."""
from __future__ import annotations

import signal
import subprocess
import sys

from hrnetseg.bench import jobs
from hrnetseg.util.processes import exit_status_text


def test_exit_status_in_words_for_a_real_killed_child():
    killed = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert exit_status_text(killed.returncode) == "killed by SIGKILL (out of memory?)"
    assert exit_status_text(-signal.SIGTERM) == "killed by SIGTERM"
    assert exit_status_text(3) == "exit code 3" and exit_status_text(-200) == "killed by signal 200"


def test_a_bench_child_killed_mid_way_reports_the_kill_not_its_last_progress_line(tmp_path, monkeypatch):
    def killed_child(args, **kwargs):
        return subprocess.CompletedProcess(args, -9, "", "Statistics collection  50% 8/16\n")

    monkeypatch.setattr(jobs.subprocess, "run", killed_child)
    result = jobs.Runner(str(tmp_path))({"job": "calibrate"})
    assert result["error"] == "killed by SIGKILL (out of memory?)"

    def failed_child(args, **kwargs):
        return subprocess.CompletedProcess(args, 2, "", "bench: error: the model is not int8\n")

    monkeypatch.setattr(jobs.subprocess, "run", failed_child)
    assert jobs.Runner(str(tmp_path))({"job": "calibrate"})["error"] == "the model is not int8"
