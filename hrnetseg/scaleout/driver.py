"""The driver of a run on Ray (evaluate --ray, predict --ray): workers, batches, retries, the report.

It connects to Ray (or starts a loopback-only instance for `local`), starts the worker actors (each prints
`ray worker <i> pid <PID> node <NODE>` once it has loaded the model), keeps at most IN_FLIGHT batches queued
on each live worker and adds each returned result to the ledger once (batches.py). A worker that dies (its
process killed, its node lost) fails its unfinished batches: they go back to the queue and run on whichever
worker is live, the restarted one included, and are counted as retried. A batch failing MAX_ATTEMPTS times, or
no live worker left, stops the run (exit 1); an error text from a worker (a file it cannot read) stops it
at once (exit 2). Ctrl-C stops the workers and writes nothing.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import deque
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from hrnetseg.scaleout import import_ray
from hrnetseg.scaleout.batches import Batch, BatchLedger
from hrnetseg.scaleout.flags import host_and_port
from hrnetseg.util.cli import plain_decimal, progress
from hrnetseg.util.errors import UserError, exception_line

IN_FLIGHT = 2          # batches queued per worker: the next one is there when the current one ends
POLL_S = 0.5           # how often the driver looks at the clock while waiting (Ctrl-C, restart deadlines)
RESTART_S = 600.0      # a dead worker not back by then (no node can host it) counts as lost
CONNECT_S = 10.0       # how long a HOST:PORT may take to accept a connection
MAX_RESTARTS = 3       # how often Ray restarts a worker whose process died
# Test hook: each batch sleeps this long first on the worker, so that a test can kill a worker mid-run.
BATCH_DELAY_ENV = "HRNETSEG_TEST_RAY_BATCH_DELAY_S"


def batch_delay_s() -> float:
    text = os.environ.get(BATCH_DELAY_ENV, "").strip() or "0"
    value = plain_decimal(text)
    if value is None:
        raise UserError("{}={!r}: expected seconds".format(BATCH_DELAY_ENV, text))
    return value


def worker_threads(cpu_threads: Optional[int], cpus_per_worker: float) -> int:
    """A worker's model threads: --cpu_threads where the tool has it and it is given, else its CPUs."""
    return cpu_threads or max(1, int(round(cpus_per_worker)))


def check_reachable(address: str) -> None:
    """A HOST:PORT that refuses connections is a one-line error now; Ray itself would retry for minutes."""
    host, port = host_and_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_S).close()
    except OSError as exc:
        raise UserError("cannot connect to Ray at {}: {} (is `ray start --head` running there?)".format(
            address, exception_line(exc)))


def connect(ray, address: str) -> None:
    """Join the Ray cluster at `address`, or for `local` start one on this machine, bound to 127.0.0.1."""
    if address not in ("local", "auto") and not address.startswith("ray://"):
        check_reachable(address)
    options = dict(logging_level=logging.WARNING, log_to_driver=False)
    try:
        if address == "local":
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise UserError("cannot {} Ray at {}: {}".format("start" if address == "local" else "connect to",
                                                         address, exception_line(exc)))


