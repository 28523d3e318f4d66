"""`python3 -m hrnetseg.sample_data`: synthetic scenes in the Cityscapes layout.

The command lives in hrnetseg.data.sample_scenes; this module keeps the command name users type.
"""
from hrnetseg.data.sample_scenes import build_parser, main  # noqa: F401  (the entry point's interface)
from hrnetseg.util.cli import run_cli


def run() -> None:
    """The console script hrnetseg-sample-data: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run()
