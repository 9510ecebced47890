"""The run lifecycle (lifecycle.Run) on its own, driven by a toy training loop:
rows, checkpoints, resuming, the time budget, untimed tests, divergence, the best
validated parameters and signals."""
import csv
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import load_file, metrics_rows
import files
import lifecycle
import signals

DEFAULTS = dict(lr=0.1, out_dir="", resume=False, eval_only=False)


class Clock:
    """time.perf_counter for the lifecycle: moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(lifecycle.time, "perf_counter", fake)
    return fake


def open_run(out_dir, resume=False, **settings):
    cfg = SimpleNamespace(**{**DEFAULTS, "out_dir": str(out_dir), "resume": resume, **settings})
    given = {"out_dir", "resume", *settings}
    return lifecycle.Run("toy", "toy.py", [], cfg, given, DEFAULTS, device=torch.device("cpu"), folder="toy",
                         named_keys=set(), shared_tasks={})


def train(run, total=10, values=lambda i: float(i), seconds_per_iteration=1.0, clock=None, validate=None,
          test_seconds=0.0, **schedule):
    """A toy run: one parameter, moved by 1 each iteration; records values(i).
    Returns the Due of every iteration, and the parameter."""
    param = [torch.zeros(1)]
    generator = torch.Generator().manual_seed(0)
    run.track(params=param, generator=generator)
    dues = {}
    evaluated = ("validation_accuracy", "test_accuracy") if validate else ("test_accuracy",)
    for iteration in run.iterations(total, recorded=("loss",), evaluated=evaluated, description="toy",
                                    **{"log_every": 4, "checkpoint_every": 5, **schedule}):
        param[0] += 1
        torch.rand(1, generator=generator)
        if clock:
            clock.now += seconds_per_iteration
        due = dues[iteration + 1] = run.record(loss=torch.tensor(values(iteration), dtype=torch.float64))
        if due.checkpoint and validate:
            run.validated(validate(iteration + 1), param)
        if due.test:
            with run.untimed():
                clock.now += test_seconds
            run.log(test_accuracy=0.5)
    return dues, param


def test_a_row_holds_the_means_since_the_last_row_and_every_checkpoint_is_a_row(tmp_path):
    run = open_run(tmp_path)
    run.start()
    dues, param = train(run)
    assert [i for i, due in dues.items() if due.checkpoint] == [5, 10]
    rows = metrics_rows(tmp_path / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == [4, 5, 8, 10]  # log_every 4, checkpoints at 5 and 10
    assert [float(r["loss"]) for r in rows] == [1.5, 4.0, 6.0, 8.5]  # means of 0-3, 4, 5-7, 8-9
    checkpoint = load_file(tmp_path / "checkpoint.pt")
    assert checkpoint["iteration"] == 10 and checkpoint["params"][0].item() == 10.0
    assert run.iteration == 10 and "best" not in checkpoint  # a run that does not validate keeps no best


def test_a_resumed_run_continues_its_tracked_state_and_rows(tmp_path):
    straight = open_run(tmp_path / "straight")
    _, straight_param = train(straight, total=12)
    first = open_run(tmp_path / "resumed")
    train(first, total=5)  # a budget of 5 iterations, then continued to 12
    resumed = open_run(tmp_path / "resumed", resume=True)
    assert resumed.iteration == 5
    dues, param = train(resumed, total=12)
    assert min(dues) == 6 and torch.equal(param[0], straight_param[0])
    assert metrics_rows(tmp_path / "resumed" / "metrics.csv") == metrics_rows(tmp_path / "straight" / "metrics.csv")
    for name in ("resumed", "straight"):  # the generator went on from where it was
        assert torch.equal(load_file(tmp_path / name / "checkpoint.pt")["generator"],
                           load_file(tmp_path / "straight" / "checkpoint.pt")["generator"])


def test_a_signal_stops_after_the_iteration_with_the_window_in_the_checkpoint(tmp_path, monkeypatch, capsys):
    train(open_run(tmp_path / "straight"))
    monkeypatch.setattr(signals, "stop_requested", lambda: 130 if calls.append(1) or len(calls) == 8 else 0)
    calls = []
    with pytest.raises(SystemExit) as stop:
        train(open_run(tmp_path / "stopped"))
    assert stop.value.code == 130
    assert "stopped at iteration 7, checkpoint saved; continue with: python toy.py --resume" in capsys.readouterr().err
    checkpoint = load_file(tmp_path / "stopped" / "checkpoint.pt")
    assert checkpoint["iteration"] == 7 and [v.item() for v in checkpoint["windows"][0][0]] == [5.0, 6.0]
    monkeypatch.setattr(signals, "stop_requested", lambda: 0)
    train(open_run(tmp_path / "stopped", resume=True))
    assert metrics_rows(tmp_path / "stopped" / "metrics.csv") == metrics_rows(tmp_path / "straight" / "metrics.csv")


def test_training_time_excludes_untimed_tests_and_the_budget_stops_with_a_checkpoint(tmp_path, clock, capsys):
    run = open_run(tmp_path)
    dues, _ = train(run, total=100, clock=clock, seconds_per_iteration=10, test_seconds=1000, train_minutes=0.5,
                    test_every=2)
    assert max(dues) == 3 and dues[3].checkpoint and dues[3].test  # 30 s: stopped at once, validated and tested
    said = capsys.readouterr()
    # One iteration count and one time: the stop line, the progress line (a log file's) and the checkpoint.
    assert "--train-minutes 0.5: stopped after iteration 3, 30 s of training" in said.out
    assert said.err.splitlines()[-1].startswith("toy: 3/100 after 30 s of training")
    rows = metrics_rows(tmp_path / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == [2, 3]
    assert load_file(tmp_path / "checkpoint.pt")["train_seconds"] == run.train_seconds == 30
    again = open_run(tmp_path, resume=True)
    dues, _ = train(again, total=100, clock=clock, train_minutes=0.5)
    assert dues == {} and "the run's budget is spent; testing it again" in capsys.readouterr().out


def test_training_time_is_a_column_and_a_resumed_run_adds_to_it(tmp_path, clock):
    train(open_run(tmp_path), total=5, clock=clock, seconds_per_iteration=2)
    train(open_run(tmp_path, resume=True), total=10, clock=clock, seconds_per_iteration=3)
    with open(tmp_path / "metrics.csv") as f:
        seconds = {int(r["iteration"]): float(r["train_seconds"]) for r in csv.DictReader(f)}
    assert seconds == {4: 8.0, 5: 10.0, 8: 19.0, 10: 25.0}


@pytest.mark.parametrize("nan_at", [2, 7])
def test_a_value_that_is_not_finite_stops_the_run_at_the_next_row_naming_its_iteration(tmp_path, capsys, nan_at):
    with pytest.raises(SystemExit) as stop:
        train(open_run(tmp_path), values=lambda i: math.nan if i + 1 == nan_at else float(i))
    err = capsys.readouterr().err
    assert stop.value.code == 1
    kept = "no checkpoint had been written yet" if nan_at < 5 else "its last checkpoint (iteration 5) is kept"
    assert f"training diverged: loss is not finite at iteration {nan_at}; stopped, {kept}" in err
    if nan_at > 5:
        assert load_file(tmp_path / "checkpoint.pt")["iteration"] == 5


def test_the_best_validated_parameters_are_kept_and_written_with_each_checkpoint(tmp_path):
    run = open_run(tmp_path)
    accuracies = {5: 0.7, 10: 0.6, 15: 0.8, 20: 0.75}
    train(run, total=20, validate=accuracies.get)
    best = load_file(tmp_path / "best.pt")
    assert best["iteration"] == 15 and best["accuracy"] == 0.8 and best["params"][0].item() == 15.0
    assert load_file(tmp_path / "checkpoint.pt")["best"]["iteration"] == 15
    assert run.best_params()[0].item() == 15.0
    rows = metrics_rows(tmp_path / "metrics.csv")
    assert [r["validation_accuracy"] for r in rows if r["validation_accuracy"]] == ["0.7", "0.6", "0.8", "0.75"]


def test_a_validation_on_which_every_task_diverged_stops_the_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train(open_run(tmp_path), validate=lambda done: math.nan)
    assert stop.value.code == 1
    assert "the adaptation diverged on every validation task at iteration 5" in capsys.readouterr().err


def test_a_run_without_validated_parameters_cannot_be_tested(tmp_path, capsys):
    run = open_run(tmp_path)
    train(run, validate=lambda done: 0.5, total=3)  # validated at its end, before the first checkpoint_every
    assert run.best["iteration"] == 3
    empty = open_run(tmp_path / "empty")
    empty.track(param=[torch.zeros(1)])
    with pytest.raises(SystemExit) as stop:
        empty.best_params()
    assert stop.value.code == 2 and "has no validated parameters yet" in capsys.readouterr().err


def test_a_checkpoint_without_a_tracked_value_is_refused_in_one_line(tmp_path, capsys):
    train(open_run(tmp_path), total=5)
    run = open_run(tmp_path, resume=True)
    with pytest.raises(SystemExit) as stop:
        run.track(params=[torch.zeros(1)], optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1))
    assert stop.value.code == 2 and "is damaged (it lacks optimizer)" in capsys.readouterr().err


def test_evaluation_only_trains_nothing_and_may_change_only_its_test_settings(tmp_path, capsys):
    train(open_run(tmp_path), total=5)
    cfg = SimpleNamespace(**{**DEFAULTS, "out_dir": str(tmp_path), "eval_only": True, "lr": 0.1})
    run = lifecycle.Run("toy", "toy.py", [], cfg, {"out_dir", "eval_only"}, DEFAULTS, device=torch.device("cpu"),
                        folder="toy", named_keys=set(), shared_tasks={})
    assert run.results_name == "results"
    dues, param = train(run, total=5)
    assert dues == {} and param[0].item() == 5.0


@pytest.mark.parametrize("damage, expected", [
    ("no_best", "is damaged (it lacks best)"),
    ("best_float16", "does not fit this run: its best params: tensor 0 is torch.float16 (1,) where the run's is "
                     "torch.float32 (1,)"),
    ("best_two_tensors", "does not fit this run: its best params: 2 tensors where the run has 1"),
])
def test_a_checkpoint_without_its_best_or_with_best_parameters_that_do_not_fit_is_refused(tmp_path, capsys, damage,
                                                                                         expected):
    train(open_run(tmp_path), total=5, validate=lambda done: 0.5)
    path = tmp_path / "checkpoint.pt"
    checkpoint = load_file(path)
    if damage == "no_best":
        del checkpoint["best"]
    elif damage == "best_float16":
        checkpoint["best"]["params"] = [p.half() for p in checkpoint["best"]["params"]]
    else:
        checkpoint["best"]["params"] = checkpoint["best"]["params"] * 2
    checkpoint["checksum"] = files.checksum(checkpoint)
    torch.save(checkpoint, path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train(open_run(tmp_path, resume=True), total=10, validate=lambda done: 0.5)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and f"{path} {expected}" in err
