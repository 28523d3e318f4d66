"""The Ray actors' common part (RayWorker) and the evaluation's actor: loads the model once, then evaluates
batches of image ids.

Each batch runs through the streaming evaluation of one process (streaming.StreamingEvaluation: the same
decode, model batches, upsample + argmax and confusion matrix; with --scales/--flip its
AugmentedStreamingEvaluation, upstream's multi-scale testing), reading the images from the data set path
the driver listed, which must be the same on every node. Only the batch's 19 x 19 int64 confusion matrix and
its ids go back to the driver. A problem with the data or the model (a file that cannot be read) comes back
as an error text naming the node, so that the driver stops with one line instead of re-running the batch.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from collections import namedtuple
from typing import Dict, Optional, Sequence

from hrnetseg.backends import load_backend
from hrnetseg.backends.batching import batch_size_for, pad_batch
from hrnetseg.data.cityscapes import Sample
from hrnetseg.data.images import DEFAULT_MAX_PIXELS, set_max_pixels
from hrnetseg.evaluation.streaming import (
    INTERRUPT_AFTER_ENV,
    AugmentedStreamingEvaluation,
    StreamingEvaluation,
    check_backend,
)
from hrnetseg.util.errors import UserError, one_line

# What a worker needs to load and run the model the way the local evaluation would.
WorkerConfig = namedtuple("WorkerConfig", ["kind", "model", "device", "precision", "preset", "input_dtype",
                                           "size", "batchsize", "output_index", "warmup", "threads",
                                           "batch_delay_s", "tta", "max_pixels"], defaults=(DEFAULT_MAX_PIXELS,))
# tta: a multiscale.TestTimeAugmentation, or None for the single-scale path; max_pixels: the driver's pixel
# budget (hrnetseg.data.images.set_max_pixels)


def node_address() -> str:
    """This node's address in the Ray cluster (127.0.0.1 for every node of a loopback instance)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():   # outside a Ray worker (the unit tests)
        return socket.gethostname()
    return ray.util.get_node_ip_address()


def limit_threads(threads: int) -> None:
    """Give the model `threads` threads (the CPUs Ray reserved for this worker) and OpenCV one: the batch
    pipeline's stages are the other parallelism. Runs before the backend is imported."""
    os.environ["OMP_NUM_THREADS"] = str(threads)   # for OpenMP libraries; the backend is given `threads` too
    import cv2

    cv2.setNumThreads(1)


def fetched(listing):
    """The driver's listing: handed over as (object ref,) so that Ray does not inline it as a constructor
    argument (which a restart could lose); a plain list where no Ray is involved (the unit tests)."""
    if isinstance(listing, tuple):
        import ray

        return ray.get(listing[0])
    return listing


class RayWorker(object):
    """What every worker does: say where it runs (`ready()`), load the model with the threads it was given,
    and turn a UserError into an error text naming itself and its node (the driver stops on it)."""

    def __init__(self, index: int) -> None:
        os.environ.pop(INTERRUPT_AFTER_ENV, None)   # the local Ctrl-C test hook is the driver's, not ours
        self.index = index
        self.node = node_address()
        self.error: Optional[str] = None
        self.busy_s = 0.0
        self.load_s = 0.0
        self.backend = None

    def failure(self, exc: UserError) -> str:
        return "ray worker {} on node {}: {}".format(self.index, self.node, one_line(str(exc)))

    def load(self, kind: str, model: str, device: Optional[str], precision: str, preset: str, threads: int,
             input_dtype: str = "float32"):
        limit_threads(threads)
        return load_backend(kind, model, device=device, precision=precision, preset=preset,
                            input_dtype=input_dtype, threads=threads)

    def ready(self) -> dict:
        """Where this worker runs and what it loaded, or the error that stopped it."""
        import ray

        info = {"index": self.index, "pid": os.getpid(), "node": self.node,
                "node_id": ray.get_runtime_context().get_node_id(), "error": self.error, "load_s": self.load_s}
        if self.error is None:
            info.update(backend=self.backend.name, device=self.backend.device, precision=self.backend.precision)
        return info


class EvaluationWorker(RayWorker):
    """A worker of evaluate --ray: `run_batch()` evaluates one batch of image ids."""

    def __init__(self, index: int, config: WorkerConfig, samples: Sequence[Sample]) -> None:
        super().__init__(index)
        self.config = config
        self.samples: Dict[str, Sample] = {sample.id: sample for sample in fetched(samples)}
        set_max_pixels(config.max_pixels)
        began = time.perf_counter()
        try:
            self.backend = self.load(config.kind, config.model, config.device, config.precision, config.preset,
                                     config.threads, config.input_dtype)
            self.dtype, self.output_index = check_backend(self.backend, config.size, config.output_index, config.tta)
            self.batch = batch_size_for(self.backend, config.batchsize)
            warm_size = config.tta.input_sizes(*config.size)[0] if config.tta is not None else tuple(config.size)
            for _ in range(config.warmup if config.warmup is not None else (0 if self.backend.device == "cpu" else 1)):
                self.backend.run(pad_batch((), self.batch, (3,) + warm_size, self.dtype))
        except UserError as exc:
            self.error = self.failure(exc)
        self.load_s = time.perf_counter() - began

    def ready(self) -> dict:
        info = super().ready()
        if self.error is None:
            info.update(batch=self.batch, output_index=self.output_index, dtype=self.dtype,
                        output_name=self.backend.output_names[self.output_index])
        return info

    def run_batch(self, batch_id: int, image_ids: Sequence[str]) -> dict:
        """The batch's confusion matrix (19 x 19 int64), its ids and the seconds spent; or {"error": ...}."""
        if self.error is not None:
            return {"batch": batch_id, "error": self.error}
        if self.config.batch_delay_s:
            time.sleep(self.config.batch_delay_s)   # test hook: a batch that takes a while (see driver.py)
        began = time.perf_counter()
        size = tuple(self.config.size)
        try:
            missing = [image_id for image_id in image_ids if image_id not in self.samples]
            if missing:
                raise UserError("image id {} is not in the listing the driver sent".format(missing[0]))
            samples = [self.samples[i] for i in image_ids]
            if self.config.tta is None:
                pipeline = StreamingEvaluation(self.backend, samples, self.dtype, size, self.batch, self.output_index,
                                               max(4, 2 * self.batch))
            else:   # an item holds every scale's logits: a short queue, as the local evaluation keeps
                pipeline = AugmentedStreamingEvaluation(self.backend, samples, size, self.batch, self.output_index,
                                                        2, self.config.tta)
            matrix = pipeline.run()
        except UserError as exc:
            return {"batch": batch_id, "error": self.failure(exc)}
        seconds = time.perf_counter() - began
        self.busy_s += seconds
        return {"batch": batch_id, "matrix": matrix.matrix, "ids": list(matrix.ids), "busy_s": seconds,
                "pid": os.getpid()}
