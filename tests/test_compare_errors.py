"""lw-compare ends a user's mistake as `lw` does: one line `lw-compare: error: ...`, exit status 2."""

import subprocess
import sys

import pytest

from lw.report.compare import main as compare_main

HEADER = "run,trainer,benchmark,id,cap,seed,required,produced,S_l\n"


def compare_error(capsys, *args) -> str:
    """The one line lw-compare ends with, checked to be the whole of stderr, with exit status 2."""
    with pytest.raises(SystemExit) as ended:
        compare_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert ended.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("lw-compare: error: ")
    return err.strip()


def write_run(sweep, name: str, text: str, filename: str = "results.csv"):
    path = sweep / name / filename
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_a_missing_sweep_directory_is_named(capsys, tmp_path):
    line = compare_error(capsys, tmp_path / "nope")
    assert line == (f"lw-compare: error: {tmp_path / 'nope'}: no such directory; give lw-compare a sweep's "
                    "directory (multirun/<time>)")


def test_a_sweep_without_results_is_named(capsys, tmp_path):
    assert compare_error(capsys, tmp_path) == f"lw-compare: error: no results.csv under {tmp_path}"


def test_a_results_file_that_does_not_parse_is_named(capsys, tmp_path):
    path = write_run(tmp_path, "a", 'run,benchmark\n"unclosed,1\n')
    line = compare_error(capsys, tmp_path)
    assert line.startswith(f"lw-compare: error: {path}: not a results.csv (")
    assert line.endswith("remove it from the sweep or rerun that run's evaluation")


def test_a_results_file_without_its_columns_names_them(capsys, tmp_path):
    path = write_run(tmp_path, "a", "run,benchmark,cap,seed\nr,toy_ruler,20,0\n")
    assert compare_error(capsys, tmp_path) == (f"lw-compare: error: {path}: a results.csv needs the column(s) "
                                               "required, produced, S_l; remove it from the sweep or rerun that "
                                               "run's evaluation")


def test_an_unknown_benchmark_names_the_ones_there(capsys, tmp_path):
    write_run(tmp_path, "a", HEADER + "a,sft,toy_ruler,0,20,0,10,9,0.9\n")
    write_run(tmp_path, "b", HEADER + "b,sft,ruler,0,20,0,10,11,0.9\n")
    assert compare_error(capsys, tmp_path, "--benchmark", "toy_rulr") == (
        f"lw-compare: error: no results.csv under {tmp_path} has benchmark toy_rulr (it has ruler, toy_ruler); "
        "pick one of those with --benchmark")


def test_a_metrics_file_that_does_not_parse_is_named(capsys, tmp_path):
    path = write_run(tmp_path, "a", '{"longbench_write/S_l": 80', "metrics.json")
    line = compare_error(capsys, tmp_path, "--benchmark", "longbench_write")
    assert line.startswith(f"lw-compare: error: {path}: not a metrics.json (")


def test_a_bad_argument_is_one_line_too(capsys, tmp_path):
    assert compare_error(capsys, tmp_path, "--benchmrk", "x") == (
        "lw-compare: error: unrecognized arguments: --benchmrk x; see lw-compare --help")


def test_a_good_sweep_still_compares(capsys, tmp_path):
    write_run(tmp_path, "a", HEADER + "a,sft,toy_ruler,0,20,0,10,9,0.9\na,sft,toy_ruler,1,20,0,40,21,0.5\n")
    compare_main([str(tmp_path)])
    assert capsys.readouterr().out.startswith("lw-compare: wrote ")
    assert (tmp_path / "comparison.md").is_file() and (tmp_path / "comparison.png").is_file()


@pytest.mark.slow
def test_the_installed_command_path_ends_in_one_line(tmp_path):
    """The module run as a program (what the lw-compare script calls), not only its main()."""
    result = subprocess.run([sys.executable, "-m", "lw.report.compare", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"lw-compare: error: {tmp_path / 'nope'}: no such directory; give lw-compare a "
                             "sweep's directory (multirun/<time>)\n")
