"""Runs a user can trust (issue 9): reruns, locks, damaged files and places."""
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile

import matplotlib.figure
import pytest
import torch

import meta_learning
import omniglot_data
import omniglot_maml
import sinusoid_maml
import files
import lifecycle
import reports
import signals
from conftest import load_file, metrics_rows
from test_omniglot import QUICK, SMALL, write_archive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINE_QUICK = ["--meta-iterations", "10", "--checkpoint-every", "5", "--eval-tasks", "10", "--eval-k-shots", "5",
              "--eval-steps", "2"]


def one_line_exit(capsys, call, code=2):
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    return errors[0]


# ---- numbers -------------------------------------------------------------------
@pytest.mark.parametrize("flag, value", [("--meta-lr", "nan"), ("--inner-lr", "inf"), ("--reptile-meta-step", "NaN")])
def test_non_finite_numbers_are_refused(tmp_path, capsys, flag, value):
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([flag, value, "--out-dir", str(tmp_path / "run")]))
    assert f"expected a finite number, got '{value}'" in err


def test_non_finite_train_minutes_is_refused(tmp_path, capsys):
    err = one_line_exit(capsys, lambda: omniglot_maml.main(["--train-minutes", "nan", "--out-dir", str(tmp_path)]))
    assert "--train-minutes" in err and "finite" in err


# ---- checkpoints ---------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_one_line(tmp_path, capsys, damage):
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path)])
    checkpoint = tmp_path / "checkpoint.pt"
    content = checkpoint.read_bytes()
    checkpoint.write_bytes({"truncated": content[:len(content) // 2], "empty": b"", "garbage": b"x" * 100}[damage])
    capsys.readouterr()
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--resume", "--out-dir", str(tmp_path)]))
    assert "checkpoint.pt is damaged" in err


def test_checkpoint_of_another_experiment_is_one_line(tmp_path, capsys):
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path)])
    capsys.readouterr()
    err = one_line_exit(capsys, lambda: omniglot_maml.main(["--resume", "--out-dir", str(tmp_path)]))
    assert "belongs to another experiment, not omniglot" in err


