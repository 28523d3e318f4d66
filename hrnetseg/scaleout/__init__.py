"""Scale-out: python -m hrnetseg.evaluate --ray ADDRESS runs the streaming evaluation on a Ray cluster.

batches.py plans the units of work (batches of image ids) and keeps the ledger that adds each batch's
confusion matrix exactly once; worker.py is the Ray actor (loads the model once, evaluates batches with the
streaming pipeline of one process); driver.py starts the workers, hands out batches, re-runs the batches of
a worker that died and reports. Ray itself is optional (requirements-ray.txt): import it with import_ray().
"""
from __future__ import annotations

import os

from hrnetseg.util.errors import UserError

REQUIREMENTS = "requirements-ray.txt"
# Ray reads this when it is imported: "0" makes every node of a Ray instance started here use 127.0.0.1
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray(loopback: bool = False):
    """The ray module, or a one-line error saying what to install. loopback: keep a Ray instance started by
    this process on 127.0.0.1 (must happen before Ray is first imported)."""
    if loopback:
        os.environ[LOOPBACK_ENV] = "0"
    try:
        import ray
    except ImportError as exc:
        raise UserError("--ray needs Ray, which is not installed ({}): pip install -r {}".format(
            exc, REQUIREMENTS))
    return ray
