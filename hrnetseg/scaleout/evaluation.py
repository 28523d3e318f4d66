"""python -m hrnetseg.evaluate --ray: the evaluation's batches (runs of image ids, whole model batches) on
EvaluationWorker actors, each batch's confusion matrix added once (batches.Ledger)."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from hrnetseg.data.cityscapes import NUM_CLASSES, Sample
from hrnetseg.data.images import max_pixels
from hrnetseg.scaleout.batches import Ledger, plan_batches
from hrnetseg.scaleout.driver import (
    RayRun,
    batch_delay_s,
    engine_entry,
    ray_session,
    run_batches,
    worker_count,
    worker_threads,
)
from hrnetseg.scaleout.flags import RayOptions
from hrnetseg.scaleout.worker import EvaluationWorker, WorkerConfig


def evaluate_on_ray(options: RayOptions, kind: str, model: str, samples: List[Sample], size: Tuple[int, int],
                    tta=None, *, device: Optional[str], precision: str, preset: str, input_dtype: str,
                    batchsize: Optional[int], output_index: Optional[int], warmup: Optional[int],
                    cpu_threads: Optional[int], datasets_path: str) -> Tuple[Ledger, dict, RayRun]:
    """Evaluate `samples` (from datasets_path) on Ray (tta: a multiscale.TestTimeAugmentation, None for single
    scale), the model run as the backend flags say; returns (ledger, the result's "engine" entry, the run for
    its report) or raises."""
    config = WorkerConfig(kind=kind, model=os.path.abspath(model), device=device, precision=precision,
                          preset=preset, input_dtype=input_dtype, size=tuple(size), batchsize=batchsize,
                          output_index=output_index, warmup=warmup,
                          threads=worker_threads(cpu_threads, options.cpus_per_worker), batch_delay_s=batch_delay_s(),
                          tta=tta, max_pixels=max_pixels())
    ids = [s.id for s in samples]
    ledger = Ledger(None, NUM_CLASSES)

    def plan(loaded: dict):   # whole model batches of the size the workers run (a fixed-batch model's own)
        return plan_batches(ids, options.batch_images, loaded["batch"])

    with ray_session(options.address) as ray:
        workers = worker_count(ray, options.workers, options.cpus_per_worker, options.gpus_per_worker)
        # one copy in the object store, shared by every worker; absolute paths: a worker's working folder is
        # not the driver's
        listing = ray.put([s._replace(image=os.path.abspath(s.image), label=os.path.abspath(s.label))
                           for s in samples])
        run = RayRun(ray, EvaluationWorker, (config, (listing,)), plan, ledger, workers, options.cpus_per_worker,
                     options.gpus_per_worker)
        print("evaluate: {} images ({}x{}) from {} on Ray at {}: {}".format(
            len(samples), size[0], size[1], datasets_path, options.address, describe_workers(options, workers)),
              flush=True)
        if tta is not None:
            print("test-time augmentation: {}; {} forward passes per image".format(
                tta.describe(), tta.forward_passes(*size)), flush=True)
        run_batches(run, len(samples), "evaluate (ray)", lambda: ledger.matrix.images,
                    "images evaluated; nothing written")
        return ledger, engine_entry(run), run


def describe_workers(options: RayOptions, workers: int) -> str:
    """E.g. "2 workers of 1 CPU" or "8 workers of 4 CPUs and 1 GPU"."""
    cpus, gpus = options.cpus_per_worker, options.gpus_per_worker
    return "{} worker{} of {:g} CPU{}{}".format(workers, "" if workers == 1 else "s", cpus, "" if cpus == 1 else "s",
                                               " and {:g} GPU".format(gpus) if gpus else "")