class FullDisk:
    """A file whose writes fail as on a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("full_at", ["config.json.tmp", "checkpoint.pt.tmp", "metrics.csv", "results.json.tmp",
                                     "mse_vs_steps.png.tmp"])
def test_a_full_disk_at_any_write_is_one_line_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch, full_at):
    real_open, writes = open, {"n": 0}

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith(full_at) and mode[0] in "wa":
            writes["n"] += 1
            if full_at != "checkpoint.pt.tmp" or writes["n"] > 1:  # the first checkpoint is written
                return FullDisk(f)
        return f
    monkeypatch.setattr("builtins.open", open_on_a_full_disk)
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path)]), code=1)
    assert f"cannot write {tmp_path / full_at.removesuffix('.tmp')} (No space left on device)" in err
    assert not list(tmp_path.glob("*.tmp"))
    if full_at == "checkpoint.pt.tmp":
        assert load_file(tmp_path / "checkpoint.pt")["iteration"] == 5


@pytest.mark.parametrize("damage", ["flipped", "missing_key"])
def test_a_checkpoint_altered_inside_or_lacking_a_key_is_one_line(tmp_path, capsys, damage):
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path)])
    path = tmp_path / "checkpoint.pt"
    checkpoint = load_file(path)
    if damage == "flipped":  # eight bytes of one Adam moment changed, the file otherwise whole
        checkpoint["meta_optimizer"]["state"][0]["exp_avg"].view(-1)[:2] += 1.0
        torch.save(checkpoint, path)
        expected = "its contents do not match their checksum"
    else:
        del checkpoint["meta_params"], checkpoint["checksum"]
        torch.save(checkpoint, path)
        expected = "it lacks meta_params"
    capsys.readouterr()
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--resume", "--out-dir", str(tmp_path)]))
    assert f"{path} is damaged ({expected})" in err


def test_bytes_flipped_in_the_middle_of_a_checkpoint_file_are_one_line(tmp_path, capsys):
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path)])
    path = tmp_path / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))
    capsys.readouterr()
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--resume", "--out-dir", str(tmp_path)]))
    assert f"{path} is damaged" in err


# ---- run folders ----------------------------------------------------------------
def test_a_second_run_in_a_busy_folder_is_refused_and_a_killed_run_leaves_no_lock(tmp_path, capsys):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "sinusoid_maml.py", "--meta-iterations", "1000000",
                              "--checkpoint-every", "5", "--out-dir", str(run_dir)],
                             cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        for args in ([], ["--resume"]):
            err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, *args, "--out-dir", str(run_dir)]))
            assert "another run is using" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed run's lock went with its process: the folder can be resumed.
    checkpoint = load_file(run_dir / "checkpoint.pt")
    checkpoint["config"].update(meta_iterations=checkpoint["iteration"] + 5, eval_tasks=10, eval_k_shots="5")
    checkpoint["checksum"] = files.checksum(checkpoint)  # a short end, so that the test is quick
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    results = sinusoid_maml.main(["--resume", "--out-dir", str(run_dir)])
    assert results["meta_iterations"] == checkpoint["iteration"] + 5


def test_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    real_open = open

    def read_only_open(path, mode="r", *a, **kw):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", read_only_open)
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path / "run")]))
    assert f"cannot write in the output folder {tmp_path / 'run'}: Permission denied" in err


# ---- Omniglot reruns -----------------------------------------------------------
@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot_data, "EXPECTED_LAYOUT", {s: (a, a * c) for s, (a, c) in SMALL.items()})
    monkeypatch.setattr(omniglot_data, "BACKGROUND_VALIDATION_ALPHABETS", 1)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for set_name, (alphabets, characters) in SMALL.items():
        write_archive(data_dir / f"{set_name}.zip", set_name, alphabets, characters)
    return data_dir


def test_a_finished_budget_run_resumed_only_tests_again(synthetic, tmp_path, capsys):
    args = [*QUICK, "--n-way", "2", "--data-dir", str(synthetic), "--out-dir", str(tmp_path / "run"),
            "--meta-iterations", "1000", "--train-minutes", "0.0001"]
    first = omniglot_maml.main(args)
    for _ in range(2):
        again = omniglot_maml.main([*args, "--resume"])
        assert again["test"]["meta_iterations"] == first["test"]["meta_iterations"] == 1
        assert again["test"]["accuracy"] == first["test"]["accuracy"]
    assert "the run's budget is spent; testing it again" in capsys.readouterr().out


def test_best_pt_is_rewritten_on_resume(synthetic, tmp_path):
    args = [*QUICK, "--n-way", "2", "--data-dir", str(synthetic), "--out-dir", str(tmp_path / "run")]
    omniglot_maml.main(args)
    best = load_file(tmp_path / "run" / "best.pt")
    torch.save(dict(best, iteration=-1), tmp_path / "run" / "best.pt")  # as if killed before best.pt was written
    omniglot_maml.main([*args, "--resume"])
    assert load_file(tmp_path / "run" / "best.pt")["iteration"] == best["iteration"]


# ---- damaged data -----------------------------------------------------------------
def _patch_central_directory(path, member, offset, value):
    """Overwrite one byte of `member`'s central-directory record (8: flags, 10: compression method)."""
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start + 1)) != -1:
        name_length = int.from_bytes(data[start + 28:start + 30], "little")
        if data[start + 46:start + 46 + name_length].decode() == member:
            data[start + offset] = value
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"{member} not found")


def _damage(path, member, kind):
    if kind == "crc":
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(member)
        data = bytearray(path.read_bytes())
        data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        data[data_start + info.compress_size // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "deflate":  # the member deflated, its stream corrupt: a zlib error, not a bad CRC
        with zipfile.ZipFile(path) as archive:
            entries = {info.filename: archive.read(info) for info in archive.infolist()}
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in entries.items():
                archive.writestr(name, content, zipfile.ZIP_DEFLATED if name == member else zipfile.ZIP_STORED)
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(member)
        data = bytearray(path.read_bytes())
        data[info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)] = 0xFF  # a reserved block type
        path.write_bytes(bytes(data))
    elif kind == "compression":
        _patch_central_directory(path, member, 10, 97)  # a method number zipfile does not know
    else:  # encrypted
        _patch_central_directory(path, member, 8, 0x01)


@pytest.mark.parametrize("kind", ["crc", "deflate", "compression", "encrypted"])
def test_damaged_archive_member_is_named_in_one_line(synthetic, tmp_path, capsys, kind):
    member = "images_background/Alphabet_1/character02/0005_07.png"
    _damage(synthetic / "images_background.zip", member, kind)
    err = one_line_exit(capsys, lambda: omniglot_maml.main(
        ["--data-dir", str(synthetic), "--out-dir", str(tmp_path / "run")]))
    assert str(synthetic / "images_background.zip") in err and member in err


