"""`python3 -m hrnetseg.evaluate`: streaming evaluation, Cityscapes PNGs -> model -> mIoU.

The command lives in hrnetseg.evaluation.cli; this module keeps the command name users type.
"""
from hrnetseg.evaluation.cli import build_parser, main  # noqa: F401  (the entry point's interface)
from hrnetseg.util.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
