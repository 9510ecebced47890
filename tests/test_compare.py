"""compare.py on hand-made run folders."""
import contextlib
import io
import json
import subprocess

import compare as compare_script


def fake_sinusoid_run(folder, algorithm, offset):
    folder.mkdir()
    curve = {"mean": [3.0 - 0.1 * s + offset for s in range(11)], "ci95": [0.1] * 11}
    (folder / "config.json").write_text(json.dumps({"algorithm": algorithm}))
    (folder / "results.json").write_text(json.dumps({
        "mse": {algorithm: {"5": curve}, "pretrained": {"5": curve}}, "train_seconds": 120.0}))


def compare(*args):
    """compare.py's main in this process (each a subprocess took seconds of imports): its
    exit code, standard output and error."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            compare_script.main([str(a) for a in args])
        except SystemExit as exit_info:
            code = exit_info.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_runs_of_one_algorithm_stay_apart_and_the_figure_is_written(tmp_path):
    fake_sinusoid_run(tmp_path / "maml-a", "maml", 0.0)
    fake_sinusoid_run(tmp_path / "maml-b", "maml", 1.0)
    result = compare(tmp_path / "maml-a", tmp_path / "maml-b", "--figure", tmp_path / "cmp.png")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| maml")]
    assert rows == ["| maml (maml-a) | 5 | 3.000 ± 0.100 | 2.900 ± 0.100 | 2.500 ± 0.100 | 2.000 ± 0.100 | 2.0 min |",
                    "| maml (maml-b) | 5 | 4.000 ± 0.100 | 3.900 ± 0.100 | 3.500 ± 0.100 | 3.000 ± 0.100 | 2.0 min |"]
    assert (tmp_path / "cmp.png").stat().st_size > 0


def test_folders_without_a_finished_run_are_skipped_and_named(tmp_path):
    result = compare(tmp_path)
    assert result.returncode == 2 and "none of the folders given holds a finished run" in result.stderr
    fake_sinusoid_run(tmp_path / "done", "maml", 0.0)
    (tmp_path / "left-over").mkdir()
    result = compare(tmp_path / "done", tmp_path / "left-over")
    assert result.returncode == 0, result.stderr
    assert f"skipped {tmp_path / 'left-over'}: it holds no finished run" in result.stderr
    assert "| maml | 5 |" in result.stdout


def test_short_runs_every_baseline_differing_settings_and_a_parent_folder(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    fake_sinusoid_run(runs / "maml-a", "maml", 0.0)
    fake_sinusoid_run(runs / "fomaml-b", "fomaml", 1.0)
    for folder, steps, lr in ((runs / "maml-a", 3, 0.01), (runs / "fomaml-b", 11, 0.02)):
        results = json.loads((folder / "results.json").read_text())
        for curves in results["mse"].values():
            curves["5"] = {key: values[:steps] for key, values in curves["5"].items()}
        (folder / "results.json").write_text(json.dumps(results))
        (folder / "config.json").write_text(json.dumps({"algorithm": folder.name.split("-")[0], "inner_lr": lr,
                                                        "out_dir": str(folder)}))
    result = compare(runs)  # the parent folder of both runs
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert "| fomaml | 5 | 4.000 ± 0.100 | 3.900 ± 0.100 | 3.500 ± 0.100 | 3.000 ± 0.100 | 2.0 min |" in rows
    assert "| maml | 5 | 3.000 ± 0.100 | 2.900 ± 0.100 | - | - | 2.0 min |" in rows  # 3 steps: no step 5 or 10
    assert sum(row.startswith("| pretrained (maml-a) |") or row.startswith("| pretrained (fomaml-b) |")
               for row in rows) == 2
    assert "settings that differ between the runs" in result.stdout
    assert "| run | algorithm | inner_lr |" in rows and "| maml-a | maml | 0.01 |" in rows


def test_omniglot_figure_in_percent_with_a_title(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    accuracy = {"mean": [0.2, 0.9, 0.95], "ci95": [0.01, 0.02, None], "median": [0.2, 1.0, 1.0],
                "diverged": [0, 0, 1]}
    (folder / "config.json").write_text(json.dumps({"algorithm": "maml", "n_way": 5, "k_shot": 1}))
    (folder / "results.json").write_text(json.dumps({"test": {
        "accuracy": accuracy, "headline_step": 1, "split": "paper", "meta_iterations": 10, "train_seconds": 60}}))
    result = compare(folder, "--figure", tmp_path / "fig.png")
    assert result.returncode == 0, result.stderr
    assert "| run | maml | cnn | paper | 5-way 1-shot | 10 | 1.0 min | 90.00 ± 2.00% | 1 |" in result.stdout
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_bad_records_and_arguments_are_one_line_before_any_table(tmp_path):
    fake_sinusoid_run(tmp_path / "ok", "maml", 0.0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.json").write_text("{}")
    (tmp_path / "empty" / "config.json").write_text("{}")
    omniglot = tmp_path / "no-headline"
    omniglot.mkdir()
    (omniglot / "results.json").write_text(json.dumps({"test": {"accuracy": {}, "split": "paper"}}))
    (omniglot / "config.json").write_text(json.dumps({"algorithm": "maml", "n_way": 5, "k_shot": 1}))
    cases = [
        ((tmp_path / "empty",), f"error: {tmp_path / 'empty'}/results.json holds the results of neither "
                                f"sinusoid_maml.py (mse) nor omniglot_maml.py (test)\n"),
        ((omniglot,), f"error: {omniglot} is not a whole record of a run: it lacks results.json test.headline_step, "
                      f"results.json test.meta_iterations, results.json test.train_seconds\n"),
        ((tmp_path / "ok", "--figure", tmp_path / "nowhere" / "x.png"),
         f"error: --figure {tmp_path / 'nowhere' / 'x.png'}: the folder {tmp_path / 'nowhere'} does not exist\n"),
        ((), "error: the following arguments are required: runs\n"),
        ((tmp_path / "ok", "--colour", "red"), "error: unrecognized arguments: --colour red\n"),
        ((tmp_path / "ok", tmp_path / "nowhere"), f"error: {tmp_path / 'nowhere'} does not exist\n"),
    ]
    for args, message in cases:
        result = compare(*args)
        assert (result.returncode, result.stderr, result.stdout) == (2, message, "")


def test_runs_whose_folders_share_a_name_are_each_a_row_told_apart(tmp_path):
    for parent, offset in (("mine", 0.0), ("docs", 1.0)):
        (tmp_path / parent).mkdir()
        fake_sinusoid_run(tmp_path / parent / "maml-k10-seed0", "maml", offset)
    result = compare(tmp_path / "mine" / "maml-k10-seed0", tmp_path / "docs" / "maml-k10-seed0",
                     tmp_path / "mine" / "maml-k10-seed0")
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ")[0] for line in result.stdout.splitlines() if line.startswith("| maml")]
    assert rows == ["| maml (mine/maml-k10-seed0 (1))", "| maml (docs/maml-k10-seed0)",
                    "| maml (mine/maml-k10-seed0 (2))"]


def fake_omniglot_run(folder, algorithm, accuracy, curve, **settings):
    """A finished run with a test curve: curve is [(train_seconds, test accuracy)], a point
    every 10 iterations."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"algorithm": algorithm, "n_way": 5, "k_shot": 1,
                                                    "out_dir": str(folder), **settings}))
    (folder / "results.json").write_text(json.dumps({"test": {
        "accuracy": accuracy, "headline_step": len(accuracy["mean"]) // 2, "split": "paper",
        "meta_iterations": 10 * len(curve), "train_seconds": curve[-1][0]}}))
    lines = ["iteration,train_seconds,train_loss,train_accuracy,validation_accuracy,test_accuracy,test_ci95"]
    lines += [f"{10 * (i + 1)},{seconds},1.0,0.5,,{value},0.01" for i, (seconds, value) in enumerate(curve)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_runs_at_equal_training_time_and_one_pass_algorithms(tmp_path):
    fake_omniglot_run(tmp_path / "maml", "maml", {"mean": [0.2, 0.9, 0.95], "ci95": [0.01] * 3},
                      [(60, 0.8), (300, 0.9), (600, 0.95)])
    fake_omniglot_run(tmp_path / "protonet", "protonet", {"mean": [0.97], "ci95": [0.01]}, [(120, 0.96), (240, 0.97)])
    fake_omniglot_run(tmp_path / "cnp", "cnp", {"mean": [0.97], "ci95": [0.01]},
                      [(120, 0.96), (290, 0.97), (600, 0.98)])
    result = compare(tmp_path / "maml", tmp_path / "protonet", tmp_path / "cnp", "--minutes", "1,5,10",
                     "--figure", tmp_path / "fig.png")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert "| protonet | protonet | cnn | paper | 5-way 1-shot | 20 | 4.0 min | 97.00 ± 1.00% | one pass |" in rows
    assert "| maml | 80.00 ± 1.00 | 90.00 ± 1.00 | 95.00 ± 1.00 |" in rows
    assert "| protonet | - | - | - |" in rows  # trained 4 minutes
    assert "| cnp | - | 97.00 ± 1.00 | 98.00 ± 1.00 |" in rows  # the last point at or before each time
    assert (tmp_path / "fig.png").stat().st_size > 0
    refused = compare(tmp_path / "maml", "--minutes", "ten")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--minutes must be" in refused.stderr


def test_runs_that_differ_only_in_their_seed_are_a_group_with_its_spread(tmp_path):
    """Seeds 0, 1, 2 of one setting: mean ± sd over seeds (sample sd) beside each seed's
    interval, at the headline step and on the test curves; a run of another setting, or
    one seed alone, is no group; a setting that one record has and the others lack (added
    to the scripts since) does not split them."""
    for seed, (final, curve) in enumerate(((0.90, 0.80), (0.92, 0.83), (0.94, 0.86))):
        fake_omniglot_run(tmp_path / f"maml-seed{seed}", "maml", {"mean": [0.2, final, 0.95], "ci95": [0.01] * 3},
                          [(60, curve - 0.1), (120, curve)], seed=seed, inner_lr=0.4)
    config = json.loads((tmp_path / "maml-seed0" / "config.json").read_text())
    (tmp_path / "maml-seed0" / "config.json").write_text(json.dumps({**config, "batch_norm": "transductive"}))
    fake_omniglot_run(tmp_path / "maml-lr", "maml", {"mean": [0.2, 0.5, 0.6], "ci95": [0.01] * 3},
                      [(60, 0.4), (120, 0.5)], seed=1, inner_lr=0.1)
    fake_omniglot_run(tmp_path / "protonet", "protonet", {"mean": [0.97], "ci95": [0.02]}, [(60, 0.9), (120, 0.97)])
    result = compare(tmp_path, "--iterations", "10,20", "--minutes", "2")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert "| maml-seed0 and 2 other seed(s) | 0, 1, 2 | 92.00 ± 2.00 (n = 3) | 90.00 ± 1.00, 92.00 ± 1.00, " \
           "94.00 ± 1.00 |" in rows
    assert sum("other seed(s)" in row for row in rows) == 3  # the group's row in each of its three tables
    assert "| maml-seed0 and 2 other seed(s) | 73.00 ± 3.00 (n = 3) | 83.00 ± 3.00 (n = 3) |" in rows
    assert "| maml-seed1 | 73.00 ± 1.00 | 83.00 ± 1.00 |" in rows  # by iterations, each run too
    assert "| maml-seed0 and 2 other seed(s) | 83.00 ± 3.00 (n = 3) |" in rows  # at 2 minutes
    fake_sinusoid_run(tmp_path / "sine-seed0", "maml", 0.0)
    fake_sinusoid_run(tmp_path / "sine-seed1", "maml", 0.5)
    for seed in (0, 1):
        (tmp_path / f"sine-seed{seed}" / "config.json").write_text(json.dumps({"algorithm": "maml", "seed": seed}))
    result = compare(tmp_path / "sine-seed0", tmp_path / "sine-seed1")
    assert result.returncode == 0, result.stderr
    assert "| sine-seed0 and 1 other seed(s) | 5 | 3.250 ± 0.354 (n = 2) | 3.150 ± 0.354 (n = 2) | " \
           "2.750 ± 0.354 (n = 2) | 2.250 ± 0.354 (n = 2) |" in result.stdout.splitlines()
