"""Issue 3's speed check (see hrnetseg/bench_data.py): python benchmarks/bench_data.py [--n 8] [--root DIR]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hrnetseg.bench_data import main  # noqa: E402
from hrnetseg.cli import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
