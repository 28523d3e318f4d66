"""The units of work of a Ray evaluation and their ledger (no Ray here, so it is tested on its own).

A batch is a run of consecutive image ids. The ledger adds each batch's result exactly once, keyed by the
batch id: a batch re-run after its worker died, or a late duplicate, cannot count an image twice, and the
evaluation is complete only when every batch has been added once.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Dict, List, Optional, Sequence, Set

import numpy as np

from hrnetseg.evaluation.metrics import ConfusionMatrix
from hrnetseg.util.errors import UserError

MAX_ATTEMPTS = 3      # a batch that fails this many times fails the run

Batch = namedtuple("Batch", ["id", "image_ids"])


def plan_batches(image_ids: Sequence[str], images_per_batch: int, model_batch: int) -> List[Batch]:
    """Consecutive runs of `images_per_batch` ids, rounded up to whole model batches so that every model
    batch holds the same images (and the same zero padding at the very end) as in one process."""
    size = max(model_batch, -(-images_per_batch // model_batch) * model_batch)
    return [Batch(number, tuple(image_ids[start:start + size]))
            for number, start in enumerate(range(0, len(image_ids), size))]


class BatchLedger(object):
    """Which batches are done (each accepted once) and how often each failed; subclasses keep the results."""

    def __init__(self, batches: Optional[Sequence[Batch]] = None) -> None:
        self.batches: Dict[int, Batch] = {}
        self.planned = False
        self.added: Set[int] = set()
        self.failures: Dict[int, int] = {}
        self.retried: Set[int] = set()
        if batches is not None:
            self.plan(batches)

    def plan(self, batches: Sequence[Batch]) -> None:
        """The batches of the run (known once the workers have loaded the model)."""
        self.batches = {batch.id: batch for batch in batches}
        self.planned = True

    @property
    def complete(self) -> bool:
        return self.planned and len(self.added) == len(self.batches)

    def accept(self, batch_id: int, image_ids: Sequence[str]) -> bool:
        """Whether a result for `batch_id` covering `image_ids` is new (then it counts as added): False for a
        batch added before; a batch this run never sent, or a result for other images, is refused."""
        batch = self.batches.get(batch_id)
        if batch is None:
            raise UserError("a Ray worker returned batch {}, which this run never sent".format(batch_id))
        if batch_id in self.added:
            return False
        if sorted(image_ids) != sorted(batch.image_ids):
            raise UserError("a Ray worker returned batch {} for {} images; it holds {}".format(
                batch_id, len(image_ids), len(batch.image_ids)))
        self.added.add(batch_id)
        return True

    def add_result(self, batch_id: int, result: dict) -> int:
        """Add a worker's answer for a batch; returns the images it adds (0: a duplicate)."""
        raise NotImplementedError

    def failed(self, batch_id: int, reason: str) -> None:
        """Count a failed attempt of a batch that will run again; the third failure is a one-line error,
        exit 1."""
        self.failures[batch_id] = self.failures.get(batch_id, 0) + 1
        if self.failures[batch_id] >= MAX_ATTEMPTS:
            batch = self.batches[batch_id]
            raise UserError("batch {} (images {} .. {}) failed {} times; last: {}".format(
                batch_id, batch.image_ids[0], batch.image_ids[-1], self.failures[batch_id], reason),
                exit_code=1)
        self.retried.add(batch_id)


class Ledger(BatchLedger):
    """The sum of the batches' confusion matrices, each batch added once."""

    def __init__(self, batches: Optional[Sequence[Batch]], num_classes: int) -> None:
        super().__init__(batches)
        self.matrix = ConfusionMatrix(num_classes)

    def add(self, batch_id: int, counts: np.ndarray, image_ids: Sequence[str]) -> bool:
        """Add a batch's matrix and ids; False (nothing added) when that batch was added before. A result
        that does not cover exactly the batch's images, or is not a count matrix, is refused."""
        counts = np.asarray(counts)
        shape = (self.matrix.num_classes,) * 2
        if counts.shape != shape or counts.dtype != np.int64 or (counts < 0).any():
            raise UserError("a Ray worker returned a {} {} matrix for batch {}; expected {} non-negative int64 "
                            "counts".format("x".join(map(str, counts.shape)), counts.dtype, batch_id,
                                            "x".join(map(str, shape))))
        if not self.accept(batch_id, image_ids):
            return False
        self.matrix.matrix += counts
        self.matrix.images += len(image_ids)
        self.matrix.ids.extend(image_ids)
        return True

    def add_result(self, batch_id: int, result: dict) -> int:
        return len(result["ids"]) if self.add(batch_id, result["matrix"], result["ids"]) else 0
