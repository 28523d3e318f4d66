"""`python3 -m hrnetseg.infer`: the local runner with ais_bench's options, files and printed block.

The command lives in hrnetseg.runner.cli; this module keeps the command name users type.
"""
from hrnetseg.runner.cli import build_parser, main  # noqa: F401  (the entry point's interface)
from hrnetseg.util.cli import run_cli


def run() -> None:
    """The console script hrnetseg-infer: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run()
