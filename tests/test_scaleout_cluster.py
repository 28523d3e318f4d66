"""Scale-out on real Ray instances (python -m hrnetseg.evaluate / predict --ray): the local confusion matrix
exactly under --ray local, on a two-node cluster (with multi-scale testing) and with a worker killed mid-run;
predict's files the same with a worker killed; an image deleted after the listing; Ctrl-C.

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

from hrnetseg.data import cityscapes
from hrnetseg.scaleout import LOOPBACK_ENV
from hrnetseg.scaleout.driver import BATCH_DELAY_ENV

from helpers import (
    EVALUATE,
    PREDICT,
    REPO,
    TINY_IMAGES,
    TINY_PRESET,
    TTA_FLAGS,
    assert_user_error,
    default_sigint,
    process_running,
    run_in_process,
    run_script,
)

WORKER_LINE = re.compile(r"^ray worker (\d+) pid (\d+) node (\S+)", re.M)


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


def same_as_local(local, npz, images=TINY_IMAGES):
    with np.load(str(local)) as one, np.load(str(npz)) as two:
        assert one["matrix"].sum() > 0
        np.testing.assert_array_equal(one["matrix"], two["matrix"])
        assert int(one["images"]) == int(two["images"]) == images and list(one["ids"]) == list(two["ids"])
        assert int(one["output_index"]) == int(two["output_index"])


def start_driver(args, env, tool=EVALUATE):
    """python -m hrnetseg.evaluate (or `tool`) ARGS in the background, its stdout readable line by line."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), HRNETSEG_PROGRESS="0", **env)
    return subprocess.Popen([sys.executable] + tool + [str(a) for a in args], cwd=str(REPO), env=full_env,
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


def test_ray_local_gives_the_local_confusion_matrix(tmp_path, capsys, ray_env, tiny_data_root, tiny_onnx_path):
    # batch size 2 and 3 images per unit of work (rounded up to 4): batches of 4 + 1 images, as one process
    # makes them; compared with the local run (in this process) at the same batch size, table and result.json
    # included
    from hrnetseg.evaluation import cli as evaluate

    local = run_in_process(evaluate.main, ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--batchsize",
                                           "2", "--save_confusion", tmp_path / "local.npz", "--save_path",
                                           tmp_path / "local.json"], capsys)
    assert local.returncode == 0, local.stderr
    result = run_script(EVALUATE + ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--batchsize", "2",
                                    "--ray", "local", "--ray_workers", "2", "--ray_batch_images", "3",
                                    "--save_confusion", tmp_path / "ray.npz", "--save_path", tmp_path / "ray.json",
                                    "--report", tmp_path / "ray.html"],
                        env=ray_env, timeout=300)
    assert result.returncode == 0, (result.stdout, result.stderr)
    same_as_local(tmp_path / "local.npz", tmp_path / "ray.npz")
    page = (tmp_path / "ray.html").read_text()   # the bars and the heat map; no worst images, saying why
    assert page.count('class="bar-row"') == 19 and "the Ray workers return one confusion matrix per batch" in page
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
    assert table in result.stdout and "retried batches: 0" in result.stdout
    assert "2 batches of up to 4 images" in result.stdout


def test_a_two_node_cluster_gives_the_local_matrix_with_multi_scale_testing(tmp_path, capsys, ray_env, cluster,
                                                                            tiny_data_root, tiny_pth_path):
    # upstream's multi-scale + flip testing (three scales, sliding windows at 1.5) on the torch backend: the
    # flags travel to the workers, which run the same augmented pipeline as one process
    from hrnetseg.evaluation import cli as evaluate

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
    assert engine["nodes"] == 2 and engine["retried_batches"] >= 1
    assert "retried batches: {}".format(engine["retried_batches"]) in out
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


def test_more_workers_than_the_cluster_holds_is_one_line(tmp_path, ray_env, cluster, tiny_data_root, tiny_onnx_path):
    result = run_script(EVALUATE + ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--ray",
                                    cluster.address, "--ray_workers", "3", "--save_path", tmp_path / "r.json"],
                        env=ray_env, timeout=120)
    assert_user_error(result, "3 Ray workers of 1 CPU need 3 CPUs; the cluster has 2 CPUs")
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
    while any(process_running(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(process_running(pid) for pid in pids.values())


def test_predict_on_a_cluster_with_a_worker_killed_writes_the_local_files(tmp_path, ray_env, cluster,
                                                                          tiny_data_root, tiny_onnx_path):
    from hrnetseg.prediction import cli as predict

    flags = ["--onnx", str(tiny_onnx_path), "--input", str(tiny_data_root / "cityscapes" / "leftImg8bit"), "--save",
             "labelIds,color", "--base_size", "128"]
    assert predict.main(flags + ["--output", str(tmp_path / "local")]) == 0
    driver = start_driver(flags + ["--output", tmp_path / "ray", "--ray", cluster.address, "--ray_batch_images", "1"],
                          dict(ray_env, **{BATCH_DELAY_ENV: "0.5"}), tool=PREDICT)
    pids, _ = read_worker_lines(driver, 2)
    time.sleep(0.3)
    os.kill(pids[0], signal.SIGKILL)
    code, out, err = finish(driver)
    assert code == 0, (out, err)
    retried = re.search(r"retried batches: (\d+)", out)
    assert retried and int(retried.group(1)) >= 1, out
    assert "predicted {} images and 0 video frames".format(TINY_IMAGES) in out
    assert "wrote {} files".format(2 * TINY_IMAGES) in out   # each image's files counted once
    local = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*") if p.is_file())
    ours = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*") if p.is_file())
    assert ours == local and len(ours) == 2 * TINY_IMAGES + 1   # and the record; no temporaries left behind
    assert all((tmp_path / "ray" / p).read_bytes() == (tmp_path / "local" / p).read_bytes() for p in ours)
