"""Scale-out on Ray without a Ray instance: the batch plan and ledger, the driver's loop with a stand-in Ray
(re-runs, exit 1 cases), the workers' code in this process (evaluate and predict), the --ray flags and no Ray
installed. The real Ray instances are in test_ray.py."""
from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
import pytest

from helpers import TINY_HEIGHT, TINY_WIDTH, assert_user_error, run_script
from hrnetseg.data import cityscapes
from hrnetseg.util.errors import UserError
from hrnetseg.scaleout import LOOPBACK_ENV, REQUIREMENTS, import_ray
from hrnetseg.scaleout.batches import Ledger, MAX_ATTEMPTS, plan_batches

EVALUATE = ["-m", "hrnetseg.evaluate"]


# --- the ledger and the plan, without Ray -------------------------------------------------------------------

def test_batches_are_whole_model_batches_in_id_order():
    ids = ["a{}".format(i) for i in range(11)]
    batches = plan_batches(ids, images_per_batch=3, model_batch=2)   # 3 rounds up to 4: 4 + 4 + 3
    assert [len(b.image_ids) for b in batches] == [4, 4, 3]
    assert [i for b in batches for i in b.image_ids] == ids and [b.id for b in batches] == [0, 1, 2]
    assert [len(b.image_ids) for b in plan_batches(ids, 8, 1)] == [8, 3]


def test_the_ledger_adds_each_batch_once_and_gives_up_after_three_failures():
    batches = plan_batches(["a", "b", "c"], 2, 1)
    ledger = Ledger(batches, 19)
    one = np.arange(19 * 19, dtype=np.int64).reshape(19, 19)
    assert ledger.add(0, one, ["b", "a"]) and not ledger.add(0, one, ["a", "b"])   # a re-run counts once
    assert not ledger.complete and ledger.matrix.images == 2
    np.testing.assert_array_equal(ledger.matrix.matrix, one)
    with pytest.raises(UserError, match="batch 1 for 2 images; it holds 1"):
        ledger.add(1, one, ["c", "d"])
    with pytest.raises(UserError, match="float64"):
        ledger.add(1, one.astype(np.float64), ["c"])
    with pytest.raises(UserError, match="never sent"):
        ledger.add(7, one, ["c"])
    for _ in range(1, MAX_ATTEMPTS):
        ledger.failed(1, "worker died")
    assert ledger.retried == {1}
    with pytest.raises(UserError, match="batch 1 .*failed 3 times; last: worker died") as caught:
        ledger.failed(1, "worker died")
    assert caught.value.exit_code == 1
    assert ledger.add(1, one, ["c"]) and ledger.complete and ledger.matrix.images == 3


class FakeRay(object):
    """Just enough of the ray module for the driver's loop, run synchronously: `behaviour(worker, method, args)`
    returns what a worker's method returns, or raises FakeRay.ActorDied / FakeRay.TaskFailed."""

    class ActorDied(Exception):
        pass

    class TaskFailed(Exception):
        pass

    def __init__(self, behaviour):
        from types import SimpleNamespace

        self.behaviour, self.killed = behaviour, []
        self.exceptions = SimpleNamespace(RayActorError=self.ActorDied, RayError=Exception)

    def remote(self, cls):
        fake = self

        class ActorClass(object):
            def options(self, **resources):
                return self

            def remote(self, index, config, listing):
                return FakeActor(fake, index)

        return ActorClass()

    def put(self, value):
        return value

    def wait(self, refs, num_returns, timeout):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref()

    def kill(self, handle, no_restart):
        self.killed.append(handle.index)


class FakeActor(object):
    def __init__(self, fake, index):
        self.index = index
        for method in ("ready", "run_batch"):
            setattr(self, method, self._method(fake, method))

    def _method(self, fake, name):
        from types import SimpleNamespace

        def remote(*args):
            try:
                value, error = fake.behaviour(self.index, name, args), None
            except Exception as exc:   # noqa: B902 - raised again by get(), as Ray does
                value, error = None, exc

            def ref():
                if error is not None:
                    raise error
                return value
            return ref
        return SimpleNamespace(remote=remote)


def fake_evaluation(behaviour, images=6, workers=2):
    from hrnetseg.scaleout.driver import RayRun
    from hrnetseg.scaleout.worker import EvaluationWorker

    batches = plan_batches(["img{}".format(i) for i in range(images)], 1, 1)
    fake = FakeRay(behaviour)
    run = RayRun(fake, EvaluationWorker, (worker_config("m.onnx"), []), lambda loaded: batches, Ledger(None, 19),
                 workers, 1.0, 0.0)
    return run, fake


def healthy(worker, method, args):
    if method == "ready":
        return {"index": worker, "pid": 100 + worker, "node": "127.0.0.1", "node_id": "n{}".format(worker),
                "error": None, "output_index": 1}
    batch_id, ids = args
    return {"batch": batch_id, "matrix": np.full((19, 19), len(ids), np.int64), "ids": list(ids), "busy_s": 0.1,
            "pid": 100 + worker}


