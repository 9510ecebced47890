"""A newcomer's first hour: threads chosen from the free cores, progress in log files,
a folder's files of one state, failed starts that leave nothing, extracted archives,
--help."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import omniglot_data
import omniglot_maml
import signals
import sinusoid_maml
import utils
from conftest import ROOT
from test_omniglot import SMALL, write_archive
from test_trust import SINE_QUICK


# ---- threads -------------------------------------------------------------------------
# The share of each core busy between two looks at /proc/stat: cores 0 and 1 are this
# process's, core 2 (always busy) another's; the load average says 6, as just after a
# heavy job ended, and is not read.
@pytest.mark.parametrize("busy, threads", [((0.0, 0.1), 2), ((0.7, 0.0), 1), ((1.0, 0.4), 1), ((1.0, 1.0), 1)])
def test_threads_zero_takes_the_cores_other_jobs_keep_busy_now(monkeypatch, busy, threads):
    looks = iter([{0: (50, 100), 1: (50, 100), 2: (0, 100)},
                  {0: (50 + 100 * busy[0], 200), 1: (50 + 100 * busy[1], 200), 2: (100, 200)}])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(utils, "cpu_times", lambda: next(looks))
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(utils.os, "getloadavg", lambda: (6.0, 0.0, 0.0))
    try:
        line = utils.use_threads(0)
        assert torch.get_num_threads() == threads
        assert line == f"{threads} thread(s) per process: 2 core(s), {sum(busy):.1f} busy with other jobs " \
                       f"(--threads N to choose)"
    finally:
        torch.set_num_threads(1)


def test_without_proc_stat_the_load_average_counts_the_busy_cores(monkeypatch):
    def missing():
        raise FileNotFoundError("/proc/stat")
    monkeypatch.setattr(utils, "cpu_times", missing)
    monkeypatch.setattr(utils.os, "getloadavg", lambda: (1.4, 0.0, 0.0))
    assert utils.busy_cores({0, 1}) == 1.4


def test_proc_stat_is_read_per_cpu_busy_against_all(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 10 100 5 0 0 0 0 0\n"
                    "cpu0 20 1 5 50 4 2 1 3 7 0\n"
                    "cpu1 10 0 5 50 1 0 0 0 0 0\n"
                    "intr 12345 0 0\nctxt 99\n")
    assert utils.cpu_times(str(stat)) == {0: (32, 86), 1: (15, 66)}


def test_omp_num_threads_or_a_thread_count_given_is_taken_as_it_is(monkeypatch):
    monkeypatch.setattr(utils.os, "getloadavg", lambda: (6.0, 0.0, 0.0))
    try:
        assert utils.use_threads(2) == "2 thread(s) per process (--threads)" and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert utils.use_threads(0) == "2 thread(s) per process (OMP_NUM_THREADS)"
    finally:
        torch.set_num_threads(1)


# ---- progress in a log file --------------------------------------------------------------
def test_output_that_is_not_a_terminal_gets_plain_progress_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(utils, "PLAIN_PROGRESS_SECONDS", 0)  # a line after every iteration
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = [line for line in err.splitlines() if line.startswith("maml meta-training: ")]
    assert [line.split(" after ")[0] for line in lines] == \
        [f"maml meta-training: {i}/10" for i in range(1, 11)] + ["maml meta-training: 10/10"]
    assert "; meta_loss " in lines[-1] and "it/s" in lines[-1]


# ---- one state per folder ---------------------------------------------------------------
def test_a_continuation_stopped_before_its_end_leaves_config_and_results_of_one_state(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(run_dir)])
    before = {name: (run_dir / name).read_text() for name in ("config.json", "results.json")}
    monkeypatch.setattr(signals, "stop_requested", lambda: 130)
    with pytest.raises(SystemExit):
        sinusoid_maml.main([*SINE_QUICK, "--meta-iterations", "20", "--resume", "--out-dir", str(run_dir)])
    assert {name: (run_dir / name).read_text() for name in before} == before
    assert json.loads(before["config.json"])["meta_iterations"] == 10
    monkeypatch.undo()
    sinusoid_maml.main([*SINE_QUICK, "--meta-iterations", "20", "--resume", "--out-dir", str(run_dir)])
    config, results = (json.loads((run_dir / name).read_text()) for name in ("config.json", "results.json"))
    assert config["meta_iterations"] == results["meta_iterations"] == 20


# ---- failed starts leave nothing, wherever the script is run from ----------------------
def test_a_start_without_data_leaves_no_folder_in_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(utils, "_exit_tasks", [])

    def offline(name, data_dir):
        raise omniglot_data.DataError(f"cannot download {name} (offline)")
    monkeypatch.setattr(omniglot_data, "download", offline)
    with pytest.raises(SystemExit) as stop:
        omniglot_maml.main([])
    assert stop.value.code == 2 and "cannot download images_background.zip" in capsys.readouterr().err
    utils.run_exit_tasks()  # as the process ends
    assert os.listdir(tmp_path) == []


def test_a_finished_run_leaves_no_lock_file(tmp_path):
    result = subprocess.run([sys.executable, "sinusoid_maml.py", *SINE_QUICK, "--out-dir", str(tmp_path / "run")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ".lock" not in os.listdir(tmp_path / "run") and "results.json" in os.listdir(tmp_path / "run")


# ---- extracted archives ----------------------------------------------------------------
def test_extracted_archives_are_read_as_the_zip_files(tmp_path, small_layout):
    zips, extracted = tmp_path / "zips", tmp_path / "extracted"
    for folder in (zips, extracted):
        folder.mkdir()
    for set_name, (alphabets, characters) in SMALL.items():
        write_archive(zips / f"{set_name}.zip", set_name, alphabets, characters)
        with zipfile.ZipFile(zips / f"{set_name}.zip") as archive:
            archive.extractall(extracted)
    from_zips, from_folders = omniglot_data.load_omniglot(str(zips)), omniglot_data.load_omniglot(str(extracted))
    assert np.array_equal(from_zips[0], from_folders[0]) and np.array_equal(from_zips[1], from_folders[1])
    os.remove(next((extracted / "images_evaluation" / "Alphabet_1" / "character02").glob("*_07.png")))
    with pytest.raises(omniglot_data.DataError, match="character Alphabet_1/character02 does not have drawers 01-20"):
        omniglot_data.load_omniglot(str(extracted))


def extracted_small_release(tmp_path):
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    for set_name, (alphabets, characters) in SMALL.items():
        write_archive(tmp_path / f"{set_name}.zip", set_name, alphabets, characters)
        with zipfile.ZipFile(tmp_path / f"{set_name}.zip") as archive:
            archive.extractall(extracted)
    return extracted


def test_a_png_replaced_by_an_older_one_makes_the_cache_stale(tmp_path, small_layout):
    extracted = extracted_small_release(tmp_path)
    images, _ = omniglot_data.load_omniglot(str(extracted))
    folder = extracted / "images_background" / "Alphabet_0" / "character01"
    first, second = sorted(folder.glob("*.png"))[:2]
    newest = max(os.stat(p).st_mtime_ns for p in extracted.rglob("*.png"))
    stamp = omniglot_data._archive_stamp(str(extracted / "images_background"))
    os.utime(first, ns=(newest - 10**9, newest - 10**9))  # only its time, older than the newest file's
    assert omniglot_data._archive_stamp(str(extracted / "images_background")) != stamp
    first.write_bytes(second.read_bytes())  # another drawing in its place, its time older than the newest
    os.utime(first, ns=(newest - 10**9, newest - 10**9))
    again, _ = omniglot_data.load_omniglot(str(extracted))
    assert np.array_equal(again[0, 0], again[0, 1]) and not np.array_equal(images[0, 0], again[0, 0])


def test_a_dangling_link_in_an_extracted_folder_is_one_line(tmp_path, small_layout, capsys):
    extracted = extracted_small_release(tmp_path)
    png = next((extracted / "images_background" / "Alphabet_1" / "character02").glob("*_07.png"))
    png.unlink()
    png.symlink_to(tmp_path / "gone.png")
    with pytest.raises(SystemExit) as exit_info:
        omniglot_maml.main(["--data-dir", str(extracted), "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err == f"error: {extracted / 'images_background'}: cannot read Alphabet_1/character02/{png.name} " \
                  f"(No such file or directory)\n"


def test_two_runs_building_one_cache_at_once_each_write_their_own_temporary_file(tmp_path, small_layout, monkeypatch,
                                                                                  capsys):
    """While this process writes the cache, another (here the same code under another process
    id) builds and renames it: neither disturbs the other's temporary file."""
    extracted = extracted_small_release(tmp_path)
    savez, pid, nested = np.savez, os.getpid(), []

    def savez_while_another_writes(f, **arrays):
        savez(f, **arrays)
        if not nested:
            nested.append(1)
            monkeypatch.setattr(os, "getpid", lambda: pid + 1)
            omniglot_data.load_omniglot(str(extracted))
            monkeypatch.setattr(os, "getpid", lambda: pid)
    monkeypatch.setattr(omniglot_data.np, "savez", savez_while_another_writes)
    images, _ = omniglot_data.load_omniglot(str(extracted))
    assert "warning" not in capsys.readouterr().err
    assert sorted(p.name for p in extracted.iterdir()) == sorted(["images_background", "images_evaluation",
                                                                  omniglot_data.CACHE_NAME])
    monkeypatch.setattr(omniglot_data.np, "savez", lambda *a, **k: pytest.fail("the cache was not used"))
    assert np.array_equal(omniglot_data.load_omniglot(str(extracted))[0], images)