def test_small_release_archive_says_the_full_one_is_needed(synthetic, tmp_path, capsys):
    with zipfile.ZipFile(synthetic / "images_background.zip", "w") as archive:
        archive.writestr("images_background_small1/Alphabet_0/character01/0001_01.png", b"")
    err = one_line_exit(capsys, lambda: omniglot_maml.main(
        ["--data-dir", str(synthetic), "--out-dir", str(tmp_path / "run")]))
    assert "holds images_background_small1/, not images_background/" in err
    assert "full release archive images_background.zip is needed" in err


def test_data_folder_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    err = one_line_exit(capsys, lambda: omniglot_maml.main(["--data-dir", str(a_file), "--out-dir", str(tmp_path / "r")]))
    assert f"the data folder {a_file} is a file" in err

    def read_only(path, *a, **kw):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "makedirs", read_only)
    with pytest.raises(omniglot_data.DataError, match="cannot create the data folder .*new .Read-only file system"):
        omniglot_data.load_omniglot(str(tmp_path / "new"))


# ---- interruptions ------------------------------------------------------------------
SINE_LONG = ["--meta-iterations", "600", "--checkpoint-every", "250", "--log-every", "100", "--eval-tasks", "10",
             "--eval-k-shots", "5", "--eval-steps", "2"]


