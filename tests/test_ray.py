"""Scale-out on Ray (python -m hrnetseg.evaluate --ray): the local confusion matrix exactly under --ray local, on a
two-node cluster and with a worker killed mid-run; an image deleted after the listing; Ctrl-C; no Ray installed.

Every Ray instance here is bound to 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) and keeps its files under a
short temporary folder (Ray's socket paths must fit 107 bytes). One two-node cluster serves the module.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from helpers import REPO, TINY_IMAGES, TINY_PRESET, assert_user_error, default_sigint, run_script
from hrnetseg import cityscapes
from hrnetseg.cli import UserError
from hrnetseg.scaleout import LOOPBACK_ENV, REQUIREMENTS, import_ray
from hrnetseg.scaleout.batches import MAX_ATTEMPTS, Ledger, plan_batches
from hrnetseg.scaleout.driver import BATCH_DELAY_ENV

EVALUATE = ["-m", "hrnetseg.evaluate"]
# three scales (sliding windows at 1.5) and flip on the 64 x 128 tiny images: 22 forward passes per image
TTA_FLAGS = ["--scales", "0.5,1.0,1.5", "--flip", "--base_size", "128", "--crop_size", "40,72"]
WORKER_LINE = re.compile(r"^ray worker (\d+) pid (\d+) node (\S+)", re.M)


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
        self.exceptions = SimpleNamespace(RayActorError=self.ActorDied, RayTaskError=self.TaskFailed)

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
    run = RayRun(fake, EvaluationWorker, (worker_config("m.onnx"), []), batches, Ledger(batches, 19), workers, 1.0,
                 0.0)
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
    with pytest.raises(UserError, match="batch 2 .images img2 .. img2. failed 3 times; last: .*out of memory") as caught:
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
    from hrnetseg import evaluate

    monkeypatch.setitem(sys.modules, "ray", None)   # "import ray" now raises ImportError
    monkeypatch.setenv(LOOPBACK_ENV, "1")            # restored afterwards; import_ray sets it for local
    with pytest.raises(UserError, match=REQUIREMENTS):
        import_ray()
    with pytest.raises(UserError, match="pip install -r " + REQUIREMENTS):
        evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path), "--ray", "local"])


def test_ray_flags_are_refused_in_one_line(capsys, tiny_data_root, tiny_onnx_path):
    from hrnetseg import evaluate

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
    from helpers import TINY_HEIGHT, TINY_WIDTH
    from hrnetseg.scaleout.worker import WorkerConfig

    fields = dict(kind="onnxruntime", model=str(model), device=None, precision="fp32", preset="w48_ocr",
                  input_dtype="float32", size=(TINY_HEIGHT, TINY_WIDTH), batchsize=1, output_index=None, warmup=None,
                  threads=1, batch_delay_s=0.0, tta=None)
    fields.update(changes)
    return WorkerConfig(**fields)


@pytest.fixture
def quiet_worker_env(monkeypatch):
    """What a worker changes in its process, restored after the test."""
    from hrnetseg.streaming import INTERRUPT_AFTER_ENV

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.delenv(INTERRUPT_AFTER_ENV, raising=False)


def test_worker_batches_sum_to_the_local_matrix(quiet_worker_env, tmp_path, local_npz, tiny_data_root, tiny_onnx_path):
    from hrnetseg.metrics import ConfusionMatrix
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


# --- real Ray instances ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_env():
    """The environment of every Ray process here: loopback only, no token file in $HOME, files under /tmp/rayXXX."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    os.mkdir(os.path.join(folder, "ray"))   # Ray's own folder under RAY_TMPDIR, where a cluster writes its address
    env = {LOOPBACK_ENV: "0", "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": folder}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)   # before Ray is imported: it reads LOOPBACK_ENV once, on import
    pytest.importorskip("ray")
    from ray._private import ray_constants

    assert not ray_constants.ENABLE_RAY_CLUSTER, "Ray was imported before {} was set".format(LOOPBACK_ENV)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(ray_env):
    """A real two-node Ray cluster on this machine (Ray's own test cluster), one CPU per node."""
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()


