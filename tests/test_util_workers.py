"""workers: the pool of the data steps in every mode, early stops, and forked workers after OpenCV ran."""
from __future__ import annotations

from pathlib import Path

import pytest

from hrnetseg.data import cityscapes
from hrnetseg.util.workers import parallel_results

from helpers import run_script


def _square(x):
    return x * x


@pytest.mark.parametrize("workers,processes", [(1, None), (2, False), (2, True), (3, None)])
def test_parallel_results_every_mode(workers, processes):
    tasks = list(range(7))
    with parallel_results(_square, tasks, workers, "test", processes=processes) as results:
        assert sorted(results) == [x * x for x in tasks]


def test_parallel_results_stops_early_on_error():
    seen = []

    def record(x):
        seen.append(x)
        if x == 0:
            raise ValueError("boom")
        return x

    with pytest.raises(ValueError):
        with parallel_results(record, list(range(100)), 2, "test") as results:
            for _ in results:
                pass
    assert len(seen) < 100  # what had not started was cancelled


FORK_AFTER_OPENCV = """
import sys
sys.path.insert(0, sys.argv[1])
from hrnetseg.data import preprocess, sample_scenes
from hrnetseg.util.workers import parallel_results
sample_scenes.generate(sys.argv[2], n=1, height=256, width=512)  # leaves OpenCV's thread pool in a state that
with parallel_results(preprocess._convert_one, tasks, 2, "x", processes=True) as results:  # hung children
    print(sorted(r[0] for r in results))
"""


def test_forked_workers_do_not_hang_after_opencv_ran(sample_data_root, tmp_path):
    """Regression: forked children that reconfigured OpenCV's thread pool after the parent had generated
    data hung forever (reproduced with this exact sequence)."""
    samples = cityscapes.find_images(str(sample_data_root))
    tasks = [(s.id, s.image, str(tmp_path / (s.id + ".bin")), "float32", (128, 256), samples[0].image) for s in samples]
    code = "tasks = {!r}\n".format(tasks) + FORK_AFTER_OPENCV
    result = run_script(["-c", code, Path(__file__).resolve().parents[1], tmp_path / "gen"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "['ok', 'ok', 'ok']" in result.stdout


STOP_EARLY_WITH_A_SIGTERM_HANDLER = """
import signal, sys, time
sys.path.insert(0, sys.argv[1])
from hrnetseg.util.workers import parallel_results
signal.signal(signal.SIGTERM, lambda signum,
              frame: None)   # a parent's handler that does not exit (Ray's driver has one)
def slow(x):
    time.sleep(0.05)
    return x
with parallel_results(slow, list(range(40)), 2, "x", processes=True) as results:
    for first in results:
        break   # leave early: the pool terminates workers that are still waiting for tasks
print("stopped")
"""


def test_an_early_stop_ends_forked_workers_whatever_sigterm_handler_they_inherit():
    """Regression: pool.terminate() holds the task queue's lock and sends SIGTERM; workers that inherited a
    handler which does not exit waited on that lock forever, and so did the parent (a hung CI run)."""
    result = run_script(["-c", STOP_EARLY_WITH_A_SIGTERM_HANDLER, Path(__file__).resolve().parents[1]], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