@pytest.fixture(scope="module")
def straight_sine(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    sinusoid_maml.main([*SINE_LONG, "--out-dir", str(run_dir)])
    return run_dir


# The run sends itself the signal as it records iteration 400, so that the iteration it
# stops at does not depend on how fast the machine is (a test that waits for a file and
# then signals races the run: on a loaded machine the signal can land right after a
# regular checkpoint, or far later).
SIGNAL_ITSELF = """
import os, sys
sys.path.insert(0, {root!r})
import lifecycle, signals, sinusoid_maml
record = lifecycle.Run.record
def record_and_signal(self, **values):
    if self.done == 400:
        os.kill(os.getpid(), {signum})
    return record(self, **values)
lifecycle.Run.record = record_and_signal
signals.run_main(sinusoid_maml.main, {args!r})
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_iteration_with_a_checkpoint_and_resumes_to_the_same_run(
        tmp_path, straight_sine, signum, code):
    run_dir = tmp_path / "run"
    args = [*SINE_LONG, "--out-dir", str(run_dir)]
    run = subprocess.run([sys.executable, "-c", SIGNAL_ITSELF.format(root=ROOT, signum=int(signum), args=args)],
                         cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, timeout=300)
    assert run.returncode == code and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert load_file(run_dir / "checkpoint.pt")["iteration"] == 400  # not a regular checkpoint (every 250)
    command = f"python sinusoid_maml.py {' '.join(SINE_LONG)} --out-dir {run_dir} --resume"
    assert f"stopped at iteration 400, checkpoint saved; continue with: {command}" in run.stderr
    sinusoid_maml.main(command.split()[2:])
    for key in ("meta_params", "baseline_params"):
        for a, b in zip(load_file(run_dir / "checkpoint.pt")[key], load_file(straight_sine / "checkpoint.pt")[key]):
            assert torch.equal(a, b)
    # Metrics rows too, though rows (every 100) and checkpoints (every 250) do not line up.
    assert metrics_rows(run_dir / "metrics.csv") == metrics_rows(straight_sine / "metrics.csv")


# The run sends itself SIGTERM as its final test begins; "at once" is then that no other
# test task set is started after it (not a time, which a loaded machine stretches).
SIGNAL_IN_THE_FINAL_TEST = """
import os, signal, sys
sys.path.insert(0, {root!r})
import meta_learning, signals, sinusoid_maml
evaluate = meta_learning.evaluate_adaptation
def signal_then_evaluate(*args, **kwargs):
    print("a test begins", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(*args, **kwargs)
meta_learning.evaluate_adaptation = signal_then_evaluate
signals.run_main(sinusoid_maml.main, {args!r})
"""


def test_a_signal_during_the_final_test_stops_at_once_and_the_resume_tests_again(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--meta-iterations", "20", "--checkpoint-every", "20", "--eval-k-shots", "5,10,20,40,80",
            "--eval-steps", "60", "--eval-tasks", "20", "--out-dir", str(run_dir)]
    run = subprocess.run([sys.executable, "-c", SIGNAL_IN_THE_FINAL_TEST.format(root=ROOT, args=args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 143 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stdout.count("a test begins") == 1  # of the 10 (2 methods x 5 K): it stopped in the first
    command = f"python sinusoid_maml.py {' '.join(args)} --resume"
    assert f"stopped during the final test; the run's training is complete and checkpointed; test it again " \
           f"with: {command}" in run.stderr
    assert not (run_dir / "results.json").exists()
    results = sinusoid_maml.main(command.split()[2:])
    assert results["meta_iterations"] == 20 and (run_dir / "results.json").exists()


def test_omniglot_stop_request_writes_every_file_of_the_uninterrupted_run(synthetic, tmp_path, monkeypatch, capsys):
    args = [*QUICK, "--meta-iterations", "7", "--validate-every", "4", "--log-every", "3", "--n-way", "2",
            "--data-dir", str(synthetic)]
    straight = omniglot_maml.main([*args, "--out-dir", str(tmp_path / "straight")])
    requests = {"n": 0}

    def stop_at_iteration_5():
        requests["n"] += 1
        return 143 if requests["n"] == 6 else 0  # asked at the top of the 6th iteration: 5 are done

    stop_requested = signals.stop_requested
    monkeypatch.setattr(signals, "stop_requested", stop_at_iteration_5)
    with pytest.raises(SystemExit) as exit_info:
        omniglot_maml.main([*args, "--out-dir", str(tmp_path / "stopped")])
    assert exit_info.value.code == 143
    assert "stopped at iteration 5, checkpoint saved; continue with: python omniglot_maml.py" in capsys.readouterr().err
    monkeypatch.setattr(signals, "stop_requested", stop_requested)
    resumed = omniglot_maml.main(["--resume", "--out-dir", str(tmp_path / "stopped"), "--data-dir", str(synthetic)])
    assert {**resumed["test"], "train_seconds": 0} == {**straight["test"], "train_seconds": 0}
    for name in ("checkpoint.pt", "best.pt"):
        for a, b in zip(load_file(tmp_path / "stopped" / name)["params"], load_file(tmp_path / "straight" / name)["params"]):
            assert torch.equal(a, b)
    assert metrics_rows(tmp_path / "stopped" / "metrics.csv") == metrics_rows(tmp_path / "straight" / "metrics.csv")


# ---- divergence -------------------------------------------------------------------
def test_summary_counts_diverged_tasks_and_averages_the_others():
    per_task = torch.tensor([[1.0, 2.0], [3.0, float("inf")], [5.0, float("nan")], [7.0, 4.0]])
    summary = reports.summarize(per_task)
    assert summary["diverged"] == [0, 2]
    assert summary["mean"] == pytest.approx([4.0, 3.0])
    assert summary["ci95"][1] == pytest.approx(1.96 * 2 ** 0.5 / 2 ** 0.5)  # std of (2, 4) over sqrt(2)
    assert summary["median"] == [3.0, 4.0]


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{constant} is not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_diverged_test_tasks_are_counted_reported_and_plotted(tmp_path, monkeypatch, capsys):
    evaluate = meta_learning.evaluate_predictions  # every evaluation goes through it

    def diverging_on_some_tasks(*args, **kwargs):
        per_task = evaluate(*args, **kwargs)
        if per_task.shape == (10, 6):  # the test tasks (not the fits plot's predictions)
            per_task[:3, 2:] = float("inf")
            per_task[3, 1:] = float("nan")
        return per_task

    monkeypatch.setattr(meta_learning, "evaluate_predictions", diverging_on_some_tasks)
    sinusoid_maml.main([*SINE_QUICK, "--eval-steps", "5", "--out-dir", str(tmp_path)])
    mse = strict_json(tmp_path / "results.json")["mse"]
    assert mse["maml"]["5"]["diverged"] == [0, 1, 4, 4, 4, 4]
    assert all(m is not None and math.isfinite(m) for m in mse["maml"]["5"]["mean"])
    out = capsys.readouterr().out
    assert "maml, K = 5: diverged on 4 of 10 tasks after 2 steps" in out
    rows = [line for line in out.splitlines() if line.startswith(("maml ", "pretrained "))]
    assert len(rows) == 2 and len(rows[0].rstrip()) == len(rows[1].rstrip())  # the table stays aligned
    for plot in ("training_curve.png", "mse_vs_steps.png", "fits.png"):
        assert (tmp_path / plot).stat().st_size > 0


def test_all_tasks_diverged_still_gives_strict_json_and_plots(tmp_path, monkeypatch):
    evaluate = meta_learning.evaluate_predictions

    def all_diverged(*args, **kwargs):
        per_task = evaluate(*args, **kwargs)
        return torch.full_like(per_task, float("nan")) if per_task.shape == (10, 3) else per_task

    monkeypatch.setattr(meta_learning, "evaluate_predictions", all_diverged)
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path)])
    assert strict_json(tmp_path / "results.json")["mse"]["pretrained"]["5"]["mean"] == [None, None, None]
    assert (tmp_path / "mse_vs_steps.png").stat().st_size > 0


def test_diverging_training_stops_in_one_line_naming_the_iteration(tmp_path, capsys):
    err = one_line_exit(capsys, lambda: sinusoid_maml.main(
        ["--meta-lr", "1e30", "--meta-iterations", "50", "--checkpoint-every", "1", "--out-dir", str(tmp_path)]),
        code=1)
    iteration = int(err.split("training diverged: meta loss is not finite at iteration ")[1].split(";")[0])
    assert load_file(tmp_path / "checkpoint.pt")["iteration"] == iteration - 1  # the last good one is kept
    assert f"its last checkpoint (iteration {iteration - 1}) is kept" in err


def test_diverging_omniglot_training_stops_in_one_line(synthetic, tmp_path, capsys):
    err = one_line_exit(capsys, lambda: omniglot_maml.main(
        [*QUICK, "--n-way", "2", "--inner-lr", "1e30", "--data-dir", str(synthetic), "--out-dir", str(tmp_path)]),
        code=1)
    assert "training diverged: train loss is not finite at iteration 1" in err
    assert "no checkpoint had been written yet" in err and "iteration 0" not in err


def test_a_validation_that_diverged_on_every_task_stops_the_run_in_one_line(synthetic, tmp_path, capsys,
                                                                             monkeypatch):
    evaluate = meta_learning.evaluate_predictions

    def every_validation_task_diverged(predict, metric_fn, support, query, chunk_size=None, progress=None):
        per_task = evaluate(predict, metric_fn, support, query, chunk_size, progress)
        return torch.full_like(per_task, float("nan")) if "validation" in (progress or "") else per_task
    monkeypatch.setattr(meta_learning, "evaluate_predictions", every_validation_task_diverged)
    err = one_line_exit(capsys, lambda: omniglot_maml.main(
        [*QUICK, "--n-way", "2", "--data-dir", str(synthetic), "--out-dir", str(tmp_path)]), code=1)
    assert "training diverged: the adaptation diverged on every validation task at iteration 2; stopped, " \
           "no checkpoint had been written yet" in err


# ---- configuration --------------------------------------------------------------
def test_a_value_edited_at_the_top_of_the_script_is_refused_on_resume(tmp_path, capsys, monkeypatch):
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path)])
    monkeypatch.setitem(sinusoid_maml.CONFIG, "inner_lr", 0.5)
    capsys.readouterr()
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--resume", "--out-dir", str(tmp_path)]))
    assert "inner_lr = 0.5 at the top of the script differs from 0.01, its value when the run started" in err
    monkeypatch.setitem(sinusoid_maml.CONFIG, "inner_lr", 0.01)
    sinusoid_maml.main([*SINE_QUICK, "--resume", "--out-dir", str(tmp_path)])  # put back: accepted


def test_default_folders_tell_runs_with_other_settings_apart(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quick = sinusoid_maml.main([*SINE_QUICK])
    folder = "results/sinusoid/maml-k10-seed0-checkpoint_every=5-eval_k_shots=5-eval_steps=2-eval_tasks=10"
    assert os.path.isdir(folder)
    out = capsys.readouterr().out
    assert "run folder: results/sinusoid/maml-k10-seed0-checkpoint_every=5" in out
    with open(f"{folder}/config.json") as f:
        assert json.load(f)["out_dir"] == folder
    # A budget is not in the name: more iterations continue the run in its folder, named truly.
    longer = sinusoid_maml.main([*SINE_QUICK, "--meta-iterations", "15", "--resume"])
    assert longer["meta_iterations"] == 15 and quick["meta_iterations"] == 10
    assert os.listdir("results/sinusoid") == [os.path.basename(folder)]
    # Another setting is another run, in another folder; a resume that finds no run leaves nothing behind.
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--inner-lr", "0.02", "--resume"]))
    assert "no checkpoint at" in err and os.listdir("results/sinusoid") == [os.path.basename(folder)]


@pytest.mark.parametrize("script", [sinusoid_maml, omniglot_maml])
def test_help_shows_each_flag_with_its_comment_and_default(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("--algorithm STR maml (second order) | fomaml (first order) | anil (MAML, only the final layer adapts) | "
            "reptile | metasgd (MAML with learned inner step sizes) |") in out
    assert "--resume [BOOL] continue the run in out_dir from its checkpoint (default: False)" in out
    if script is omniglot_maml:
        assert "taken as inner_lr x N on the mean cross-entropy" in out
        assert ("--meta-iterations INT meta-updates; a run may be continued to more (not Reptile's: annealed over "
                "them) (default: the paper's: maml 5-way 60,000, 20-way 60,000; reptile 5-way 100,000, "
                "20-way 200,000; metasgd 5-way 60,000, 20-way 60,000; protonet 5-way 20,000, 20-way 20,000; "
                "cnp 5-way 60,000, 20-way 60,000)") in out
        assert ("Meta-training (None: the paper's value for the N-way and the algorithm, PAPER_DEFAULTS below; "
                "fomaml and anil take maml's): --meta-lr") in out
        assert "protonet (distances to class prototypes) | cnp (a network reads the support set) (default: 'maml')" \
            in out
    else:  # a section's comment heads its flags, glued to none of them
        assert ("Reptile: inner steps on all 2K points, then theta += eps * (phi - theta); tested as it trains: "
                "--reptile-inner-optimizer STR adam (beta1 = 0, as the Reptile paper) | sgd (default: 'adam')") in out


def test_omniglot_says_what_it_does_while_it_prepares_validates_and_tests(synthetic, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress bars, as on a terminal
    omniglot_maml.main([*QUICK, "--n-way", "2", "--data-dir", str(synthetic), "--out-dir", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert "preprocessing the Omniglot images into" in captured.out
    assert "validation on 8 tasks" in captured.err and "test on 8 tasks" in captured.err
    omniglot_maml.main(["--eval-only", "--data-dir", str(synthetic), "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "test on 8 tasks" in err and "2-way 1-shot:" not in err  # no empty training bar


def test_plots_say_what_they_show(synthetic, tmp_path, monkeypatch):
    figures = {}

    def keep(fig, file, *args, **kwargs):  # the figure as it would be written to file (file.tmp, then renamed)
        figures[os.path.basename(file.name).removesuffix(".tmp")] = fig

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path / "sine")])
    fits = figures["fits.png"].axes[0]
    assert (fits.get_xlabel(), fits.get_ylabel()) == ("x", "y")
    assert "95% CI over 10 tasks" in figures["mse_vs_steps.png"].axes[0].get_title()
    omniglot_maml.main([*QUICK, "--n-way", "2", "--data-dir", str(synthetic), "--out-dir", str(tmp_path / "omni")])
    test_axes = figures["test_accuracy.png"].axes[0]
    assert test_axes.get_ylabel() == "query accuracy (%)"
    assert max(line.get_ydata().max() for line in test_axes.get_lines()[:1]) > 1  # percent, not a fraction
    assert "95% CI over 8 test tasks" in test_axes.get_legend().get_texts()[0].get_text()
    labels = [t.get_text() for t in figures["training_curves.png"].axes[1].get_legend().get_texts()]
    assert labels == ["meta-training tasks, after 1 step(s)", "validation tasks, after 3 steps"]


def test_eval_only_before_any_validation_is_one_line(synthetic, tmp_path, monkeypatch, capsys):
    args = [*QUICK, "--n-way", "2", "--data-dir", str(synthetic), "--out-dir", str(tmp_path)]
    stop_requested = signals.stop_requested
    monkeypatch.setattr(signals, "stop_requested", lambda: 130)  # stopped before iteration 1
    with pytest.raises(SystemExit):
        omniglot_maml.main(args)
    monkeypatch.setattr(signals, "stop_requested", stop_requested)
    capsys.readouterr()
    err = one_line_exit(capsys, lambda: omniglot_maml.main([*args, "--eval-only"]))
    assert "has no validated parameters yet: continue it with --resume first" in err


# ---- what a user reads ----------------------------------------------------------
@pytest.mark.parametrize("values, log", [([0.7, 1.0, 1.3], False), ([0.01, 1.0, 3.0], True),
                                         ([float("nan"), 1e-3, 1e4], True), ([float("inf"), -1.0, 5.0], False)])
def test_a_log_axis_only_for_a_wide_range_and_with_plain_tick_labels(values, log):
    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], values)
    reports.log_scale_if_possible(ax)
    assert ax.get_yscale() == ("log" if log else "linear")
    if log:
        fig.canvas.draw()
        labels = [label.get_text() for label in ax.get_yticklabels() if label.get_text()]
        assert labels and all("times" not in text and "^" not in text for text in labels)


def test_the_expected_duration_is_said_once_after_the_first_iterations(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr(lifecycle.time, "perf_counter", lambda: clock[0])
    forecast = lifecycle.DurationForecast(start=50, total=1050, rank=0, after=20)
    for done in range(51, 100):
        clock[0] += 0.5
        forecast.update(done)
    out = capsys.readouterr().out
    assert out.count("expected:") == 1
    assert "expected: ~8 min for the 980 iterations left (0.5 s per iteration over the first 20" in out
    budget = lifecycle.DurationForecast(start=50, total=1050, rank=0, after=20, budget_left=lambda: 180.0)
    for done in range(51, 71):
        clock[0] += 0.5
        budget.update(done)
    assert "expected: ~3 min, when --train-minutes stops the run after about 360 of the 980 iterations left " \
           "(0.5 s per iteration over the first 20" in capsys.readouterr().out


# ---- checkpoints validated by content -----------------------------------------------
def damaged_checkpoint(tmp_path, damage):
    """A finished sinusoid run whose checkpoint is changed as other code might write it,
    its checksum recomputed so that only the content checks can find it."""
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path)])
    path = tmp_path / "checkpoint.pt"
    checkpoint = load_file(path)
    params = checkpoint["meta_params"]
    if damage == "wrong_shape":
        params[0] = torch.zeros(3, 1)
    elif damage == "two_of_six":
        checkpoint["meta_params"] = params[:2]
    elif damage == "float16":
        checkpoint["meta_params"] = [p.half() for p in params]
    elif damage == "optimizer_moment":
        checkpoint["meta_optimizer"]["state"][1]["exp_avg"] = torch.zeros(7)
    checkpoint["checksum"] = files.checksum(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("damage, expected", [
    ("wrong_shape", "its meta_params: tensor 0 is torch.float32 (3, 1) where the run's is torch.float32 (40, 1)"),
    ("two_of_six", "its meta_params: 2 tensors where the run has 6"),
    ("float16", "its meta_params: tensor 0 is torch.float16 (40, 1) where the run's is torch.float32 (40, 1)"),
    ("optimizer_moment", "its meta_optimizer: its exp_avg of parameter 1 is (7,), not (40,)"),
])
def test_a_checkpoint_whose_tensors_do_not_fit_the_run_is_one_line(tmp_path, capsys, damage, expected):
    path = damaged_checkpoint(tmp_path, damage)
    capsys.readouterr()
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--resume", "--out-dir", str(tmp_path)]))
    assert err == f"error: {path} does not fit this run: {expected}; resume from a copy or start a new run"


def test_a_checkpoint_without_its_metric_windows_is_one_line(tmp_path, capsys):
    """A checkpoint taken between rows holds the values of the iterations since the last row,
    which the next row averages; one without them is refused, not used with empty windows
    (a row of fewer iterations than log_every)."""
    sinusoid_maml.main([*SINE_QUICK, "--log-every", "4", "--out-dir", str(tmp_path)])
    path = tmp_path / "checkpoint.pt"
    checkpoint = load_file(path)
    del checkpoint["windows"]
    checkpoint["checksum"] = files.checksum(checkpoint)
    torch.save(checkpoint, path)
    capsys.readouterr()
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--resume", "--meta-iterations", "12",
                                                            "--out-dir", str(tmp_path)]))
    assert err == f"error: {path} is damaged (it lacks windows); resume from a copy or start a new run"


def test_a_checkpoint_without_a_checksum_is_checked_for_fit_and_used_with_a_warning(tmp_path, capsys):
    sinusoid_maml.main([*SINE_QUICK, "--out-dir", str(tmp_path)])
    path = tmp_path / "checkpoint.pt"
    checkpoint = load_file(path)
    del checkpoint["checksum"]
    torch.save(checkpoint, path)
    capsys.readouterr()
    results = sinusoid_maml.main([*SINE_QUICK, "--resume", "--meta-iterations", "12", "--out-dir", str(tmp_path)])
    assert results["meta_iterations"] == 12
    assert f"warning: {path} has no checksum, so damage to its contents cannot be detected" in capsys.readouterr().err
    checkpoint = load_file(path)
    checkpoint["meta_params"] = checkpoint["meta_params"][:2]
    del checkpoint["checksum"]
    torch.save(checkpoint, path)
    err = one_line_exit(capsys, lambda: sinusoid_maml.main([*SINE_QUICK, "--resume", "--out-dir", str(tmp_path)]))
    assert "does not fit this run: its meta_params: 2 tensors where the run has 6" in err


# ---- metrics.csv: damaged lines -------------------------------------------------------
def test_a_garbage_line_and_a_cut_last_row_of_metrics_csv_are_dropped_on_resume(tmp_path, capsys):
    args = [*SINE_QUICK, "--log-every", "1"]
    sinusoid_maml.main([*args, "--out-dir", str(tmp_path / "straight")])
    run_dir = tmp_path / "run"
    sinusoid_maml.main([*args, "--meta-iterations", "5", "--out-dir", str(run_dir)])
    lines = (run_dir / "metrics.csv").read_text().splitlines(keepends=True)
    (run_dir / "metrics.csv").write_text("".join(lines[:3] + ["garbage, not a row\n"] + lines[3:]) + "4")
    capsys.readouterr()
    sinusoid_maml.main([*args, "--resume", "--out-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert "line 4 is not a whole row of numbers ('garbage, not a row'); dropped" in err
    assert "its last line was cut short ('4'); dropped" in err and "Traceback" not in err
    assert metrics_rows(run_dir / "metrics.csv") == metrics_rows(tmp_path / "straight" / "metrics.csv")


# ---- signals ----------------------------------------------------------------------------
def test_a_signal_while_a_stop_is_under_way_ends_the_process_without_raising(monkeypatch):
    class Ended(Exception):
        """os._exit, which ends the process at once: no exception that Python code could see."""

    def end_at_once(code):
        raise Ended(code)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(signals.os, "_exit", end_at_once)
    for state in ("_stop_signal", "_stop_at_once", "_exiting"):
        monkeypatch.setattr(signals, state, [])
    try:
        signals.stop_on_signals()
        handler = signal.getsignal(signal.SIGINT)
        handler(signal.SIGINT, None)  # the first Ctrl-C: stop after the iteration
        with pytest.raises(SystemExit):
            signals.stop_if_requested(7, lambda: None, "toy.py", [], 0, 1, torch.device("cpu"))
        with pytest.raises(Ended, match="130"):  # the second, 0.02 s later, as the interpreter tears down
            handler(signal.SIGINT, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---- the data cache's temporary file ---------------------------------------------------
@pytest.mark.parametrize("problem", ["cache_is_a_folder", "full_disk"])
def test_a_cache_that_cannot_be_written_leaves_no_temporary_file(synthetic, monkeypatch, capsys, problem):
    if problem == "cache_is_a_folder":
        (synthetic / omniglot_data.CACHE_NAME).mkdir()
    else:
        savez = omniglot_data.np.savez

        def half_then_full(f, **arrays):
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(omniglot_data.np, "savez", half_then_full)
    images, _ = omniglot_data.load_omniglot(str(synthetic))
    assert images.shape[1:] == (20, 28, 28) and "warning: cannot write the cache" in capsys.readouterr().err
    assert sorted(os.listdir(synthetic)) == sorted(["images_background.zip", "images_evaluation.zip"]
                                                   + ([omniglot_data.CACHE_NAME] if problem != "full_disk" else []))


# ---- bad input, one line ------------------------------------------------------------------
@pytest.mark.parametrize("script", [sinusoid_maml, omniglot_maml])
def test_negative_threads_is_one_line(tmp_path, capsys, script):
    err = one_line_exit(capsys, lambda: script.main(["--threads", "-1", "--out-dir", str(tmp_path / "run")]))
    assert err == "error: --threads must be 0 (one per free core) or positive, got -1"
    assert not (tmp_path / "run").exists()


def test_three_processes_say_a_bad_input_once(tmp_path):
    result = subprocess.run([sys.executable, "distributed.py", "--processes", "3", "sinusoid_maml.py", "--meta-lr",
                             "nan", "--out-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr == "error: argument --meta-lr: expected a finite number, got 'nan'\n"


@pytest.mark.parametrize("args, message", [
    (["--processes", "0", "sinusoid_maml.py"], "error: --processes must be at least 1, got 0\n"),
    (["sinusoid_maml.py"], "error: the following arguments are required: --processes\n"),
    (["--processes", "2", "sinusoid_mal.py", "--seed", "1"], "error: no script sinusoid_mal.py to start\n"),
])
def test_the_launchers_own_errors_are_one_line(args, message):
    result = subprocess.run([sys.executable, "distributed.py", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and result.stderr == message
