"""python -m hrnetseg.predict --ray: image files predicted by PredictionWorker actors, batches of paths.

The driver decides once, before any work, which pictures each image still needs (hrnetseg.prediction.outputs,
as a run in one process does) and leaves out the images that need none. A worker reads its images from their
paths (the same on every node) and writes exactly those files into the shared output folder, each atomically
(prediction.predict_image_file), so a batch that runs again after its worker died rewrites the same files with
the same pictures. Counts, the source each image was read as and the paths of inputs that could not be read
travel back; the driver adds each finished image to the output folder's record. Videos are not sent to Ray
(predict runs them in its own process).
"""
from __future__ import annotations

import os
import time
from collections import namedtuple
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.data.images import max_pixels, set_max_pixels
from hrnetseg.evaluation.multiscale import check_model_takes, main_output_runner
from hrnetseg.prediction.inputs import Input
from hrnetseg.prediction.outputs import OutputRecord, record_key
from hrnetseg.prediction.per_input import UnreadableInput, predict_image_file
from hrnetseg.scaleout.batches import BatchLedger, plan_batches
from hrnetseg.scaleout.driver import RayRun, batch_delay_s, ray_session, run_batches, worker_count, worker_threads
from hrnetseg.scaleout.evaluation import describe_workers
from hrnetseg.scaleout.flags import RayOptions
from hrnetseg.scaleout.worker import RayWorker, fetched
from hrnetseg.util.errors import UserError

PredictionConfig = namedtuple("PredictionConfig", ["kind", "model", "device", "precision", "preset",
                                                   "output_index", "batchsize", "warmup", "threads",
                                                   "batch_delay_s", "tta", "needed", "output", "skip_bad",
                                                   "max_pixels"])
# needed: every model input size the images need (checked once per worker before any batch); max_pixels: the
# driver's pixel budget (hrnetseg.data.images.set_max_pixels)


class PredictionWorker(RayWorker):
    """A worker of predict --ray: `run_batch()` predicts one batch of image paths and writes their pictures."""

    def __init__(self, index: int, config: PredictionConfig, listing: Sequence[Tuple[Input, Tuple[str, ...]]]) -> None:
        super().__init__(index)
        self.config = config
        self.items: Dict[str, Tuple[Input, Tuple[str, ...]]] = {item.path: (item, kinds)
                                                              for item, kinds in fetched(listing)}
        set_max_pixels(config.max_pixels)
        began = time.perf_counter()
        try:
            self.backend = self.load(config.kind, config.model, config.device, config.precision, config.preset,
                                     config.threads)
            check_model_takes(self.backend.input, config.needed)
            self.run_main = main_output_runner(self.backend, config.output_index, config.batchsize or 1)
            for _ in range(config.warmup if config.warmup is not None else (0 if self.backend.device == "cpu" else 1)):
                self.run_main(np.zeros((1, 3) + tuple(config.needed[0]), np.float32))
        except UserError as exc:
            self.error = self.failure(exc)
        self.load_s = time.perf_counter() - began

    def run_batch(self, batch_id: int, paths: Sequence[str]) -> dict:
        """{"ids", "predicted", "written", "done": [(path, source)], "bad": [(path, reason)], "busy_s"}; or
        {"error": ...} (an input that cannot be read without --skip_bad, an output that cannot be written)."""
        if self.error is not None:
            return {"batch": batch_id, "error": self.error}
        if self.config.batch_delay_s:
            time.sleep(self.config.batch_delay_s)   # test hook: a batch that takes a while (see driver.py)
        began = time.perf_counter()
        predicted, written, done, bad = 0, 0, [], []
        try:
            for path in paths:
                if path not in self.items:
                    raise UserError("input {} is not in the listing the driver sent".format(path))
                item, kinds = self.items[path]
                try:
                    outcome = predict_image_file(item, self.config.output, kinds, self.run_main, self.config.tta)
                except UnreadableInput as exc:
                    if not self.config.skip_bad:
                        raise
                    bad.append((exc.path, exc.reason))
                    continue
                predicted += outcome.predicted
                written += len(outcome.written)
                done.append((path, list(outcome.source)))
        except UserError as exc:
            return {"batch": batch_id, "error": self.failure(exc)}
        seconds = time.perf_counter() - began
        self.busy_s += seconds
        return {"batch": batch_id, "ids": list(paths), "predicted": predicted, "written": written, "done": done,
                "bad": bad, "busy_s": seconds, "pid": os.getpid()}


