"""`python3 -m hrnetseg.quantize`: post-training int8 quantisation of the ONNX export (NNCF).

The command lives in hrnetseg.model.quantize_cli; this module keeps the command name users type.
"""
from hrnetseg.model.quantize_cli import build_parser, main  # noqa: F401  (the entry point's interface)
from hrnetseg.util.cli import run_cli


def run() -> None:
    """The console script hrnetseg-quantize: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run()
