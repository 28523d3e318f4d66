"""hrnetseg.util.cli's ArgumentParser (the hyphenated flag spellings) and argument types, and the one shape of the
four top-level scripts."""
from __future__ import annotations

import ast

import pytest

from hrnetseg.util.cli import ArgumentParser, positive_int

from helpers import REPO, load_script

TOP_LEVEL_SCRIPTS = ("HRNet_preprocess.py", "HRNet_pth2onnx.py", "performance_optimize_resize.py",
                     "HRNet_postprocess.py")


def example_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="example")
    parser.add_argument("--save_path", required=True, help="where to write")
    parser.add_argument("--skip_bad", action="store_true")
    parser.add_argument("--workers", type=positive_int, default=None)
    parser.add_argument("input_file", help="a positional keeps its name")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--pth")
    weights.add_argument("--random_weights", type=int)
    extra = parser.add_argument_group("extra")
    extra.add_argument("--output_index", type=int, default=1)
    return parser


@pytest.mark.parametrize("argv", [
    ["--save_path", "a", "--skip_bad", "--random_weights", "3", "--output_index", "0", "in"],
    ["--save-path", "a", "--skip-bad", "--random-weights", "3", "--output-index", "0", "in"],
    ["--save-path=a", "--skip-bad", "--random-weights=3", "--output-index=0", "in"],
    ["in", "--save-p", "a", "--skip-b", "--random-w=3", "--output-i", "0"],   # argparse's prefixes, either spelling
])
def test_every_underscore_flag_takes_its_hyphenated_spelling(argv):
    args = example_parser().parse_args(argv)
    assert (args.save_path, args.skip_bad, args.random_weights, args.pth, args.output_index, args.input_file) == \
        ("a", True, 3, None, 0, "in")


def test_usage_shows_the_underscore_spelling_help_and_errors_name_both(capsys):
    parser = example_parser()
    usage = parser.format_usage()
    assert "--save_path SAVE_PATH" in usage and "(--pth PTH | --random_weights RANDOM_WEIGHTS)" in usage
    assert "-" + "-save-path" not in usage and "input_file" in usage
    help_text = parser.format_help()
    assert "--save_path SAVE_PATH, --save-path SAVE_PATH" in help_text
    assert "--skip_bad, --skip-bad" in help_text and "  --workers WORKERS\n" in help_text   # nothing to add
    assert "--output_index OUTPUT_INDEX, --output-index OUTPUT_INDEX" in help_text
    for argv, message in ((["in", "--pth", "p"], "the following arguments are required: --save_path/--save-path"),
                          (["in", "--save_path", "a", "--pth", "p", "--random-weights", "1"],
                           "argument --random_weights/--random-weights: not allowed with argument --pth"),
                          (["in", "--save_path", "a", "--pth", "p", "--bogus-flag"],
                           "unrecognized arguments: --bogus-flag")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err


def test_subcommands_and_nested_groups_take_the_hyphenated_spelling_too():
    parser = ArgumentParser(prog="example")
    commands = parser.add_subparsers(dest="command")
    merge = commands.add_parser("merge")
    merge.add_argument("--save_path", required=True)
    group = merge.add_argument_group("outputs")
    group.add_argument("--save_vis")
    assert isinstance(merge, ArgumentParser)
    args = parser.parse_args(["merge", "--save-path", "r.json", "--save-vis=v"])
    assert (args.command, args.save_path, args.save_vis) == ("merge", "r.json", "v")


def test_a_flag_given_both_spellings_is_added_once():
    parser = ArgumentParser(prog="example")
    parser.add_argument("--no_verify", "--no-verify", action="store_true")
    assert parser.format_help().count("--no-verify") == 1
    assert parser.parse_args(["--no-verify"]).no_verify


def test_positive_int_takes_ascii_digits_only():
    import argparse

    from hrnetseg.util.cli import positive_int

    assert positive_int("12") == 12
    for bad in ("1_0", "\u0663", "0", "-1", " 1", "", "1.0"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)


def test_decimal_numbers_in_flags_take_ascii_digits_only():
    """float() reads "\u0661" (an Arabic-Indic one) as 1, "1_0" as 10, " 1" as 1 and "nan"; no flag may."""
    import argparse

    from hrnetseg.util.cli import decimal_number, plain_decimal

    assert [plain_decimal(text) for text in ("0.5", "1e-3", ".75", "2.")] == [0.5, 0.001, 0.75, 2.0]
    for bad in ("\u0661", "1\u00b2", "\u0661.5", "1_0", " 1", "1 ", "nan", "inf", "+1", "-1", "0x1", "", "\uff11"):
        assert plain_decimal(bad) is None, bad
        with pytest.raises(argparse.ArgumentTypeError, match="expected a number"):
            decimal_number(bad)
    assert decimal_number("0") == 0.0
    for bad in ("0", "1e999"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a number > 0"):
            decimal_number(bad, above=True)


@pytest.mark.parametrize("name", TOP_LEVEL_SCRIPTS)
def test_top_level_scripts_have_one_shape(name):
    """A module docstring, build_parser() -> argparse.ArgumentParser, main(argv=None) -> int, run_cli(main)."""
    tree = ast.parse((REPO / name).read_text())
    assert ast.get_docstring(tree)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert not functions["build_parser"].args.args
    assert ast.unparse(functions["build_parser"].returns) == "argparse.ArgumentParser"
    main = functions["main"]
    assert [a.arg for a in main.args.args] == ["argv"] and ast.unparse(main.args.defaults[0]) == "None"
    assert ast.unparse(main.args.args[0].annotation) == "Optional[Sequence[str]]"
    assert ast.unparse(main.returns) == "int"
    [guard] = [node for node in tree.body if isinstance(node, ast.If)]
    assert ast.unparse(guard) == "if __name__ == '__main__':\n    run_cli(main)"
    assert isinstance(load_script(name).build_parser(), ArgumentParser)


def test_the_locks_parser_is_one_too():
    from hrnetseg.util import locks

    assert isinstance(locks.build_parser(), ArgumentParser)


def test_a_name_that_is_not_utf8_prints_on_a_strict_terminal():
    """Python keeps such a name's bytes as lone surrogates; printing it must not end the tool."""
    import os
    import subprocess
    import sys

    code = ("import os\nfrom hrnetseg.util.cli import run_cli\nfrom hrnetseg.util.errors import UserError\n"
            "def main(argv):\n    name = os.fsdecode(b'clip\\xff.mp4')\n    print('skipped', name)\n"
            "    raise UserError('cannot use ' + name)\n"
            "run_cli(main, [])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO),
                            env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    assert result.returncode == 2 and result.stdout == "skipped clip\\udcff.mp4\n", result
    assert result.stderr == "-c: error: cannot use clip\\udcff.mp4\n", result.stderr
