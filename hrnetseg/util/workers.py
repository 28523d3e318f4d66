"""The worker pool of the data steps: a function over many tasks, in this thread, in threads or in forked
processes, results in completion order behind a progress bar.

The preprocess (image -> bin) and the postprocess (output + label -> confusion matrix) run through it. Forked
workers ignore Ctrl-C (the parent's business) and die with the parent, and OpenCV runs on one thread while
the pool works (the parallelism is ours).
Atlas-side module: standard library, tqdm (the bar) and OpenCV (its thread count), valid Python 3.7.
"""
from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
from typing import Iterator, Optional, Sequence

from hrnetseg.util.cli import progress
from hrnetseg.util.processes import die_with_parent

THREADS_UP_TO = 4  # workers; beyond this, processes (the GIL would start to limit numpy-heavy work)


@contextlib.contextmanager
def parallel_results(func, tasks: Sequence, workers: int, desc: str,
                     processes: Optional[bool] = None) -> Iterator[Iterator]:
    """func(task) for every task, results in completion order behind a progress bar.

    workers == 1: in this thread. Up to THREADS_UP_TO: threads (no start-up cost; decoding, table look-ups,
    file writes and numpy's large loops release the GIL). More: forked processes (func and tasks must
    pickle). Leaving the block early (an error, Ctrl-C) cancels what has not started and waits for what has.
    """
    workers = max(1, min(workers, len(tasks)))
    if processes is None:
        processes = workers > THREADS_UP_TO
    if workers == 1:
        results = map(func, tasks)
    elif processes:
        results = _process_results(func, tasks, workers)
    else:
        results = _thread_results(func, tasks, workers)
    try:
        with _opencv_single_threaded():  # the parallelism is ours; OpenCV's own pool would oversubscribe
            yield progress(results, total=len(tasks), desc=desc)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def _thread_results(func, tasks: Sequence, workers: int) -> Iterator:
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    executor = ThreadPoolExecutor(workers)
    waiting = iter(tasks)
    running = set()
    try:
        for task in itertools.islice(waiting, 2 * workers):
            running.add(executor.submit(func, task))
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                for task in itertools.islice(waiting, 1):
                    running.add(executor.submit(func, task))
                yield future.result()
    finally:
        for future in running:
            future.cancel()
        executor.shutdown(wait=True)


def _process_results(func, tasks: Sequence, workers: int) -> Iterator:
    with _opencv_single_threaded():  # forked children must inherit a pool without threads
        pool = _pool_context().Pool(workers, initializer=_start_worker, initargs=(os.getpid(),))
    try:
        for result in pool.imap_unordered(func, tasks):
            yield result
        pool.close()
        pool.join()   # each worker takes its end-of-work marker and exits: no signal needed
    finally:
        pool.terminate()   # an early exit (an error, Ctrl-C): SIGTERM to the workers still running
        pool.join()


def _start_worker(parent_pid: int) -> None:
    """A killed run leaves no orphan worker that goes on writing bins from the tasks still queued in the pipe.
    (The pool's thread that replaces a crashed worker, its kernel "parent", ends with the pool, which is when
    the workers are stopped anyway.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    # pool.terminate() holds the task queue's lock and relies on SIGTERM killing the workers blocked on it; a
    # handler inherited from the parent (Ray's driver installs one, for one) would leave them waiting forever
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent_pid)


@contextlib.contextmanager
def _opencv_single_threaded() -> Iterator[None]:
    """OpenCV on one thread for a while. Before forking this also matters for correctness: OpenCV's thread
    pool is joined first, so the children inherit a consistent one-thread state (a child that reconfigures
    a pool whose threads it did not inherit hangs forever)."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _pool_context():
    # fork: workers start in milliseconds and share the parent's imports; elsewhere the platform's default
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()
