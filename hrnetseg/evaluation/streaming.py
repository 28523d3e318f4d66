"""The streaming evaluation's pipeline: decode -> infer -> evaluate over Cityscapes samples, in threads.

Three stages run at the same time, joined by bounded queues (numpy, OpenCV, ONNX Runtime and torch release
the GIL, so threads overlap): decode (PNG image and label -> the model input, with the transform of
HRNet_preprocess.py, and trainIds), infer (batches in id order, a short last batch zero-padded and the
padding dropped, as python -m hrnetseg.infer does) and evaluate (the upsample + argmax and the confusion
matrix of HRNet_postprocess.py). Each stage keeps its busy time (time spent working on items), for
stage_report. python -m hrnetseg.evaluate is the command around it. AugmentedStreamingEvaluation runs the same
stages with upstream's multi-scale + flip testing (multiscale.py); tta_confusion is that work for one image.
"""
from __future__ import annotations

import os
import queue
import signal
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.backends import Backend
from hrnetseg.backends.batching import output_rows, pad_batch, shape_fits_input_spec
from hrnetseg.data import cityscapes, images
from hrnetseg.data.preprocess import DTYPES, convert, read_rgb
from hrnetseg.evaluation.metrics import ConfusionMatrix, confusion
from hrnetseg.evaluation.multiscale import (
    TestTimeAugmentation,
    check_model_takes,
    labels_from_scales,
    main_output_index,
    main_output_runner,
    predict_train_ids,
    scale_runs,
)
from hrnetseg.evaluation.postprocess import logits_shape
from hrnetseg.evaluation.upsample_argmax import logits_to_labels
from hrnetseg.evaluation.worst_images import WorstImages
from hrnetseg.util.errors import UserError

POLL_S = 0.1          # how often a blocked stage looks at the stop flag
# Test hook: after this many evaluated images the process sends itself SIGINT (a Ctrl-C at a known point).
INTERRUPT_AFTER_ENV = "HRNETSEG_TEST_INTERRUPT_AFTER"


def interrupt_after_count() -> int:
    """The test hook's image count (0: off); a value that is not a count is a one-line error."""
    text = os.environ.get(INTERRUPT_AFTER_ENV, "").strip() or "0"
    if not text.isdigit() or not text.isascii():
        raise UserError("{}={!r}: expected a number of images (0 or unset: off)".format(INTERRUPT_AFTER_ENV, text))
    return int(text)


# ------------------------------------------------------------------------------- the model, checked once

def model_input_dtype(backend: Backend) -> str:
    """The model's input type, when it is one the decode stage makes."""
    name = np.dtype(backend.input.dtype).name
    if name not in DTYPES:
        raise UserError("the model takes {} input; the streaming evaluator feeds {}".format(
            backend.input.describe(), ", ".join(DTYPES)))
    return name


def check_backend(backend: Backend, size: Tuple[int, int], requested_index: Optional[int],
                  tta: Optional[TestTimeAugmentation] = None) -> Tuple[str, int]:
    """(input dtype, evaluated output index) of a loaded model, refused when it cannot take the images
    (single scale) or every size the scales make (test-time augmentation)."""
    dtype = model_input_dtype(backend)
    if tta is not None:
        check_model_takes(backend.input, tta.input_sizes(*size))
    elif not shape_fits_input_spec(backend.input, (3,) + tuple(size)):
        raise UserError("the images are {}x{} but the model takes {}: export it at this size or with open axes"
                        .format(size[0], size[1], backend.input.describe()))
    return dtype, main_output_index(requested_index, len(backend.output_names))


# ------------------------------------------------------------------------------------------- the stages

class Stopped(Exception):
    """The run is stopping (an error in another stage, or Ctrl-C): leave quietly."""


class Stage(object):
    """A stage's account: its busy time (summed over its workers) and the items it finished."""

    def __init__(self, name: str, workers: int) -> None:
        self.name, self.workers = name, workers
        self.busy_s = 0.0
        self.items = 0
        self._lock = threading.Lock()

    def add(self, seconds: float, items: int = 1) -> None:
        with self._lock:
            self.busy_s += seconds
            self.items += items

    @property
    def busy_per_worker_s(self) -> float:
        return self.busy_s / self.workers


