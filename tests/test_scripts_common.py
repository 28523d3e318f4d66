"""What every shell script does through scripts/common.sh: flags as users write them (empty values, --name=VALUE,
a forgotten value), an --output_dir that is a file, probes of tools under a timeout, steps whose children die with
a killed script."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ATC, REPO, assert_user_error, bash_plus_env, process_gone, write_tool

# --- flags --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script, args", [
    ("eval_acc_perf.sh", ["--datasets_path", "data", "--output_dir", ""]),     # would write /prep_dataset, /results
    ("eval_acc_perf.sh", ["--datasets_path", "data", "--model_dir", ""]),      # would look for /hrnet_bs1.om
    ("pth2om.sh", ["--pth", "x.pth", "--soc_version", ""]),
    ("demo.sh", ["--output_dir", ""]),
    ("perf_gpu.sh", ["--output_dir", ""]),
])
def test_an_empty_flag_value_is_refused_not_taken_as_the_root(tmp_path, script, args):
    result = bash_plus_env(script, *args, cwd=tmp_path)
    assert_user_error(result, "needs a value, not an empty string")
    assert os.listdir(str(tmp_path)) == []


FLAGS_SCRIPT = """
source "{common}"
limit=""; no_rewrite=0
parse_flags "output_dir limit" "no_rewrite" "$@"
echo "output_dir=${{output_dir-}} limit=${{limit}} no_rewrite=${{no_rewrite}}"
"""


@pytest.mark.parametrize("args, said", [
    (["--output_dir=a b", "--limit=5", "--no-rewrite"], "output_dir=a b limit=5 no_rewrite=1"),
    (["--output-dir", "x", "--limit", "-5"], "output_dir=x limit=-5 no_rewrite=0"),   # the script checks -5
    (["--output_dir=--limit"], "output_dir=--limit limit= no_rewrite=0"),                 # said with =, meant
    (["--output_dir", "--limit", "5"], "error: --output_dir needs a value, not the flag --limit"),
    (["--output_dir", "--no_rewrite"], "error: --output_dir needs a value, not the flag --no_rewrite"),
    (["--output_dir="], "error: --output_dir needs a value, not an empty string"),
    (["--no_rewrite=1"], "error: --no_rewrite takes no value"),
    (["--bogus=1"], "error: unknown argument: --bogus (see --help)"),
])
def test_flags_as_users_write_them(tmp_path, args, said):
    """--name=VALUE was 'unknown argument'; a forgotten value took the next flag as a folder name."""
    script = tmp_path / "flags.sh"
    script.write_text(FLAGS_SCRIPT.format(common=REPO / "scripts" / "common.sh"))
    result = subprocess.run(["bash", str(script)] + args, capture_output=True, text=True, timeout=30)
    if said.startswith("error"):
        assert_user_error(result, said)
    else:
        assert result.returncode == 0 and result.stdout.strip() == said, result


INTS_SCRIPT = 'source "{common}"\nrequire_positive_ints --batch_sizes "$@"\necho ok\n'


def test_integers_in_flags_are_ascii_digits_in_any_locale(tmp_path):
    """An Arabic-Indic one, a superscript two or 1_0 is no batch size, whatever the locale says a range holds."""
    script = tmp_path / "ints.sh"
    script.write_text(INTS_SCRIPT.format(common=REPO / "scripts" / "common.sh"))
    for locale in ("C", "C.UTF-8"):
        env = dict(os.environ, LC_ALL=locale)
        for value in ("\u0661", "1\u00b2", "1_0", "\uff11", "0", " 1"):
            result = subprocess.run(["bash", str(script), "4", value], capture_output=True, text=True, env=env)
            assert_user_error(result, "--batch_sizes takes positive integers (ASCII digits), not '{}'".format(value))
        accepted = subprocess.run(["bash", str(script), "1", "40"], capture_output=True, text=True, env=env)
        assert accepted.returncode == 0 and accepted.stdout == "ok\n", accepted


def test_an_output_dir_that_is_a_file_is_one_line_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "x.pth").write_bytes(b"pth")
    (tmp_path / "x.onnx").write_bytes(b"onnx")
    for script, args in (("pth2om.sh", ["--pth", "x.pth"]), ("perf_gpu.sh", ["--onnx", "x.onnx"])):
        assert_user_error(bash_plus_env(script, *args, "--output_dir", "a_file", cwd=tmp_path), "--output_dir a_file",
                          "not a folder")


# --- probes under a timeout -----------------------------------------------------------------------------------

def test_probes_run_under_a_timeout(tmp_path):
    script = tmp_path / "probe.sh"
    script.write_text('source "{}"\nprobe "$@" || echo "status $?"\necho "output: ${{PROBE_OUTPUT}}"\n'.format(
        REPO / "scripts" / "common.sh"))
    hung = subprocess.run(["bash", str(script), "sleep", "20"], capture_output=True, text=True, timeout=15,
                          env=dict(os.environ, HRNETSEG_PROBE_TIMEOUT="1"))
    assert_user_error(hung, "'sleep 20' did not answer within 1 s", "HRNETSEG_PROBE_TIMEOUT")
    answered = subprocess.run(["bash", str(script), "sh", "-c", "echo hi; exit 3"], capture_output=True, text=True)
    assert answered.stdout.splitlines() == ["status 3", "output: hi"]
    bad = subprocess.run(["bash", str(script), "true"], capture_output=True, text=True,
                         env=dict(os.environ, HRNETSEG_PROBE_TIMEOUT="soon"))
    assert_user_error(bad, "HRNETSEG_PROBE_TIMEOUT")


HANG = "import time\ntime.sleep(120)\n"


def test_hung_probes_stop_the_scripts_with_one_line(tools, tmp_path, tiny_pth_path, tiny_data_root):
    folder, env, _ = tools
    write_tool(folder, "atc", ATC)
    write_tool(folder, "npu-smi", HANG)
    hung = tmp_path / "hung_ais_bench.py"
    hung.write_text(HANG)
    (tmp_path / "hrnet_bs1.om").write_bytes(b"om")
    env = dict(env, HRNETSEG_PROBE_TIMEOUT="1", AIS_BENCH="{} {}".format(sys.executable, hung))
    commands = {"pth2om.sh": ["--pth", tiny_pth_path, "--output_dir", tmp_path / "om"],
                "eval_acc_perf.sh": ["--datasets_path", tiny_data_root, "--model_dir", tmp_path, "--batch_sizes", "1",
                                     "--output_dir", tmp_path / "eval"]}
    began = time.monotonic()
    running = {name: subprocess.Popen(["bash", str(REPO / "scripts" / name)] + [str(a) for a in args], env=env,
                                      cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, args in commands.items()}
    results = {name: subprocess.CompletedProcess(p.args, 0, *p.communicate(timeout=60)) for name, p in running.items()}
    for name, process in running.items():
        results[name].returncode = process.returncode
    assert time.monotonic() - began < 30
    assert_user_error(results["pth2om.sh"], "'npu-smi info' did not answer within 1 s", "HRNETSEG_PROBE_TIMEOUT")
    assert_user_error(results["eval_acc_perf.sh"], "--help' did not answer within 1 s")
    assert not (tmp_path / "om").exists() and not (tmp_path / "eval").exists()


# --- a killed script leaves no child writing -----------------------------------------------------------------

GUARDED_SCRIPT = """
source "{common}"
PYTHON="{python}"
lock_output "$1"
{run}
"""
CHILD = """sh -c 'echo "$$"; exec sleep 60'"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux: the kernel kills the children")
@pytest.mark.parametrize("run", ["step " + CHILD, 'guard {}\n"${{GUARDED[@]}}" | cat'.format(CHILD)])
def test_a_script_killed_with_sigkill_leaves_no_child_writing(tmp_path, run):
    """The next run takes over a killed script's locks; its step (the runner, ais_bench) must not go on writing
    into that run's outputs."""
    script = tmp_path / "writer.sh"
    script.write_text(GUARDED_SCRIPT.format(common=REPO / "scripts" / "common.sh", python=sys.executable, run=run))
    writer = subprocess.Popen(["bash", str(script), str(tmp_path / "results" / "bs1")], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    child = int(writer.stdout.readline())
    writer.kill()
    writer.wait()
    deadline = time.monotonic() + 5
    while not process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    if not process_gone(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the script's child {} outlived it".format(child))
