"""The flags that choose and feed a backend, shared by the bin runner (python3 -m hrnetseg.infer) and the
streaming evaluator (python -m hrnetseg.evaluate) through argparse's parents=[...].

Both tools spell, type and default these flags alike; where a help text differs (what the tool does with
the outputs, when its warm-up runs) the tool passes its own.
"""
from __future__ import annotations

import argparse
from typing import Tuple

from hrnetseg.backends import BACKENDS, PRECISIONS
from hrnetseg.backends.auto import AUTO
from hrnetseg.model.presets import DEFAULT_PRESET, PRESET_NAMES
from hrnetseg.util.cli import ArgumentParser, nonnegative_int, positive_int


def backend_flags(backend_help: str, precision_help: str, warmup_help: str,
                  device_names: Tuple[str, ...] = ("--device",),
                  device_help: str = "cpu, cuda, cuda:N or a GPU number N (default: the first GPU if usable, else cpu)",
                  auto: bool = False) -> argparse.ArgumentParser:
    """A parent parser with --backend, --device, --precision, --preset, --batchsize and --warmup_count.

    They form their own section of --help ("backend"), after the tool's own flags. device_names: the runner adds
    ais_bench's short form -d. auto (predict, evaluate): --backend auto is a choice and the default
    (hrnetseg.backends.auto), and --precision defaults to None (auto: any; an explicit backend: fp32).
    """
    parser = ArgumentParser(add_help=False)
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=(AUTO,) + BACKENDS if auto else BACKENDS, default=AUTO if auto else None,
                       help=backend_help)
    group.add_argument(*device_names, dest="device", default=None, help=device_help)
    group.add_argument("--precision", choices=PRECISIONS, default=None if auto else "fp32", help=precision_help)
    group.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET,
                       help="model variant of a .pth (default: {})".format(DEFAULT_PRESET))
    group.add_argument("--batchsize", type=positive_int, default=None,
                       help="batch size for a model with a dynamic batch axis (default 1); must match a fixed one")
    group.add_argument("--warmup_count", type=nonnegative_int, default=None, help=warmup_help)
    return parser