class PredictionLedger(BatchLedger):
    """The images predicted and files written, each batch counted once; the inputs that could not be read. Each
    finished image goes into the output folder's record (`finished(path, source)`)."""

    def __init__(self, batches, finished: Callable[[str, Sequence], None] = lambda path, source: None) -> None:
        super().__init__(batches)
        self.predicted, self.written = 0, 0
        self.bad: List[Tuple[str, str]] = []
        self.finished = finished

    def add_result(self, batch_id: int, result: dict) -> int:
        if not self.accept(batch_id, result["ids"]):
            return 0
        self.predicted += int(result["predicted"])
        self.written += int(result["written"])
        self.bad.extend((str(path), str(reason)) for path, reason in result["bad"])
        for path, source in result.get("done", []):
            self.finished(path, source)
        return len(result["ids"])


def predict_on_ray(options: RayOptions, kind: str, model: str, tta, images: Sequence[Input],
                   needed: List[Tuple[int, int]], *, output: str, plan: Dict[str, Tuple[str, ...]],
                   record: Optional[OutputRecord], settings: dict, skip_bad: bool, device: Optional[str],
                   precision: str, preset: str, output_index: Optional[int], batchsize: Optional[int],
                   warmup: Optional[int]) -> Tuple[Optional[PredictionLedger], Optional[RayRun], List[str]]:
    """Predict the image inputs on Ray, writing the kinds of pictures `plan` gives each (input path -> kinds)
    under output, the model run as the backend flags say, each finished image added to `record`; returns
    (ledger, run, the inputs left alone because their outputs are up to date). Ledger and run are None when no
    image needs predicting (Ray is then not started)."""
    todo, left_alone, by_path = [], [], {}
    for item in images:
        kinds = plan[item.path]
        if kinds:   # absolute paths: a worker's working folder is not the driver's
            todo.append((item._replace(path=os.path.abspath(item.path)), kinds))
            by_path[os.path.abspath(item.path)] = (item, kinds)
        else:
            left_alone.append(item.path)
    if not todo:
        return None, None, left_alone
    config = PredictionConfig(kind=kind, model=os.path.abspath(model), device=device, precision=precision,
                              preset=preset, output_index=output_index, batchsize=batchsize,
                              warmup=warmup, threads=worker_threads(None, options.cpus_per_worker),
                              batch_delay_s=batch_delay_s(), tta=tta, needed=list(needed),
                              output=os.path.abspath(output), skip_bad=skip_bad, max_pixels=max_pixels())
    batches = plan_batches([item.path for item, _ in todo], options.batch_images, 1)

    def finished(path: str, source: Sequence) -> None:
        if record is not None and path in by_path:
            item, kinds = by_path[path]
            record.add(record_key(item), tuple(source), kinds, settings)
            record.save()

    ledger = PredictionLedger(None, finished)
    with ray_session(options.address) as ray:
        workers = worker_count(ray, options.workers, options.cpus_per_worker, options.gpus_per_worker)
        run = RayRun(ray, PredictionWorker, (config, (ray.put(todo),)), lambda loaded: batches, ledger, workers,
                     options.cpus_per_worker, options.gpus_per_worker)
        print("predict: {} image{} on Ray at {}: {}{}".format(
            len(todo), "" if len(todo) == 1 else "s", options.address, describe_workers(options, workers),
            "; {} left alone (outputs exist)".format(len(left_alone)) if left_alone else ""), flush=True)
        run_batches(run, len(todo), "predict (ray)", lambda: ledger.predicted,
                    "images predicted (their files are complete)")
        return ledger, run, left_alone
