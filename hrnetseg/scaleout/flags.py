"""The --ray flags of python -m hrnetseg.evaluate and python -m hrnetseg.predict, checked before any work
(no Ray needed to parse or refuse them), and their values as the drivers take them (RayOptions)."""
from __future__ import annotations

import argparse
import re
from collections import namedtuple
from typing import Tuple

from hrnetseg.util.cli import decimal_number, positive_int
from hrnetseg.util.errors import UserError

ADDRESS_FORMS = "local, auto, HOST:PORT or ray://HOST:PORT"
# The --ray flags' values: --ray, --ray_cpus_per_worker, --ray_gpus_per_worker, --ray_workers, --ray_batch_images
RayOptions = namedtuple("RayOptions", ["address", "cpus_per_worker", "gpus_per_worker", "workers", "batch_images"])


def add_ray_flags(parser: argparse.ArgumentParser, batch_note: str = "") -> None:
    """--ray and its options."""
    group = parser.add_argument_group("scale out on Ray (pip install -r requirements-ray.txt)")
    group.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run on Ray: local (start one on this machine, loopback only), auto (the cluster this "
                            "node belongs to), HOST:PORT or ray://HOST:PORT; the data and the model must be at "
                            "the same path on every node")
    group.add_argument("--ray_cpus_per_worker", type=positive_float, default=1.0, metavar="N",
                       help="CPUs per worker, the model's threads unless --cpu_threads (default 1)")
    group.add_argument("--ray_gpus_per_worker", type=nonnegative_float, default=0.0, metavar="N",
                       help="GPUs per worker (default 0); a worker with a GPU runs its model there")
    group.add_argument("--ray_workers", type=positive_int, default=None, metavar="N",
                       help="workers (default: the cluster's CPUs / CPUs per worker)")
    group.add_argument("--ray_batch_images", type=positive_int, default=8, metavar="N",
                       help="images per unit of work (default 8{})".format(batch_note))


def positive_float(text: str) -> float:
    return decimal_number(text, 0.0, above=True)


def nonnegative_float(text: str) -> float:
    return decimal_number(text, 0.0)


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
