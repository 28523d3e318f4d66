"""Processes: how many cores this process may use, how many workers to start for a number of tasks, and the
environment of a child Python that runs this package.

Valid Python 3.7, standard library only.
"""
from __future__ import annotations

import os
import site
from typing import Dict, Optional


def default_workers(requested: Optional[int], tasks: int) -> int:
    """Parallel workers for `tasks` items: as requested, else one per core; never more than the items."""
    return max(1, min(requested or os.cpu_count() or 1, tasks or 1))


def env_for_python_children(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a child `python -m hrnetseg...` that must run this same hrnetseg: `env` (default
    os.environ) with the folder this package was imported from first on PYTHONPATH, unless that folder is a
    site-packages folder (an installed copy: the child finds it there, and site-packages on PYTHONPATH would
    come before the standard library)."""
    env = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    site_folders = set(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    site_folders.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else "")
    if os.path.realpath(root) not in {os.path.realpath(folder) for folder in site_folders if folder}:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env
