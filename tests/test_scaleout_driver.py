"""Scale-out on Ray without a Ray instance: the batch plan and ledger, the driver's loop with a stand-in Ray
(re-runs, exit 1 cases), the --ray flags of evaluate and predict, and no Ray installed. The workers' code is in
test_scaleout_workers.py, real Ray instances in test_scaleout_cluster.py."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from hrnetseg.scaleout import LOOPBACK_ENV, REQUIREMENTS, import_ray
from hrnetseg.scaleout.batches import MAX_ATTEMPTS, Ledger, plan_batches
from hrnetseg.util.errors import UserError

from helpers import EVALUATE, assert_user_error, refused_by_argparse, run_script, worker_config

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


# --- the driver's loop with a stand-in Ray --------------------------------------------------------------------

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


# --- no Ray, bad flags, no head ------------------------------------------------------------------------------

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
    for address in ("nohost", "host:99999", ":6379", "host:", "host:\u0666379", "host:6379\u00b2"):
        with pytest.raises(UserError, match="expected local, auto, HOST:PORT"):
            evaluate.main(base + ["--ray", address])
    for flag, value in (("--ray_workers", "0"), ("--ray_cpus_per_worker", "0"), ("--ray_gpus_per_worker", "nan"),
                        ("--ray_batch_images", "-1"), ("--ray_cpus_per_worker", "\u0662"),
                        ("--ray_gpus_per_worker", "1_0")):
        with pytest.raises(SystemExit) as caught:
            evaluate.main(base + ["--ray", "local", flag, value])
        assert caught.value.code == 2 and flag in capsys.readouterr().err


def test_ray_shares_are_numbers_ray_takes_before_ray_sees_them(capsys, tiny_data_root, tmp_path):
    from hrnetseg.evaluation import cli as evaluate
    from hrnetseg.prediction import cli as predict

    # refused by the parser: before the data, the model or Ray is looked at
    evaluate_base = ["--datasets_path", tiny_data_root, "--onnx", tmp_path / "x.onnx", "--ray", "local"]
    predict_base = ["--onnx", tmp_path / "x.onnx", "--input", tmp_path, "--output", tmp_path / "o", "--ray", "local"]
    # not numbers (NaN, another script's digit, a digit group, a space), not finite, not > 0 for CPUs, finer than
    # Ray's 0.0001 (Ray's own traceback), more than the one GPU a worker runs its model on
    for flag, values in (("--ray_cpus_per_worker", ("0", "nan", "-1", "1e400", "\u0661", "1_0", " 1", "1e-9")),
                         ("--ray_gpus_per_worker", ("nan", "-0.5", "inf", "\u0661", "0.00001", "1.5", "2"))):
        for value in values:
            for main, base in ((evaluate.main, evaluate_base), (predict.main, predict_base)):
                refused_by_argparse(main, base + [flag, value], capsys, flag)
    from hrnetseg.scaleout.flags import cpus_per_worker, gpus_per_worker

    assert [cpus_per_worker(v) for v in ("1", "0.5", "4", ".25", "0.0001")] == [1.0, 0.5, 4.0, 0.25, 0.0001]
    assert [gpus_per_worker(v) for v in ("0", "0.25", "1", "1.0")] == [0.0, 0.25, 1.0, 1.0]


def test_predict_ray_flags_are_checked_first(tmp_path, tiny_onnx_path):
    from hrnetseg.prediction import cli as predict

    with pytest.raises(UserError, match="--ray_batch_images applies only with --ray"):
        predict.main(["--onnx", str(tiny_onnx_path), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                      "--ray_batch_images", "2"])
    with pytest.raises(UserError, match="expected local, auto, HOST:PORT"):
        predict.main(["--onnx", str(tiny_onnx_path), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                      "--ray", "nohost"])


def test_an_unreachable_head_is_one_line_at_once(tiny_data_root, tiny_onnx_path):
    began = time.monotonic()   # port 1 of the loopback refuses: no waiting on Ray's minutes of retries
    result = run_script(EVALUATE + ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--ray",
                                    "127.0.0.1:1"], timeout=120)
    assert_user_error(result, "cannot connect to Ray at 127.0.0.1:1", "ray start --head")
    assert time.monotonic() - began < 30
