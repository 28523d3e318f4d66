"""Processes: how many cores this process may use, and how many workers to start for a number of tasks.

Valid Python 3.7, standard library only.
"""
from __future__ import annotations

import os
from typing import Optional


def default_workers(requested: Optional[int], tasks: int) -> int:
    """Parallel workers for `tasks` items: as requested, else one per core; never more than the items."""
    return max(1, min(requested or os.cpu_count() or 1, tasks or 1))