@pytest.fixture(scope="module")
def local_npz(tmp_path_factory, tiny_data_root, tiny_onnx_path):
    """The local streaming evaluation's confusion file at --batchsize 1 (the reference for every Ray run)."""
    out = tmp_path_factory.mktemp("ray_ref") / "local.npz"
    result = run_script(EVALUATE + ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--batchsize", "1",
                                    "--save_confusion", out])
    assert result.returncode == 0, result.stderr
    return out


def same_as_local(local, npz, images=TINY_IMAGES):
    with np.load(str(local)) as one, np.load(str(npz)) as two:
        assert one["matrix"].sum() > 0
        np.testing.assert_array_equal(one["matrix"], two["matrix"])
        assert int(one["images"]) == int(two["images"]) == images and list(one["ids"]) == list(two["ids"])
        assert int(one["output_index"]) == int(two["output_index"])


def start_driver(args, env):
    """python -m hrnetseg.evaluate ARGS in the background, its stdout readable line by line."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), HRNETSEG_PROGRESS="0", **env)
    return subprocess.Popen([sys.executable] + EVALUATE + [str(a) for a in args], cwd=str(REPO), env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def read_worker_lines(driver, count, timeout=120.0):
    """The first `count` `ray worker <i> pid <PID> node <NODE>` lines: {i: pid}, and all stdout read so far."""
    seen, text, deadline = {}, "", time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        line = driver.stdout.readline()
        if not line:
            break
        text += line
        match = WORKER_LINE.match(line)
        if match:
            seen[int(match.group(1))] = int(match.group(2))
    assert len(seen) == count, (text, driver.stderr.read() if driver.poll() is not None else "")
    return seen, text


def finish(driver, timeout=120.0):
    out, err = driver.communicate(timeout=timeout)
    return driver.returncode, out, err


def test_ray_local_gives_the_local_confusion_matrix(tmp_path, ray_env, tiny_data_root, tiny_onnx_path):
    # batch size 2 and 3 images per unit of work (rounded up to 4): batches of 4 + 1 images, as one process
    # makes them; compared with the local run at the same batch size, table and result.json included
    local = run_script(EVALUATE + ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--batchsize", "2",
                                   "--save_confusion", tmp_path / "local.npz", "--save_path", tmp_path / "local.json"])
    assert local.returncode == 0, local.stderr
    result = run_script(EVALUATE + ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--batchsize", "2",
                                    "--ray", "local", "--ray_workers", "2", "--ray_batch_images", "3",
                                    "--save_confusion", tmp_path / "ray.npz", "--save_path", tmp_path / "ray.json"],
                        env=ray_env, timeout=300)
    assert result.returncode == 0, (result.stdout, result.stderr)
    same_as_local(tmp_path / "local.npz", tmp_path / "ray.npz")
    ray_result = json.loads((tmp_path / "ray.json").read_text())
    engine = ray_result.pop("engine")
    assert ray_result == json.loads((tmp_path / "local.json").read_text())
    assert "engine" not in json.loads((tmp_path / "local.json").read_text())
    assert engine["name"] == "ray" and engine["workers"] == 2 and engine["nodes"] == 1
    assert engine["retried_batches"] == 0 and sum(w["images"] for w in engine["per_worker"]) == TINY_IMAGES
    assert {w["node"] for w in engine["per_worker"]} == {"127.0.0.1"}   # loopback only
    pids = {int(pid) for _, pid, _ in WORKER_LINE.findall(result.stdout)}
    assert pids == {w["pid"] for w in engine["per_worker"]} and len(pids) == 2
    table = local.stdout[local.stdout.index("class"):local.stdout.index("stage")]
    assert table in result.stdout and "retried batches: 0" in result.stdout and "2 batches of up to 4" in result.stdout


def test_a_two_node_cluster_gives_the_local_matrix_with_multi_scale_testing(tmp_path, capsys, ray_env, cluster,
                                                                            tiny_data_root, tiny_pth_path):
    # upstream's multi-scale + flip testing (three scales, sliding windows at 1.5) on the torch backend: the
    # flags travel to the workers, which run the same augmented pipeline as one process
    from hrnetseg import evaluate

    flags = ["--datasets_path", str(tiny_data_root), "--pth", str(tiny_pth_path), "--preset", TINY_PRESET,
             "--batchsize", "2", "--limit", "3"] + TTA_FLAGS
    assert evaluate.main(flags + ["--save_confusion", str(tmp_path / "local.npz")]) == 0
    capsys.readouterr()
    result = run_script(EVALUATE + flags + ["--ray", cluster.address, "--ray_batch_images", "1", "--save_confusion",
                                            tmp_path / "ray.npz", "--save_path", tmp_path / "ray.json"],
                        env=ray_env, timeout=300)
    assert result.returncode == 0, (result.stdout, result.stderr)
    same_as_local(tmp_path / "local.npz", tmp_path / "ray.npz", images=3)
    engine = json.loads((tmp_path / "ray.json").read_text())["engine"]
    assert engine["workers"] == 2 and engine["nodes"] == 2, engine   # default: the cluster's 2 CPUs / 1 per worker
    assert sorted(w["images"] for w in engine["per_worker"])[-1] < 3, (engine, result.stdout)   # both nodes worked
    assert "forward passes: 22 per image, 66 in all" in result.stdout


def test_a_worker_killed_mid_run_changes_nothing(tmp_path, ray_env, cluster, local_npz, tiny_data_root,
                                                 tiny_onnx_path):
    # every batch (one image) first waits 0.5 s on its worker: the kill lands while worker 0 holds two batches
    driver = start_driver(["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--batchsize", "1",
                           "--ray", cluster.address, "--ray_batch_images", "1", "--save_confusion",
                           tmp_path / "ray.npz", "--save_path", tmp_path / "ray.json"],
                          dict(ray_env, **{BATCH_DELAY_ENV: "0.5"}))
    pids, _ = read_worker_lines(driver, 2)
    time.sleep(0.3)
    os.kill(pids[0], signal.SIGKILL)
    code, out, err = finish(driver)
    assert code == 0, (out, err)
    same_as_local(local_npz, tmp_path / "ray.npz")
    engine = json.loads((tmp_path / "ray.json").read_text())["engine"]
    assert engine["nodes"] == 2 and engine["retried_batches"] >= 1 and "retried batches: {}".format(engine["retried_batches"]) in out
    assert sum(w["images"] for w in engine["per_worker"]) == TINY_IMAGES


def test_an_image_deleted_after_the_listing_is_one_line_naming_node_and_path(tmp_path, ray_env, cluster,
                                                                             tiny_data_root, tiny_onnx_path):
    data = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(data))
    victim = sorted(data.rglob("*" + cityscapes.IMAGE_SUFFIX))[-1]
    driver = start_driver(["--datasets_path", data, "--onnx", tiny_onnx_path, "--batchsize", "1", "--ray",
                           cluster.address, "--ray_batch_images", "1", "--save_path", tmp_path / "r.json"],
                          dict(ray_env, **{BATCH_DELAY_ENV: "0.5"}))
    read_worker_lines(driver, 1)   # the driver listed the images before it started the workers
    victim.unlink()
    code, out, err = finish(driver)
    result = subprocess.CompletedProcess(driver.args, code, out, err)
    assert_user_error(result, "node 127.0.0.1", str(victim), "not found")
    assert not (tmp_path / "r.json").exists()


def test_ctrl_c_stops_the_workers_and_writes_nothing(tmp_path, ray_env, cluster, tiny_data_root, tiny_onnx_path):
    driver = start_driver(["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--batchsize", "1", "--ray",
                           cluster.address, "--ray_batch_images", "1", "--save_path", tmp_path / "r.json"],
                          dict(ray_env, **{BATCH_DELAY_ENV: "0.5"}))
    pids, _ = read_worker_lines(driver, 2)
    driver.send_signal(signal.SIGINT)
    code, out, err = finish(driver)
    assert code == 130 and "Traceback" not in err, (code, out, err)
    assert "nothing written" in out and not (tmp_path / "r.json").exists()
    deadline = time.monotonic() + 20
    while any(pid_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(pid) for pid in pids.values())


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/{}/stat".format(pid)) as fh:   # a zombie has exited
        return fh.read().split(")")[-1].split()[0] != "Z"
