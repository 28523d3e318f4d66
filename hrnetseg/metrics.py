"""`python3 -m hrnetseg.metrics`: merge confusion-matrix shards into one mIoU (`merge`).

The command lives in hrnetseg.evaluation.metrics; this module keeps the command name users type.
"""
from hrnetseg.evaluation.metrics import build_parser, main  # noqa: F401  (the entry point's interface)
from hrnetseg.util.cli import run_cli


def run() -> None:
    """The console script hrnetseg-metrics: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run()