def test_the_driver_reruns_a_dead_workers_batches_once_each():
    def worker_1_dies(worker, method, args):   # after its start: every batch and the restart fail
        if worker == 1 and (method == "run_batch" or started.count(1)):
            raise FakeRay.ActorDied("killed")
        started.extend([worker] if method == "ready" else [])
        return healthy(worker, method, args)

    started = []
    evaluation, fake = fake_evaluation(worker_1_dies)
    ledger = evaluation.run(lambda n: None)
    evaluation.stop()
    assert ledger.complete and ledger.matrix.images == 6 and sorted(ledger.matrix.ids) == sorted(
        "img{}".format(i) for i in range(6))
    np.testing.assert_array_equal(ledger.matrix.matrix, np.full((19, 19), 6, np.int64))   # each batch once
    assert evaluation.retried_batches >= 1 and evaluation.workers[0].images == 6
    assert not evaluation.workers[1].live and evaluation.workers[1].images == 0
    assert sorted(fake.killed) == [0, 1]   # stop() ends every worker, the restarting one too


def test_a_worker_that_dies_while_starting_is_asked_again():
    def first_start_dies(worker, method, args):   # as a process killed before it answered: Ray restarts it
        if worker == 0 and method == "ready" and not started:
            started.append(worker)
            raise FakeRay.ActorDied("killed while loading")
        return healthy(worker, method, args)

    started = []
    evaluation, _ = fake_evaluation(first_start_dies)
    ledger = evaluation.run(lambda n: None)
    assert ledger.complete and evaluation.workers[0].images > 0 and evaluation.retried_batches == 0


def test_a_worker_that_never_starts_is_one_line():
    def never(worker, method, args):
        if worker == 1 and method == "ready":
            raise FakeRay.ActorDied("the constructor raised ImportError")
        return healthy(worker, method, args)

    evaluation, _ = fake_evaluation(never)
    with pytest.raises(UserError, match="ray worker 1 could not start: the constructor raised ImportError"):
        evaluation.run(lambda n: None)


def test_no_live_worker_left_is_one_line_exit_1():
    def both_die(worker, method, args):
        if method == "run_batch" or calls.count(worker):
            raise FakeRay.ActorDied("node lost")
        calls.append(worker)
        return healthy(worker, method, args)

    calls = []
    evaluation, _ = fake_evaluation(both_die)
    with pytest.raises(UserError, match=r"no live Ray worker left \(0 of 6 batches done\)") as caught:
        evaluation.run(lambda n: None)
    assert caught.value.exit_code == 1


def test_a_batch_failing_three_times_is_one_line_exit_1():
    def batch_2_fails(worker, method, args):
        if method == "run_batch" and args[0] == 2:
            raise FakeRay.TaskFailed("out of memory")
        return healthy(worker, method, args)

    evaluation, _ = fake_evaluation(batch_2_fails)
    with pytest.raises(UserError, match="batch 2 .images img2 .. img2. failed 3 times; last: .*out of memory") \
            as caught:
        evaluation.run(lambda n: None)
    assert caught.value.exit_code == 1


def test_a_worker_error_text_stops_at_once():
    def unreadable(worker, method, args):
        if method == "run_batch" and args[0] == 4:
            return {"batch": 4, "error": "ray worker 0 on node 10.0.0.7: image /data/x.png not found"}
        return healthy(worker, method, args)

    evaluation, _ = fake_evaluation(unreadable)
    with pytest.raises(UserError, match="node 10.0.0.7: image /data/x.png not found") as caught:
        evaluation.run(lambda n: None)
    assert caught.value.exit_code == 2 and evaluation.ledger.failures == {}


def test_without_ray_one_line_says_what_to_install(monkeypatch, tiny_data_root, tiny_onnx_path):
    from hrnetseg.evaluation import cli as evaluate

    monkeypatch.setitem(sys.modules, "ray", None)   # "import ray" now raises ImportError
    monkeypatch.setenv(LOOPBACK_ENV, "1")            # restored afterwards; import_ray sets it for local
    with pytest.raises(UserError, match=REQUIREMENTS):
        import_ray()
    with pytest.raises(UserError, match="pip install -r " + REQUIREMENTS):
        evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path), "--ray", "local"])


