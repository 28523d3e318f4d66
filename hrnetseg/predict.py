"""`python3 -m hrnetseg.predict`: predict on your own images, folders and videos.

The command lives in hrnetseg.prediction.cli; this module keeps the command name users type.
"""
from hrnetseg.prediction.cli import build_parser, main  # noqa: F401  (the entry point's interface)
from hrnetseg.util.cli import run_cli


def run() -> None:
    """The console script hrnetseg-predict: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run()