@pytest.fixture
def small_layout(monkeypatch):
    monkeypatch.setattr(omniglot_data, "EXPECTED_LAYOUT", {s: (a, a * c) for s, (a, c) in SMALL.items()})
    monkeypatch.setattr(omniglot_data, "BACKGROUND_VALIDATION_ALPHABETS", 1)


# ---- --help ----------------------------------------------------------------------------
@pytest.mark.parametrize("columns", [80, 90, 100])  # at 90, argparse's wrapping used to cut --test-tasks
def test_help_never_breaks_a_flag_across_lines(columns):
    result = subprocess.run([sys.executable, "omniglot_maml.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": str(columns)})
    assert result.returncode == 0
    words = result.stdout.split()
    assert "--test-tasks" in words
    assert not [w for w in words if len(w) > 1 and w.endswith("-") and w.startswith("-")]  # a flag cut at a dash


HELP_AS_A_COMMAND = """
import contextlib, io, runpy, sys
sys.argv = [{script!r}, "--help"]
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    runpy.run_path({script!r}, run_name="__main__")
print("torch imported" if "torch" in sys.modules else "torch not imported")
print(out.getvalue(), end="")
"""


@pytest.mark.parametrize("script", [omniglot_maml, sinusoid_maml])
def test_help_is_answered_before_torch_is_imported_and_says_what_main_says(script, capsys):
    name = os.path.basename(script.__file__)
    result = subprocess.run([sys.executable, "-c", HELP_AS_A_COMMAND.format(script=name)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    first, help_text = result.stdout.split("\n", 1)
    assert first == "torch not imported", result.stderr
    with pytest.raises(SystemExit):
        script.main(["--help"])

    def past_usage(text):  # the usage line names the program, which differs in-process
        return " ".join(text.split("\n\n", 1)[1].split())
    assert past_usage(help_text) == past_usage(capsys.readouterr().out)  # the text the script's own parser gives