def test_ray_flags_are_refused_in_one_line(capsys, tiny_data_root, tiny_onnx_path):
    from hrnetseg.evaluation import cli as evaluate

    base = ["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path)]
    with pytest.raises(UserError, match="--ray_workers applies only with --ray"):
        evaluate.main(base + ["--ray_workers", "2"])
    with pytest.raises(UserError, match="--ray is empty"):
        evaluate.main(base + ["--ray", " "])
    for address in ("nohost", "host:99999", ":6379", "host:"):
        with pytest.raises(UserError, match="expected local, auto, HOST:PORT"):
            evaluate.main(base + ["--ray", address])
    for flag, value in (("--ray_workers", "0"), ("--ray_cpus_per_worker", "0"), ("--ray_gpus_per_worker", "nan"),
                        ("--ray_batch_images", "-1")):
        with pytest.raises(SystemExit) as caught:
            evaluate.main(base + ["--ray", "local", flag, value])
        assert caught.value.code == 2 and flag in capsys.readouterr().err


def test_an_unreachable_head_is_one_line_at_once(tiny_data_root, tiny_onnx_path):
    began = time.monotonic()   # port 1 of the loopback refuses: no waiting on Ray's minutes of retries
    result = run_script(EVALUATE + ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--ray",
                                    "127.0.0.1:1"], timeout=120)
    assert_user_error(result, "cannot connect to Ray at 127.0.0.1:1", "ray start --head")
    assert time.monotonic() - began < 30


# --- the worker's code in this process (no Ray): batches sum to the one-process matrix ----------------------

def worker_config(model, **changes):
    from hrnetseg.scaleout.worker import WorkerConfig

    fields = dict(kind="onnxruntime", model=str(model), device=None, precision="fp32", preset="w48_ocr",
                  input_dtype="float32", size=(TINY_HEIGHT, TINY_WIDTH), batchsize=1, output_index=None, warmup=None,
                  threads=1, batch_delay_s=0.0, tta=None)
    fields.update(changes)
    return WorkerConfig(**fields)


@pytest.fixture
def quiet_worker_env(monkeypatch):
    """What a worker changes in its process, restored after the test."""
    from hrnetseg.evaluation.streaming import INTERRUPT_AFTER_ENV

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.delenv(INTERRUPT_AFTER_ENV, raising=False)


@pytest.fixture(scope="module")
def local_npz(tmp_path_factory, tiny_data_root, tiny_onnx_path):
    """The local streaming evaluation's confusion file at --batchsize 1 (run in this process)."""
    from hrnetseg.evaluation import cli as evaluate

    out = tmp_path_factory.mktemp("ray_units") / "local.npz"
    assert evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path), "--batchsize", "1",
                          "--save_confusion", str(out)]) == 0
    return out


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




# --- predict's worker in this process ---------------------------------------------------------------------------

def prediction_config(model, output, **changes):
    from hrnetseg.evaluation.multiscale import TestTimeAugmentation
    from hrnetseg.scaleout.prediction import PredictionConfig

    fields = dict(kind="onnxruntime", model=str(model), device=None, precision="fp32", preset="w48_ocr",
                  output_index=None, batchsize=None, warmup=None, threads=1, batch_delay_s=0.0,
                  tta=TestTimeAugmentation(base_size=TINY_WIDTH), needed=[(TINY_HEIGHT, TINY_WIDTH)],
                  output=str(output), skip_bad=False)
    fields.update(changes)
    return PredictionConfig(**fields)


def test_prediction_worker_writes_the_local_files_and_names_what_it_cannot_read(quiet_worker_env, tmp_path,
                                                                                tiny_data_root, tiny_onnx_path):
    from hrnetseg.prediction import cli as predict
    from hrnetseg.prediction.inputs import find_inputs
    from hrnetseg.scaleout.prediction import PredictionLedger, PredictionWorker, kinds_to_write

    photos = tmp_path / "photos"
    shutil.copytree(str(tiny_data_root / "cityscapes" / "leftImg8bit" / "val"), str(photos))
    assert predict.main(["--onnx", str(tiny_onnx_path), "--input", str(photos), "--output", str(tmp_path / "local"),
                         "--save", "labelIds,color", "--base_size", str(TINY_WIDTH)]) == 0
    local = sorted(p for p in (tmp_path / "local").rglob("*.png"))
    items = sorted(find_inputs([str(photos)], str(tmp_path / "ray")))   # as predict lists them
    paths = [item.path for item in items]
    # the driver's decision: everything for a new folder; only the missing kinds where some exist
    assert kinds_to_write(str(tmp_path / "ray"), items[0], ("labelIds", "color"), False) == ("labelIds", "color")
    assert kinds_to_write(str(tmp_path / "local"), items[0], ("labelIds", "color"), False) == ()
    assert kinds_to_write(str(tmp_path / "local"), items[0], ("color",), True) == ("color",)

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


def test_predict_ray_flags_are_checked_first(tmp_path, tiny_onnx_path):
    from hrnetseg.prediction import cli as predict

    with pytest.raises(UserError, match="--ray_batch_images applies only with --ray"):
        predict.main(["--onnx", str(tiny_onnx_path), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                      "--ray_batch_images", "2"])
    with pytest.raises(UserError, match="expected local, auto, HOST:PORT"):
        predict.main(["--onnx", str(tiny_onnx_path), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                      "--ray", "nohost"])