def worker_count(ray, requested: Optional[int], cpus: float, gpus: float) -> int:
    """--ray_workers, or as many workers as the cluster's CPUs (and GPUs) hold; refused when it has too few."""
    resources = ray.cluster_resources()
    have_cpus, have_gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    fits = int(have_cpus // cpus) if cpus else 10 ** 6
    if gpus:
        fits = min(fits, int(have_gpus // gpus))
    workers = requested or fits
    if workers < 1 or workers > fits:
        raise UserError("{} Ray worker{} of {:g} CPU{} need {:g} CPUs{}; the cluster has {:g} CPUs and {:g} GPUs "
                        "(lower --ray_workers, --ray_cpus_per_worker or --ray_gpus_per_worker)".format(
                            max(workers, 1), "" if workers == 1 else "s", cpus, "" if cpus == 1 else "s",
                            max(workers, 1) * cpus, " and {:g} GPUs".format(max(workers, 1) * gpus) if gpus else "",
                            have_cpus, have_gpus))
    return workers


class Worker(object):
    """The driver's view of one actor: its handle, where it runs, what it did."""

    def __init__(self, index: int, handle) -> None:
        self.index, self.handle = index, handle
        self.info: dict = {}
        self.live = False         # loaded and taking batches
        self.lost = False         # dead for good
        self.in_flight = 0
        self.images = 0
        self.busy_s = 0.0
        self.restarting_since: Optional[float] = None
        self.failed_pings = 0   # ready() calls that found the actor dead

    def summary(self) -> dict:
        return {"node": self.info.get("node"), "pid": self.info.get("pid"), "images": self.images,
                "busy_s": round(self.busy_s, 3)}


class RayRun(object):
    """One run on Ray: `workers` actors of `actor_class(index, *actor_args)` (with ready() and
    run_batch(batch id, ids)); run() hands out the batches and returns the ledger once every batch is in.
    `plan(first worker's ready() answer)` makes the batches once every worker has started (the evaluation's
    depend on the model's batch size, which only a worker that loaded it knows)."""

    def __init__(self, ray, actor_class, actor_args: tuple, plan: Callable[[dict], List[Batch]],
                 ledger: BatchLedger, workers: int, cpus: float, gpus: float) -> None:
        self.ray, self.plan, self.ledger = ray, plan, ledger
        self.batches: List[Batch] = []
        actor = ray.remote(actor_class).options(num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RESTARTS,
                                                max_task_retries=0)
        self.workers = [Worker(i, actor.remote(i, *actor_args)) for i in range(workers)]
        for worker in self.workers:
            worker.restarting_since = time.monotonic()   # starting counts as restarting: same deadline
        self.pending: deque = deque()
        self.running: Dict[object, Tuple[Batch, Worker]] = {}  # ref -> (batch, worker)
        self.pings: Dict[object, Worker] = {}  # ref of ready() -> worker
        self.loaded: Optional[dict] = None  # the first worker's ready() answer
        self.starting = workers   # batches go out once every worker has loaded the model (or failed to)
        self.wall_s = 0.0
        self.driver_s = 0.0   # time the driver spent handing out batches and adding results (not waiting)
        self._began: Optional[float] = None

    @property
    def retried_batches(self) -> int:
        return len(self.ledger.retried)

    @property
    def nodes(self) -> int:
        return len({w.info.get("node_id") for w in self.workers if w.info.get("node_id")})

    def stop(self) -> None:
        """Kill every worker (no restart)."""
        for worker in self.workers:
            try:
                self.ray.kill(worker.handle, no_restart=True)
            except Exception:   # noqa: B902 - already gone, or the cluster with it
                pass

    def run(self, on_images: Callable[[int], None]) -> BatchLedger:
        for worker in self.workers:
            self.pings[worker.handle.ready.remote()] = worker
        while not self.ledger.complete:
            began = time.perf_counter()
            self._dispatch()
            if not self.running and not self.pings:
                raise UserError("no live Ray worker left ({} of {} batches done)".format(
                    len(self.ledger.added), len(self.batches)), exit_code=1)
            waited = time.perf_counter()
            ready, _ = self.ray.wait(list(self.running) + list(self.pings), num_returns=1, timeout=POLL_S)
            resumed = time.perf_counter()
            for ref in ready:
                if ref in self.pings:
                    self._answered(ref, self.pings.pop(ref))
                else:
                    self._finished(ref, on_images)
            self._give_up_on_restarts()
            self.driver_s += (waited - began) + (time.perf_counter() - resumed)
        self.wall_s = time.perf_counter() - (self._began or time.perf_counter())
        return self.ledger

    # --- steps of the loop ---------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand out pending batches, each to the live worker with the fewest in flight (so that a short
        run still spreads over every worker), up to IN_FLIGHT per worker."""
        if self.starting:
            return
        while self.pending:
            free = [w for w in self.workers if w.live and w.in_flight < IN_FLIGHT]
            if not free:
                return
            worker = min(free, key=lambda w: w.in_flight)
            batch = self.pending.popleft()
            if batch.id in self.ledger.added:
                continue
            if self._began is None:
                self._began = time.perf_counter()
            self.running[worker.handle.run_batch.remote(batch.id, batch.image_ids)] = (batch, worker)
            worker.in_flight += 1

    def _answered(self, ref, worker: Worker) -> None:
        """A ready() ping came back: the worker (re)started and loaded the model, or it is gone."""
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            worker.failed_pings += 1
            if worker.failed_pings <= MAX_RESTARTS:   # its process died: Ray may be restarting it, ask again
                self.pings[worker.handle.ready.remote()] = worker
                return
            if not worker.info:   # it never started: its constructor fails, or its process dies each time
                raise UserError("ray worker {} could not start: {}".format(worker.index, exception_line(exc)))
            worker.lost, worker.restarting_since = True, None
            print("ray worker {} lost: {}".format(worker.index, exception_line(exc, 200)), flush=True)
            return
        if info["error"]:
            raise UserError(info["error"])
        restarted = bool(worker.info)
        if not restarted:
            self.starting -= 1
        worker.info, worker.live, worker.restarting_since = info, True, None
        self.loaded = self.loaded or info
        print("ray worker {} pid {} node {}{}".format(worker.index, info["pid"], info["node"],
                                                      " (restarted)" if restarted else ""), flush=True)
        if not restarted and not self.starting:
            self.batches = self.plan(self.loaded)
            self.ledger.plan(self.batches)
            self.pending.extend(self.batches)
            print("{} batches of up to {} images".format(
                len(self.batches), max(len(batch.image_ids) for batch in self.batches)), flush=True)

    def _finished(self, ref, on_images) -> None:
        batch, worker = self.running.pop(ref)
        worker.in_flight -= 1
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self.ledger.failed(batch.id, "ray worker {} died: {}".format(worker.index, exception_line(exc, 200)))
            self.pending.appendleft(batch)
            if worker.live:   # ask the (restarting) actor to report back; no batches for it until then
                worker.live, worker.restarting_since = False, time.monotonic()
                self.pings[worker.handle.ready.remote()] = worker
            return
        except self.ray.exceptions.RayError as exc:   # the task raised, or its result was lost: try again
            self.ledger.failed(batch.id, "ray worker {}: {}".format(worker.index, exception_line(exc, 200)))
            self.pending.appendleft(batch)
            return
        if result.get("error"):
            raise UserError(result["error"])
        images = self.ledger.add_result(batch.id, result)
        if images:
            worker.images += images
            worker.busy_s += result["busy_s"]
            worker.info["pid"] = result.get("pid", worker.info.get("pid"))
            on_images(images)

    def _give_up_on_restarts(self) -> None:
        now = time.monotonic()
        for ref, worker in list(self.pings.items()):
            if worker.restarting_since is not None and now - worker.restarting_since > RESTART_S:
                if not worker.info:
                    raise UserError("ray worker {} did not start within {:.0f} s (no node with the CPUs and "
                                    "GPUs it needs?)".format(worker.index, RESTART_S), exit_code=1)
                del self.pings[ref]
                worker.lost = True
                print("ray worker {} lost: not restarted within {:.0f} s".format(worker.index, RESTART_S),
                      flush=True)


def engine_entry(run: RayRun) -> dict:
    """The result file's "engine" entry."""
    return {"name": "ray", "workers": len(run.workers), "nodes": run.nodes, "retried_batches": run.retried_batches,
            "per_worker": [w.summary() for w in run.workers]}


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[object]:
    """The ray module, connected to `address` (for `local`, a Ray instance started here); on the way out,
    disconnected (a local instance stopped, a joined cluster left running)."""
    ray = import_ray(loopback=address == "local")
    connect(ray, address)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_batches(run: RayRun, total: int, desc: str, done: Callable[[], int], what: str) -> BatchLedger:
    """run.run() under a progress bar; Ctrl-C (or any error) stops the workers. On Ctrl-C says how many of
    `total` were done (`done()`) and that nothing was written (`what` names the unit, e.g. "images evaluated")."""
    try:
        with progress(total=total, desc=desc) as bar:
            try:
                return run.run(bar.update)
            except KeyboardInterrupt:
                bar.close()
                print("interrupted: {} of {} {}; workers stopped".format(done(), total, what), flush=True)
                raise
    finally:
        run.stop()


def worker_report(evaluation: RayRun) -> List[str]:
    """One line per worker (node, pid, images, busy time), then the wall time, the driver's time and the
    retried batches."""
    lines = ["{:<7} {:<16} {:>8} {:>7} {:>9} {:>10}".format("worker", "node", "pid", "images", "busy (s)",
                                                          "busy/wall")]
    for worker in evaluation.workers:
        lines.append("{:<7} {:<16} {:>8} {:>7} {:>9.3f} {:>9.0f}%".format(
            worker.index, str(worker.info.get("node", "-")), str(worker.info.get("pid", "-")), worker.images,
            worker.busy_s, 100.0 * worker.busy_s / evaluation.wall_s if evaluation.wall_s > 0 else 0.0))
    images = sum(worker.images for worker in evaluation.workers)
    lines.append("wall {:.2f} s for {} images (first batch out to last result back, model load excluded): {:.2f} "
                 "images/s".format(evaluation.wall_s, images, images / evaluation.wall_s if evaluation.wall_s else 0.0))
    batches = len(evaluation.batches)
    lines.append("driver busy {:.3f} s for {} batches ({:.2f} ms per batch); retried batches: {}".format(
        evaluation.driver_s, batches, 1000.0 * evaluation.driver_s / max(1, batches), evaluation.retried_batches))
    return lines