def decode(sample: cityscapes.Sample, dtype: str, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(model input C x H x W, trainIds H x W) for one image and its label, as HRNet_preprocess.py makes them."""
    image, order = read_rgb(sample.image)
    if image is None:
        raise UserError("image {} {}".format(sample.image, images.unreadable_reason(sample.image)))
    if image.shape[:2] != tuple(size):
        raise UserError("image {} is {}x{} but the first image is {}x{} (the model takes one size)".format(
            sample.image, image.shape[0], image.shape[1], size[0], size[1]))
    return convert(image, dtype, order), cityscapes.read_train_ids(sample.label, size)


class StreamingEvaluation(object):
    """decode -> infer -> evaluate over `samples`, in threads joined by bounded queues.

    Decode worker w takes images w, w + W, w + 2W, ... and has its own queue, so the infer stage reads them
    back in id order and makes the same batches as the bin runner. Every blocking step polls a stop flag:
    an exception in any stage stops the others and is raised again in the calling thread by run().
    worst: the report's worst images, offered every image by the evaluate stage (the pictures made there, from
    the photo on disk, only for an image that could enter the list).
    """

    def __init__(self, backend: Backend, samples: Sequence[cityscapes.Sample], dtype: str, size: Tuple[int, int],
                 batch: int, output_index: int, queue_size: int, decode_workers: int = 1, eval_workers: int = 1,
                 on_evaluated: Optional[Callable[[int], None]] = None, worst: Optional[WorstImages] = None) -> None:
        self.backend, self.samples, self.dtype, self.size = backend, list(samples), dtype, tuple(size)
        self.worst = worst
        self._photos = {sample.id: sample.image for sample in self.samples}
        self.batch, self.output_index = batch, output_index
        self.decode_workers, self.eval_workers = decode_workers, eval_workers
        self.on_evaluated = on_evaluated
        per_worker = max(1, -(-queue_size // decode_workers))
        self.decoded = [queue.Queue(maxsize=per_worker) for _ in range(decode_workers)]
        self.inferred = queue.Queue(maxsize=queue_size)
        self.stages = [Stage("decode", decode_workers), Stage("infer", 1), Stage("evaluate", eval_workers)]
        self.matrix = ConfusionMatrix()
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self.wall_s = 0.0
        self.finished = threading.Event()   # set when every stage thread has returned
        self._running = 0
        self._lock = threading.Lock()
        self._began = 0.0

    # --- blocking steps that give way to a stop -------------------------------------------------------
    def _put(self, q: queue.Queue, item) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                pass
        raise Stopped()

    def _get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                pass
        raise Stopped()

    def _guard(self, work: Callable[..., None], *args) -> None:
        try:
            work(*args)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: B902 - handed to the main thread, which raises it again
            with self._lock:
                if self.error is None:
                    self.error = exc
            self.stop.set()
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self.finished.set()

    # --- the stages -------------------------------------------------------------------------------------
    def _decode(self, worker: int) -> None:
        stage, out = self.stages[0], self.decoded[worker]
        for index in range(worker, len(self.samples), self.decode_workers):
            sample = self.samples[index]
            began = time.perf_counter()
            image, gt = decode(sample, self.dtype, self.size)
            stage.add(time.perf_counter() - began)
            self._put(out, (sample.id, image, gt))

    def _infer(self) -> None:
        stage, count = self.stages[1], len(self.samples)
        shape = (3,) + self.size
        expected = logits_shape(*self.size)
        for start in range(0, count, self.batch):
            items = [self._get(self.decoded[index % self.decode_workers])
                     for index in range(start, min(start + self.batch, count))]
            began = time.perf_counter()
            data = pad_batch((image for _, image, _ in items), self.batch, shape, self.dtype)
            outputs = self.backend.run(data)
            logits = output_rows(outputs, self.output_index, self.batch)
            if tuple(logits.shape[1:]) != expected:
                raise UserError("model output {} is {} per image; {}x{} labels need {} (19 classes at 1/4 "
                                "size)".format(self.output_index, "x".join(map(str, logits.shape[1:])),
                                               self.size[0], self.size[1], "x".join(map(str, expected))))
            stage.add(time.perf_counter() - began, len(items))
            done = [(sample_id, gt) for sample_id, _, gt in items]
            del items, data, outputs   # the inputs are no longer needed while we wait on the queue
            for row, (sample_id, gt) in enumerate(done):
                self._put(self.inferred, (sample_id, logits[row], gt))
        for _ in range(self.eval_workers):
            self._put(self.inferred, None)

    def _evaluate(self) -> None:
        stage = self.stages[2]
        interrupt_after = interrupt_after_count()
        while True:
            item = self._get(self.inferred)
            if item is None:
                return
            sample_id, inferred, gt = item
            began = time.perf_counter()
            pred = self.labels_of(sample_id, inferred, gt.shape)
            counts = confusion(pred, gt)
            if self.worst is not None:
                self.worst.consider(sample_id, counts, self._photos[sample_id], gt, pred)
            with self._lock:
                self.matrix.add(counts, sample_id)
                images = self.matrix.images
                self.wall_s = time.perf_counter() - self._began
                if self.on_evaluated is not None:
                    self.on_evaluated(1)
            stage.add(time.perf_counter() - began)
            if interrupt_after and images == interrupt_after:
                os.kill(os.getpid(), signal.SIGINT)
                self.stop.wait(60.0)   # as if Ctrl-C came right now: evaluate nothing more

    def labels_of(self, sample_id: str, inferred, shape: Tuple[int, int]) -> np.ndarray:
        """The predicted trainIds from what the infer stage passed on (here: one image's logits)."""
        try:
            return logits_to_labels(inferred, shape[0], shape[1])
        except ValueError as exc:
            raise UserError("model output for {}: {}".format(sample_id, exc))

    # --- the run ------------------------------------------------------------------------------------------
    def run(self) -> ConfusionMatrix:
        """Run every stage to the end; returns the confusion matrix. Raises the first stage error, or
        KeyboardInterrupt after stopping the stages (the matrix then holds what was evaluated so far)."""
        threads = [threading.Thread(target=self._guard, args=(self._decode, w), name="decode-{}".format(w))
                   for w in range(self.decode_workers)]
        threads.append(threading.Thread(target=self._guard, args=(self._infer,), name="infer"))
        threads += [threading.Thread(target=self._guard, args=(self._evaluate,), name="evaluate-{}".format(w))
                    for w in range(self.eval_workers)]
        for thread in threads:
            thread.daemon = True   # a stage stuck in native code must not keep the process alive
        self._running = len(threads)
        self._began = time.perf_counter()
        for thread in threads:
            thread.start()
        # Wait on an Event, never on Thread.join: a Ctrl-C that interrupts join() on a running thread makes
        # Python 3.11 mark that thread finished (bpo-45274's fix), and the process could then exit while a
        # stage is inside ONNX Runtime, which aborts it.
        try:
            while not self.finished.wait(POLL_S):
                pass
        except KeyboardInterrupt:
            self.stop.set()
            with self._lock:
                self.wall_s = time.perf_counter() - self._began
            raise
        if self.error is not None:
            raise self.error
        return self.matrix

    def wait_stopped(self, timeout: Optional[float] = None) -> bool:
        """After a stop: wait for the stage threads (the batch in flight finishes); False on a timeout."""
        self.stop.set()
        return self.finished.wait(timeout)

    def snapshot(self) -> ConfusionMatrix:
        """A copy of the matrix so far (safe while the stages run)."""
        with self._lock:
            copy = ConfusionMatrix(self.matrix.num_classes, self.matrix.class_names)
            copy.matrix = self.matrix.matrix.copy()
            copy.images = self.matrix.images
            copy.ids = sorted(self.matrix.ids)
            return copy


# ------------------------------------------------------------------------------- test-time augmentation

def image_hwc(model_input: np.ndarray) -> np.ndarray:
    """The decode stage's 3 x H x W float32 model input as the H x W x 3 image test-time augmentation resizes."""
    return np.ascontiguousarray(np.asarray(model_input, dtype=np.float32).transpose(1, 2, 0))


def tta_confusion(image: np.ndarray, labels: np.ndarray, backend: Backend, tta: TestTimeAugmentation,
                  output_index: Optional[int] = None, batch_size: Optional[int] = None) -> np.ndarray:
    """One image's confusion counts with test-time augmentation, all in the calling thread: `image` as the
    decode stage makes it (3 x H x W float32, the upstream transform), `labels` its trainIds (H x W)."""
    run_main = main_output_runner(backend, output_index, batch_size)
    return confusion(predict_train_ids(image_hwc(image), run_main, tta), labels)


class AugmentedStreamingEvaluation(StreamingEvaluation):
    """The same stages with test-time augmentation: infer runs the model on every scale's inputs (one image
    at a time, --batchsize inputs per model run), evaluate resizes, sums and takes the argmax
    (multiscale.labels_from_scales: on the backend's GPU with torch where it runs on one, else numpy), so the model
    and the merge overlap as before."""

    def __init__(self, backend: Backend, samples: Sequence[cityscapes.Sample], size: Tuple[int, int], batch: int,
                 output_index: int, queue_size: int, tta: TestTimeAugmentation, decode_workers: int = 1,
                 eval_workers: int = 1, on_evaluated: Optional[Callable[[int], None]] = None,
                 worst: Optional[WorstImages] = None) -> None:
        super().__init__(backend, samples, "float32", size, batch, output_index, queue_size, decode_workers,
                         eval_workers, on_evaluated, worst)
        self.tta = tta
        self.run_main = main_output_runner(backend, output_index, batch)

    def _infer(self) -> None:
        stage = self.stages[1]
        for index in range(len(self.samples)):
            sample_id, image, gt = self._get(self.decoded[index % self.decode_workers])
            began = time.perf_counter()
            runs = [(run.without_batch(), self.run_main(run.batch)) for run in scale_runs(image_hwc(image), self.tta)]
            stage.add(time.perf_counter() - began)
            del image
            self._put(self.inferred, (sample_id, runs, gt))
        for _ in range(self.eval_workers):
            self._put(self.inferred, None)

    def labels_of(self, sample_id: str, inferred, shape: Tuple[int, int]) -> np.ndarray:
        return labels_from_scales(shape[0], shape[1], inferred, self.tta.flip, device=self.run_main.device)


# ---------------------------------------------------------------------------------------------- the report

def stage_report(stages: Sequence[Stage], wall_s: float, images: int) -> List[str]:
    """One line per stage (busy time, per image, share of the wall time), then wall time and the overlap ratio."""
    lines = ["{:<9} {:>7} {:>7} {:>9} {:>10} {:>10}".format("stage", "workers", "images", "busy (s)", "ms/image",
                                                             "busy/wall")]
    for stage in stages:
        lines.append("{:<9} {:>7} {:>7} {:>9.3f} {:>10.1f} {:>9.0f}%".format(
            stage.name, stage.workers, stage.items, stage.busy_per_worker_s,
            1000.0 * stage.busy_s / stage.items if stage.items else 0.0,
            100.0 * stage.busy_per_worker_s / wall_s if wall_s > 0 else 0.0))
    slowest = max(stages, key=lambda s: s.busy_per_worker_s)
    lines.append("wall {:.2f} s for {} images (first image to last, model load excluded): {:.2f} images/s".format(
        wall_s, images, images / wall_s if wall_s > 0 else 0.0))
    if slowest.busy_per_worker_s > 0:
        lines.append("wall / slowest stage busy ({}) = {:.3f}".format(
            slowest.name, wall_s / slowest.busy_per_worker_s))
    return lines
