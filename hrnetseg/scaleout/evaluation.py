"""python -m hrnetseg.evaluate --ray: the evaluation's batches (runs of image ids, whole model batches) on
EvaluationWorker actors, each batch's confusion matrix added once (batches.Ledger)."""
from __future__ import annotations

import argparse
import os
from typing import List, Tuple

from hrnetseg.data.cityscapes import NUM_CLASSES, Sample
from hrnetseg.scaleout.batches import Ledger, plan_batches
from hrnetseg.scaleout.driver import (RayRun, batch_delay_s, engine_entry, ray_session, run_batches, worker_count,
                                      worker_threads)
from hrnetseg.scaleout.worker import EvaluationWorker, WorkerConfig


def evaluate_on_ray(args: argparse.Namespace, kind: str, model: str, samples: List[Sample],
                    size: Tuple[int, int], tta=None) -> Tuple[Ledger, dict, RayRun]:
    """Evaluate `samples` on Ray (tta: a multiscale.TestTimeAugmentation, None for single scale); returns
    (ledger, the result's "engine" entry, the run for its report) or raises."""
    config = WorkerConfig(kind=kind, model=os.path.abspath(model), device=args.device, precision=args.precision,
                          preset=args.preset, input_dtype=args.input_dtype, size=tuple(size),
                          batchsize=args.batchsize, output_index=args.output_index, warmup=args.warmup_count,
                          threads=worker_threads(args), batch_delay_s=batch_delay_s(),
                          tta=tta)
    ids = [s.id for s in samples]
    ledger = Ledger(None, NUM_CLASSES)

    def plan(loaded: dict):   # whole model batches of the size the workers run (a fixed-batch model's own)
        return plan_batches(ids, args.ray_batch_images, loaded["batch"])

    with ray_session(args.ray) as ray:
        workers = worker_count(ray, args.ray_workers, args.ray_cpus_per_worker, args.ray_gpus_per_worker)
        # one copy in the object store, shared by every worker; absolute paths: a worker's working folder is
        # not the driver's
        listing = ray.put([s._replace(image=os.path.abspath(s.image), label=os.path.abspath(s.label))
                           for s in samples])
        run = RayRun(ray, EvaluationWorker, (config, (listing,)), plan, ledger, workers, args.ray_cpus_per_worker,
                     args.ray_gpus_per_worker)
        print("evaluate: {} images ({}x{}) from {} on Ray at {}: {}".format(
            len(samples), size[0], size[1], args.datasets_path, args.ray, describe_workers(args, workers)),
              flush=True)
        if tta is not None:
            print("test-time augmentation: {}; {} forward passes per image".format(
                tta.describe(), tta.forward_passes(*size)), flush=True)
        run_batches(run, len(samples), "evaluate (ray)", lambda: ledger.matrix.images,
                    "images evaluated; nothing written")
        return ledger, engine_entry(run), run


def describe_workers(args: argparse.Namespace, workers: int) -> str:
    """E.g. "2 workers of 1 CPU" or "8 workers of 4 CPUs and 1 GPU"."""
    cpus, gpus = args.ray_cpus_per_worker, args.ray_gpus_per_worker
    return "{} worker{} of {:g} CPU{}{}".format(workers, "" if workers == 1 else "s", cpus, "" if cpus == 1 else "s",
                                               " and {:g} GPU".format(gpus) if gpus else "")
