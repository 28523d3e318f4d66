"""One child process per measurement: the parent's runner of children and the child's side of a job.

Every measurement runs in its own child (`python -m hrnetseg.bench --_child JOB.json`): peak memory (VmHWM)
is per measurement and none inherits another's caches, threads or allocator state. The parent writes the job
as JSON, the child writes its result beside it; a child that fails gives the parent its error line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable, Dict

from hrnetseg.bench.machine import one_minute_load, peak_rss_mib
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import require_file, write_text_atomic
from hrnetseg.util.processes import env_for_python_children, exit_status_text

CHILD_FLAG = "--_child"

Job = Callable[[dict], dict]


def child_main(job_path: str, jobs: Dict[str, Job]) -> int:
    """Run the job the parent wrote to job_path (its "job" key names one of `jobs`); write its result."""
    require_file(job_path, "benchmark job")   # never open a FIFO: the child would wait for ever
    try:
        with open(job_path) as fh:
            job = json.load(fh)
        run_job = jobs[job["job"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError("{} is not a benchmark job the parent wrote ({})".format(job_path, exc))
    result = run_job(job)
    result["peak_rss_mib"] = peak_rss_mib()
    write_text_atomic(job["result"], json.dumps(result))
    return 0


class Runner:
    """Starts one child per measurement; returns its result with the load average around it, or its error."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.count = 0

    def __call__(self, job: dict) -> dict:
        self.count += 1
        stem = os.path.join(self.workdir, "jobs", "{:03d}-{}".format(self.count, job["job"]))
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        job = dict(job, result=stem + ".result.json")
        with open(stem + ".json", "w") as fh:
            json.dump(job, fh)
        env = env_for_python_children()
        env.setdefault("HRNETSEG_PROGRESS", "0")
        before = one_minute_load()
        proc = subprocess.run([sys.executable, "-m", "hrnetseg.bench", CHILD_FLAG, stem + ".json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        after = one_minute_load()
        if proc.returncode != 0 or not os.path.isfile(job["result"]):
            lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
            error = (exit_status_text(proc.returncode) if proc.returncode < 0 or not lines
                     else lines[-1].split(": error: ", 1)[-1])
            return {"error": error, "load": (before, after)}
        with open(job["result"]) as fh:
            result = json.load(fh)
        result["load"] = (before, after)
        return result
