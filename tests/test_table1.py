"""table1.py: the cells of Table 1 trained on the real data, skipped and continued
on a rerun, recorded, and reported beside the published numbers; the published
table rebuilt from the committed records."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import table1
from conftest import ROOT
from test_trust import one_line_exit

TINY = ["--evaluate-every", "1", "--device", "cpu",
        "--extra", "--validation-tasks 4 --test-tasks 4 --log-every 1 --validate-every 2"]


def table(out, *args):
    return subprocess.run([sys.executable, "table1.py", "--out-dir", str(out), "--records", str(out / "records"),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cells_run_skip_when_done_continue_with_more_and_report(real_data_dir, tmp_path):
    args = [*TINY, "--data-dir", str(real_data_dir), "--cells", "maml-5w1s,mlp-5w1s"]
    first = table(tmp_path, *args, "--iterations", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    again = table(tmp_path, *args, "--iterations", "2")
    assert "maml-5w1s: its budget is met" in again.stdout and "mlp-5w1s: its budget is met" in again.stdout
    more = table(tmp_path, *args, "--iterations", "3", "--cells", "maml-5w1s", "--processes", "2")
    assert more.returncode == 0, more.stderr[-2000:]
    assert "--resume" in more.stdout and "distributed.py --processes 2 omniglot_maml.py" in more.stdout

    records = tmp_path / "records" / "paper"
    assert "maml-5w1s: records in" in more.stdout
    results = json.loads((records / "maml-5w1s" / "results.json").read_text())
    assert results["test"]["meta_iterations"] == 3 and results["world_size"] == 2
    assert sorted(os.listdir(records / "maml-5w1s")) == ["config.json", "metrics.csv", "results.json"]
    rows = table_rows(records / "table1.md")
    assert set(table1.CELLS) <= set(rows)
    assert "| 98.7 ± 0.4 |" in rows["maml-5w1s"] and "3 of the paper's 60,000 iterations" in rows["maml-5w1s"]
    assert "(4 tasks)" in rows["maml-5w1s"] and "2 process(es)" in rows["maml-5w1s"]
    assert "| 89.7 ± 1.1 |" in rows["mlp-5w1s"] and "| mlp | 2 |" in rows["mlp-5w1s"]
    assert "not run" in rows["maml-20w5s"] and "not run" in rows["reptile-5w1s"]
    assert os.path.getsize(records / "table1.png") > 0
    assert f"written: {records / 'table1.md'}, {records / 'table1.png'}" in more.stdout

    # A run of one's own joins the records, its cell found from its config.
    shutil.rmtree(records / "mlp-5w1s")
    added = table(tmp_path, "--add", str(tmp_path / "paper" / "mlp-5w1s"))
    assert added.returncode == 0, added.stderr[-2000:]
    assert f"mlp-5w1s: the records of {tmp_path / 'paper' / 'mlp-5w1s'} are now in" in added.stdout
    assert "| mlp | 2 |" in table_rows(records / "table1.md")["mlp-5w1s"]


def table_rows(path):
    return {line.split(" | ")[0].strip("| "): line for line in path.read_text().splitlines()}


def test_the_published_table_is_rebuilt_from_the_committed_records(tmp_path):
    records = tmp_path / "runs"
    shutil.copytree(os.path.join(ROOT, "docs", "runs"), records)
    table1.report(str(records), "paper")
    rebuilt = (records / "paper" / "table1.md").read_text()
    assert rebuilt == open(os.path.join(ROOT, "docs", "runs", "paper", "table1.md")).read()
    readme = open(os.path.join(ROOT, "README.md")).read()
    compact = "\n".join(table1.table(str(records), "paper", notes=False)[0]) + "\n"
    assert table1.README_MARKERS[0] + "\n" + compact + table1.README_MARKERS[1] in readme
    assert compact.splitlines()[2] in rebuilt.splitlines()[2]  # the same rows, without their notes
    rows, recorded = table_rows(records / "paper" / "table1.md"), 0
    for cell in os.listdir(records / "paper"):
        if os.path.exists(records / "paper" / cell / "results.json"):
            test = json.loads((records / "paper" / cell / "results.json").read_text())["test"]
            model = json.loads((records / "paper" / cell / "config.json").read_text())["model"]
            assert f"| {table1.headline(test)} | {model} | {test['meta_iterations']:,} |" in rows[cell]
            recorded += 1
    assert recorded >= 1
    assert os.path.getsize(records / "paper" / "table1.png") > 0


def test_a_row_names_other_test_protocols_and_settings_that_differ_from_the_paper(tmp_path):
    folder = tmp_path / "paper" / "maml-5w1s"
    folder.mkdir(parents=True)
    config = dict(algorithm="maml", model="cnn", n_way=5, k_shot=1, split="paper", meta_iterations=100,
                  meta_batch_size=32, inner_lr=0.2, inner_steps=1, test_steps=3, meta_lr=1e-3,
                  rotate_test_classes=False)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.csv").write_text("iteration,train_seconds,validation_accuracy,test_accuracy,test_ci95\n"
                                        "100,60,0.9,0.91,0.01\n")

    def results(mean, rotated):
        return json.dumps(dict(device="CPU", test=dict(
            accuracy=dict(mean=[0.2, 0.5, 0.6, mean], ci95=[0.01] * 4), headline_step=3, tasks=600,
            rotate_test_classes=rotated, meta_iterations=100, train_seconds=60)))
    (folder / "results.json").write_text(results(0.9123, False))
    (folder / "results-rotate_test_classes=True.json").write_text(results(0.8987, True))
    (tmp_path / "paper" / "lost.json").write_text(json.dumps({"maml-5w5s": "97 after 10 iterations"}))
    table1.report(str(tmp_path), "paper")
    rows = table_rows(tmp_path / "paper" / "table1.md")
    assert "| 91.23 ± 1.00 | cnn | 100 |" in rows["maml-5w1s"]
    assert "inner_lr 0.2 (paper: 0.4)" in rows["maml-5w1s"]
    assert "test classes rotated (the official code's protocol): 89.87 ± 1.00" in rows["maml-5w1s"]
    assert "records lost (97 after 10 iterations); rerun the cell" in rows["maml-5w5s"]


def test_a_cell_with_records_of_other_seeds_and_networks_has_a_row_for_each_setting(tmp_path):
    """Seeds of one setting are one row (mean ± sd over them, each seed's interval); another
    network is a row of its own, named by its record folder, which --add names from the config."""
    config = dict(algorithm="fomaml", model="cnn", n_way=5, k_shot=1, split="paper", meta_iterations=100,
                  meta_batch_size=32, inner_lr=0.4, inner_steps=1, test_steps=3, meta_lr=1e-3,
                  rotate_test_classes=False, seed=0, out_dir="x")
    for seed, model, mean in ((0, "cnn", 0.90), (1, "cnn", 0.92), (2, "cnn", 0.94), (0, "official-cnn", 0.97)):
        run_config = {**config, "seed": seed, "model": model, "out_dir": f"results/{model}-{seed}"}
        folder = tmp_path / "paper" / table1.record_name("fomaml-5w1s", run_config)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(run_config))
        (folder / "metrics.csv").write_text("iteration,train_seconds,validation_accuracy,test_accuracy,test_ci95\n"
                                            f"100,60,0.9,{mean},0.01\n")
        (folder / "results.json").write_text(json.dumps(dict(device="CPU", test=dict(
            accuracy=dict(mean=[0.2, 0.5, 0.6, mean], ci95=[0.01] * 4), headline_step=3, tasks=600,
            rotate_test_classes=False, meta_iterations=100, train_seconds=60))))
    assert sorted(os.listdir(tmp_path / "paper")) == ["fomaml-5w1s", "fomaml-5w1s+official-cnn",
                                                      "fomaml-5w1s-seed1", "fomaml-5w1s-seed2"]
    table1.report(str(tmp_path), "paper")
    rows = table_rows(tmp_path / "paper" / "table1.md")
    assert "| 92.00 ± 2.00 (n = 3) over seeds (seed 0: 90.00 ± 1.00, seed 1: 92.00 ± 1.00, seed 2: 94.00 ± 1.00) " \
           "| cnn | seed 0's: 100 |" in rows["fomaml-5w1s"]
    assert "| 97.00 ± 1.00 | official-cnn | 100 |" in rows["fomaml-5w1s+official-cnn"]
    assert "fomaml-5w1s-seed1" not in rows and "| not run |" in rows["fomaml-5w5s"]
    running = dict(algorithm="protonet", model="cnn", n_way=5, k_shot=1, split="paper", meta_iterations=100,
                   batch_norm="running", meta_lr=1e-3, rotate_test_classes=False)
    results = dict(test=dict(meta_iterations=100, headline_step=0))
    assert "batch norm with running statistics at test" in table1.protocol_notes("protonet-5w1s", running, results, {})
    assert table1.record_name("protonet-5w1s", dict(model="cnn", batch_norm="running", seed=3)) == \
        "protonet-5w1s+running-batch-norm-seed3"
    assert table1.record_name("mlp-5w1s", dict(model="mlp", seed=0)) == "mlp-5w1s"


def test_first_point_within_the_published_interval():
    rows = [dict(iteration=i, train_seconds=60 * i, test_accuracy=a) for i, a in
            [(1, 0.90), (2, None), (3, 0.983), (4, 0.99)]]
    assert table1.first_within(rows, (98.7, 0.4)) == (3, 3.0)
    assert table1.first_within(rows, (99.9, 0.1)) is None
    assert table1.first_within(rows, (98.8, None)) == (4, 4.0)  # no published CI: the number itself
    assert table1.published_text((98.8, None)) == "98.8 (no CI given)"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_table_alone_stops_the_run_with_a_checkpoint_and_the_table(real_data_dir, tmp_path, signum):
    driver = subprocess.Popen([sys.executable, "table1.py", "--out-dir", str(tmp_path), "--records",
                               str(tmp_path / "records"), *TINY, "--cells", "mlp-5w1s",
                               "--data-dir", str(real_data_dir), "--iterations", "100000"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "paper" / "mlp-5w1s" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.2)
    driver.send_signal(signum)  # to table1.py's own process, not its group, as a scheduler may
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 128 + signum, err[-2000:]
    assert "checkpoint saved; continue with" in err and checkpoint.exists()
    assert "stopped by a signal; continue with: python table1.py --out-dir" in err
    table_md = tmp_path / "records" / "paper" / "table1.md"
    assert "| mlp-5w1s | 89.7 ± 1.1 | not run |" in table_md.read_text()  # not finished


def test_total_minutes_cuts_the_last_budget_and_starts_no_cell_after_it(tmp_path, monkeypatch, capsys):
    clock, budgets = [0.0], []

    def train_for_its_budget_and_a_half_minute(command):
        minutes = float(command[command.index("--train-minutes") + 1])
        budgets.append(minutes)
        clock[0] += 60 * (minutes + 0.5)
        run_dir = command[command.index("--out-dir") + 1]  # a finished run's config, which its record is named by
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(dict(model="cnn", seed=0), f)
        return 0, []
    monkeypatch.setattr(table1, "train", train_for_its_budget_and_a_half_minute)
    monkeypatch.setattr(table1.time, "monotonic", lambda: clock[0])
    table1.main(["--cells", "maml-20w1s,maml-20w5s,mlp-5w5s", "--minutes", "3", "--total-minutes", "6",
                 "--out-dir", str(tmp_path), "--records", str(tmp_path / "records")])
    assert budgets == pytest.approx([3, 6 - 3.5 - table1.TEST_MINUTES])
    assert "mlp-5w5s: not started, --total-minutes 6.0 is spent" in capsys.readouterr().out


def test_extrapolation_follows_a_power_law_curve_to_the_published_interval():
    rows = [dict(iteration=i, train_seconds=0.5 * i, test_accuracy=1 - 0.1 * (i / 100) ** -0.5)
            for i in (100, 200, 400, 800, 1600)]
    iterations, minutes = table1.extrapolated(rows, (98.7, 0.4))  # error 1.7% = 10% x (i / 100)^-0.5
    assert iterations == pytest.approx(100 / 0.17 ** 2) and minutes == pytest.approx(0.5 * iterations / 60)
    assert table1.extrapolated([{**r, "test_accuracy": 0.5} for r in rows], (98.7, 0.4)) is None  # flat
    assert table1.extrapolated(rows[:2], (98.7, 0.4)) is None  # too few points
    slow = [{**r, "test_accuracy": 1 - 0.1 * (r["iteration"] / 100) ** -0.05} for r in rows]
    assert table1.extrapolated(slow, (98.7, 0.4)) is None  # 1e20 iterations: beyond any fit's reach


@pytest.mark.parametrize("args, message", [
    (["--cells", "maml-6w1s"], "unknown cell 'maml-6w1s'"),
    (["--split", "omniglot"], "--split must be one of paper, background, not 'omniglot'"),
    (["--minutes", "-1"], "--minutes must be 0 (none) or positive"),
    (["--device", "gpu"], "--device must be one of auto, cpu, cuda, not 'gpu'"),
    (["--extra", "--bogus 3"], "--extra '--bogus 3': unrecognized arguments: --bogus 3"),
    (["--extra", "--test-tasks 'ten"], "No closing quotation"),
    (["--data-dir", "README.md"], "--data-dir README.md is a file, not a folder"),
    (["--out-dir", "README.md"], "--out-dir README.md is a file, not a folder"),
    (["--out-dir", "README.md/runs"], "--out-dir README.md/runs: "),
    (["--add", "docs"], "docs holds no finished run (no results.json)"),
])
def test_bad_input_is_one_line(capsys, tmp_path, args, message):
    assert message in one_line_exit(capsys, lambda: table1.main(
        ["--out-dir", str(tmp_path), "--records", str(tmp_path / "records"), *args]))


def test_when_every_cell_fails_alike_the_exit_code_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(table1, "train", lambda command: (2, []))
    with pytest.raises(SystemExit) as stop:
        table1.main(["--cells", "maml-5w1s,mlp-5w1s", "--out-dir", str(tmp_path), "--records", str(tmp_path / "r")])
    assert stop.value.code == 2
    assert "2 cell(s) failed: maml-5w1s, mlp-5w1s" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["records_is_a_file", "add_names_no_finished_run", "report"])
def test_a_refused_or_report_only_invocation_makes_no_folder(tmp_path, case):
    out = tmp_path / "out"
    (tmp_path / "a-file").write_text("")
    args = {"records_is_a_file": ["--records", str(tmp_path / "a-file")],
            "add_names_no_finished_run": ["--records", str(tmp_path / "records"), "--add", str(tmp_path)],
            "report": ["--records", str(tmp_path / "records"), "--report"]}[case]
    result = subprocess.run([sys.executable, "table1.py", "--out-dir", str(out), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == (0 if case == "report" else 2), result.stderr
    assert not out.exists()
    if case == "records_is_a_file":
        assert result.stderr == f"error: --records {tmp_path / 'a-file'} is a file, not a folder\n"
