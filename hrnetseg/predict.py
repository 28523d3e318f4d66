"""`python3 -m hrnetseg.predict`: predict on your own images, folders and videos.

The command lives in hrnetseg.prediction.cli; this module keeps the command name users type.
"""
from hrnetseg.prediction.cli import build_parser, main  # noqa: F401  (the entry point's interface)
from hrnetseg.util.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
