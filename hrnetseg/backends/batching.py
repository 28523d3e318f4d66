"""Feeding a backend in batches, as ais_bench does: the batch size a model takes, a short last batch
zero-padded, the outputs split back into one row per input.

The bin runner (python3 -m hrnetseg.infer) and the streaming evaluator (python -m hrnetseg.evaluate) batch
the same way, so the same model gives the same outputs through either.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from hrnetseg.backends import Backend, InputSpec
from hrnetseg.util.errors import UserError


def shape_fits_input_spec(spec: InputSpec, shape: Sequence[int]) -> bool:
    """Whether one C x H x W input fits the model's N x C x H x W input spec (None = any size on that axis)."""
    return len(spec.shape) == 4 and all(want is None or want == got for want, got in zip(spec.shape[1:], shape))


def batch_size_for(backend: Backend, requested: Optional[int]) -> int:
    """The model's fixed batch size (a different --batchsize is refused), else the requested one (default 1)."""
    fixed = backend.input.shape[0]
    if fixed is None:
        return requested or 1
    if requested is not None and requested != fixed:
        raise UserError("the model has a fixed batch size of {}; --batchsize {} does not fit".format(fixed, requested))
    return fixed


def array_bytes(dtype, shape: Sequence[int]) -> int:
    """The size in bytes of one array of `dtype` and `shape` (one input bin, one row of a batch)."""
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def pad_batch(rows: Iterable[np.ndarray], batch: int, shape: Sequence[int], dtype) -> np.ndarray:
    """The rows (each C x H x W) as one batch of `batch`; a short last batch stays zero-padded, as ais_bench pads.

    A batch that does not fit in memory is a UserError naming its size, not a MemoryError traceback.
    """
    try:
        data = np.zeros((batch,) + tuple(shape), dtype=dtype)
    except MemoryError:
        raise UserError("not enough memory for a batch of {} x {} {} ({:.3g} GB): choose a smaller --batchsize"
                        .format(batch, "x".join(map(str, shape)), np.dtype(dtype).name,
                                batch * array_bytes(dtype, shape) / 1e9)) from None
    for row, array in enumerate(rows):
        data[row] = array
    return data


def output_rows(outputs: Sequence[np.ndarray], k: int, batch: int) -> np.ndarray:
    """Output k of one batch run (rows in input order, padding rows included); refuses a changed batch size."""
    if outputs[k].shape[0] != batch:
        raise UserError("model output {} has batch {} for an input batch of {}".format(k, outputs[k].shape[0], batch))
    return outputs[k]
