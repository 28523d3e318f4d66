"""The Ray workers' code in this process, without Ray: evaluation batches sum to the one-process confusion matrix,
prediction batches write the one-process files; what a worker cannot load or read is one line naming its node."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from hrnetseg.data import cityscapes
from hrnetseg.scaleout.batches import plan_batches

from helpers import TINY_HEIGHT, TINY_WIDTH, worker_config


@pytest.fixture
def quiet_worker_env(monkeypatch):
    """What a worker changes in its process, restored after the test."""
    from hrnetseg.evaluation.streaming import INTERRUPT_AFTER_ENV

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.delenv(INTERRUPT_AFTER_ENV, raising=False)


# --- the evaluation worker: batches sum to the one-process matrix --------------------------------------------

def test_worker_batches_sum_to_the_local_matrix(quiet_worker_env, tmp_path, local_npz, tiny_data_root, tiny_onnx_path):
    from hrnetseg.evaluation.metrics import ConfusionMatrix
    from hrnetseg.scaleout.worker import EvaluationWorker

    data = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(data))
    samples = cityscapes.find_images(str(data))
    worker = EvaluationWorker(3, worker_config(tiny_onnx_path), samples)
    assert worker.error is None
    ids = [s.id for s in samples]
    first, second = worker.run_batch(0, ids[:3]), worker.run_batch(1, ids[3:])
    assert first["matrix"].dtype == np.int64 and first["matrix"].shape == (19, 19) and set(first) >= {"ids", "busy_s"}
    local = ConfusionMatrix.load(str(local_npz))
    np.testing.assert_array_equal(first["matrix"] + second["matrix"], local.matrix)
    assert sorted(first["ids"] + second["ids"]) == sorted(local.ids)

    assert "not in the listing" in worker.run_batch(2, ["nowhere_000000_000000"])["error"]
    label = samples[1].label
    os.unlink(label)
    error = worker.run_batch(4, ids[:2])["error"]
    assert error.startswith("ray worker 3 on node ") and label in error and "not found" in error
    open(samples[0].image, "wb").close()   # an empty PNG
    assert samples[0].image in worker.run_batch(5, ids[:1])["error"]


def test_a_worker_that_cannot_load_the_model_says_so(quiet_worker_env, tmp_path, tiny_data_root):
    from hrnetseg.scaleout.worker import EvaluationWorker

    (tmp_path / "empty.onnx").write_bytes(b"")
    worker = EvaluationWorker(1, worker_config(tmp_path / "empty.onnx"), cityscapes.find_images(str(tiny_data_root)))
    assert worker.error.startswith("ray worker 1 on node ") and "not an ONNX model" in worker.error
    assert worker.run_batch(0, ["x"]) == {"batch": 0, "error": worker.error}


# --- predict's worker ------------------------------------------------------------------------------------------

def prediction_config(model, output, **changes):
    from hrnetseg.evaluation.multiscale import TestTimeAugmentation
    from hrnetseg.scaleout.prediction import PredictionConfig

    fields = dict(kind="onnxruntime", model=str(model), device=None, precision="fp32", preset="w48_ocr",
                  output_index=None, batchsize=None, warmup=None, threads=1, batch_delay_s=0.0,
                  tta=TestTimeAugmentation(base_size=TINY_WIDTH), needed=[(TINY_HEIGHT, TINY_WIDTH)],
                  output=str(output), skip_bad=False, max_pixels=50000000)
    fields.update(changes)
    return PredictionConfig(**fields)


def test_prediction_worker_writes_the_local_files_and_names_what_it_cannot_read(quiet_worker_env, tmp_path,
                                                                                tiny_data_root, tiny_onnx_path):
    from hrnetseg.prediction import cli as predict
    from hrnetseg.prediction.inputs import find_inputs
    from hrnetseg.prediction.outputs import OutputRecord, kinds_to_write
    from hrnetseg.scaleout.prediction import PredictionLedger, PredictionWorker

    photos = tmp_path / "photos"
    shutil.copytree(str(tiny_data_root / "cityscapes" / "leftImg8bit" / "val"), str(photos))
    assert predict.main(["--onnx", str(tiny_onnx_path), "--input", str(photos), "--output", str(tmp_path / "local"),
                         "--save", "labelIds,color", "--base_size", str(TINY_WIDTH)]) == 0
    local = sorted(p for p in (tmp_path / "local").rglob("*.png"))
    items = sorted(find_inputs([str(photos)], str(tmp_path / "ray")))   # as predict lists them
    paths = [item.path for item in items]
    # the driver's decision: everything for a new folder; nothing where the record vouches for every kind
    record, size = OutputRecord(str(tmp_path / "local")), (TINY_HEIGHT, TINY_WIDTH)
    (settings,) = record.settings.values()
    kinds = ("labelIds", "color")
    assert kinds_to_write(OutputRecord(str(tmp_path / "ray")), str(tmp_path / "ray"), items[0], kinds, settings,
                          size, None, False) == kinds
    assert kinds_to_write(record, str(tmp_path / "local"), items[0], kinds, settings, size, None, False) == ()
    assert kinds_to_write(record, str(tmp_path / "local"), items[0], ("color",), settings, size, None, True) == \
        ("color",)

    worker = PredictionWorker(2, prediction_config(tiny_onnx_path, tmp_path / "ray"),
                              [(item, ("labelIds", "color")) for item in items])
    assert worker.error is None
    ledger = PredictionLedger(plan_batches(paths, 3, 1))
    assert ledger.planned and not ledger.complete
    for batch in ledger.batches.values():
        result = worker.run_batch(batch.id, batch.image_ids)
        assert ledger.add_result(batch.id, result) == len(batch.image_ids)
        assert ledger.add_result(batch.id, worker.run_batch(batch.id, batch.image_ids)) == 0   # a re-run: once
    assert ledger.complete and ledger.predicted == len(paths) and ledger.written == 2 * len(paths)
    ours = sorted((tmp_path / "ray").rglob("*.png"))
    assert [p.relative_to(tmp_path / "ray") for p in ours] == [p.relative_to(tmp_path / "local") for p in local]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, local))

    open(paths[1], "wb").close()   # empty now, after the driver looked at it
    error = worker.run_batch(9, paths[:2])["error"]
    assert error.startswith("ray worker 2 on node ") and paths[1] in error and "--skip_bad" in error
    worker.config = worker.config._replace(skip_bad=True)
    result = worker.run_batch(9, paths[:2])
    assert result["predicted"] == 1 and [path for path, _ in result["bad"]] == [paths[1]]
