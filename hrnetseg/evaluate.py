"""`python3 -m hrnetseg.evaluate`: streaming evaluation, Cityscapes PNGs -> model -> mIoU.

The command lives in hrnetseg.evaluation.cli; this module keeps the command name users type.
"""
from hrnetseg.evaluation.cli import build_parser, main  # noqa: F401  (the entry point's interface)
from hrnetseg.util.cli import run_cli


def run() -> None:
    """The console script hrnetseg-evaluate: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run()
