"""The --ray flags of python -m hrnetseg.evaluate and python -m hrnetseg.predict, checked before any work
(no Ray needed to parse or refuse them), and their values as the drivers take them (RayOptions)."""
from __future__ import annotations

import argparse
import math
import re
from collections import namedtuple
from typing import Tuple

from hrnetseg.util.cli import decimal_number, positive_int
from hrnetseg.util.errors import UserError

ADDRESS_FORMS = "local, auto, HOST:PORT or ray://HOST:PORT"
# Ray counts resources in steps of this (its MIN_RESOURCE_GRANULARITY): a finer share is refused by Ray itself,
# with a traceback, once the actors are made
RAY_RESOURCE_STEP = 0.0001
# The --ray flags' values: --ray, --ray_cpus_per_worker, --ray_gpus_per_worker, --ray_workers, --ray_batch_images
RayOptions = namedtuple("RayOptions", ["address", "cpus_per_worker", "gpus_per_worker", "workers", "batch_images"])


def add_ray_flags(parser: argparse.ArgumentParser, batch_note: str = "") -> None:
    """--ray and its options."""
    group = parser.add_argument_group("scale out on Ray (pip install -r requirements-ray.txt)")
    group.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run on Ray: local (start one on this machine, loopback only), auto (the cluster this "
                            "node belongs to), HOST:PORT or ray://HOST:PORT; the data and the model must be at "
                            "the same path on every node")
    group.add_argument("--ray_cpus_per_worker", type=cpus_per_worker, default=1.0, metavar="N",
                       help="CPUs per worker, the model's threads unless --cpu_threads (default 1; a share such as "
                            "0.5 puts two workers on a CPU)")
    group.add_argument("--ray_gpus_per_worker", type=gpus_per_worker, default=0.0, metavar="N",
                       help="GPUs per worker: 0 (default) or a share of one GPU up to 1 (0.25: four workers share "
                            "a GPU); a worker with a GPU runs its model there")
    group.add_argument("--ray_workers", type=positive_int, default=None, metavar="N",
                       help="workers (default: the cluster's CPUs / CPUs per worker)")
    group.add_argument("--ray_batch_images", type=positive_int, default=8, metavar="N",
                       help="images per unit of work (default 8{})".format(batch_note))


def ray_share(text: str, what: str) -> float:
    """argparse type body: a number of CPUs or GPUs as Ray takes it: ASCII digits, finite, >= 0, in Ray's steps
    of RAY_RESOURCE_STEP."""
    value = decimal_number(text, what=what)
    steps = (value - math.floor(value)) / RAY_RESOURCE_STEP   # of the fraction: whole numbers are whole steps
    if abs(steps - round(steps)) > 1e-6:
        raise argparse.ArgumentTypeError("expected {} in Ray's steps of {:g}, got {!r}".format(
            what, RAY_RESOURCE_STEP, text))
    return value


def cpus_per_worker(text: str) -> float:
    what = "a number of CPUs > 0 such as 1, 4 or 0.5"
    value = ray_share(text, what)
    if value == 0:
        raise argparse.ArgumentTypeError("expected {}, got {!r}".format(what, text))
    return value


def gpus_per_worker(text: str) -> float:
    """0 (no GPU), or a share of one GPU up to 1: a worker runs its one model on one GPU, so more would only
    keep GPUs from the other workers."""
    value = ray_share(text, "0 or a share of one GPU up to 1 (a worker runs its model on one GPU)")
    if value > 1:
        raise argparse.ArgumentTypeError("expected 0 or a share of one GPU up to 1 (a worker runs its model on one "
                                         "GPU), got {!r}".format(text))
    return value


def host_and_port(address: str) -> Tuple[str, int]:
    """HOST:PORT (a Ray head's GCS address) split; anything else is a one-line error."""
    host, _, port = address.rpartition(":")
    if not host.strip("[]") or not re.fullmatch(r"[0-9]+", port) or not 0 < int(port) < 65536:
        raise UserError("--ray {}: expected {}".format(address, ADDRESS_FORMS))
    return host.strip("[]"), int(port)


def ray_options(args: argparse.Namespace) -> RayOptions:
    return RayOptions(args.ray, args.ray_cpus_per_worker, args.ray_gpus_per_worker, args.ray_workers,
                      args.ray_batch_images)


def check_ray_flags(args: argparse.Namespace) -> None:
    """The --ray_* options only with --ray; an address of none of the forms refused (before any work)."""
    if args.ray is None:
        given = [flag for flag, value, default in (("--ray_cpus_per_worker", args.ray_cpus_per_worker, 1.0),
                                                   ("--ray_gpus_per_worker", args.ray_gpus_per_worker, 0.0),
                                                   ("--ray_workers", args.ray_workers, None),
                                                   ("--ray_batch_images", args.ray_batch_images, 8))
                 if value != default]
        if given:
            raise UserError("{} applies only with --ray ADDRESS".format(given[0]))
    elif not args.ray.strip():
        raise UserError("--ray is empty: give {}".format(ADDRESS_FORMS))
    elif args.ray not in ("local", "auto") and not args.ray.startswith("ray://"):
        host_and_port(args.ray)
