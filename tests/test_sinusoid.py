"""sinusoid_maml.py end to end: learning, command line, bad input, resume."""
import csv
import json
import os

import pytest
import torch

import meta_learning
import sinusoid_maml
from conftest import load_file, metrics_rows

QUICK = ["--eval-tasks", "50", "--eval-k-shots", "5,10", "--log-every", "10"]


def run(out_dir, *args):
    return sinusoid_maml.main([*args, "--out-dir", str(out_dir), *QUICK])


# ANIL adapts only the final layer, and learns more slowly on sine waves than MAML does.
# Meta-SGD: after the one step its step sizes are learned for (more can diverge). CNP: its
# one-pass prediction against the mean square of the waves (about 4.2: predicting 0).
@pytest.mark.parametrize("algorithm, iterations, ratio", [("maml", 1500, 0.8), ("anil", 1500, 0.9),
                                                          ("reptile", 300, 0.8), ("metasgd", 1000, 0.8),
                                                          ("cnp", 500, 0.5)])
def test_short_training_makes_adaptation_work(tmp_path, algorithm, iterations, ratio):
    results = run(tmp_path / algorithm, "--algorithm", algorithm, "--meta-iterations", str(iterations))
    mse = results["mse"][algorithm]["10"]["mean"]
    if algorithm == "cnp":
        assert len(mse) == 1 and mse[0] < ratio * 4.2
    elif algorithm == "metasgd":
        assert mse[1] < ratio * mse[0]
    else:
        assert mse[10] < ratio * mse[0]
    assert set(results["mse"]) == {algorithm, "pretrained"}
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "results.json",
                 "training_curve.png", "mse_vs_steps.png", "fits.png"):
        assert os.path.getsize(tmp_path / algorithm / name) > 0
    with open(tmp_path / algorithm / "results.json") as f:
        saved = json.load(f)
    assert len(saved["mse"]["pretrained"]["5"]["ci95"]) == 11


def clipped_maml(learner, params, optimizer, support, query, iteration):
    """MAML whose meta-gradient is clipped to norm 1 before the Adam step (the docs' example)."""
    optimizer.zero_grad()
    loss, predictions = meta_learning.maml_meta_gradient(
        learner.forward, learner.loss_fn, params, support, query, learner.inner_steps, learner.inner_lr,
        meta_batch_size=learner.meta_batch_size)
    learner.sum_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
    optimizer.step()
    return loss, predictions, query[1]


def test_an_algorithm_added_to_the_registry_runs_in_the_script(tmp_path, monkeypatch):
    monkeypatch.setitem(meta_learning.ALGORITHMS, "clipped-maml", meta_learning.Algorithm(clipped_maml))
    results = run(tmp_path, "--algorithm", "clipped-maml", "--meta-iterations", "20")
    assert set(results["mse"]) == {"clipped-maml", "pretrained"}
    maml = run(tmp_path / "maml", "--meta-iterations", "20")
    assert results["mse"]["clipped-maml"]["5"]["mean"] != maml["mse"]["maml"]["5"]["mean"]


def test_command_line_overrides_reach_the_run(tmp_path):
    run(tmp_path, "--meta-iterations", "20", "--k-shot", "5", "--seed", "3", "--inner-lr", "0.02")
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    assert (config["meta_iterations"], config["k_shot"], config["seed"], config["inner_lr"]) == (20, 5, 3, 0.02)
    assert config["meta_batch_size"] == 25  # untouched values keep the paper's defaults
    with open(tmp_path / "metrics.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [10, 20]


@pytest.mark.parametrize("args, message", [
    (["--no-such-flag", "1"], "unrecognized arguments"),
    (["--k-shot", "five"], "invalid int value"),
    (["--k-shot", "0"], "--k-shot must be at least 1"),
    (["--inner-lr", "-0.01"], "--inner-lr must be positive"),
    (["--meta-lr", "0"], "--meta-lr must be positive"),
    (["--algorithm", "sgd"], "--algorithm must be one of"),
    (["--reptile-inner-optimizer", "rmsprop"], "--reptile-inner-optimizer must be one of"),
    (["--algorithm", "protonet"], "--algorithm protonet classifies and does not apply to regression; choose one of"),
    (["--eval-k-shots", "5,x"], "--eval-k-shots must be comma-separated integers"),
    (["--resume"], "no checkpoint at"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        sinusoid_maml.main([*args, "--out-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        sinusoid_maml.main(["--out-dir", str(tmp_path / "file")])
    assert exit_info.value.code == 2
    assert "is a file" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    run(tmp_path, "--meta-iterations", "10")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit):
        run(tmp_path, "--meta-iterations", "10")
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("algorithm", ["maml", "reptile", "metasgd", "cnp"])
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, algorithm):
    args = ["--algorithm", algorithm, "--meta-iterations", "60", "--checkpoint-every", "20"]
    run(tmp_path / "straight", *args)

    sample = sinusoid_maml.sample_sinusoids
    calls = {"n": 0}

    def sample_then_die(*a, **kw):  # the process dies during iteration 51, after the checkpoint at 40
        calls["n"] += 1
        if calls["n"] == 51:
            raise KeyboardInterrupt
        return sample(*a, **kw)

    monkeypatch.setattr(sinusoid_maml, "sample_sinusoids", sample_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", *args)
    assert load_file(str(tmp_path / "killed" / "checkpoint.pt"))["iteration"] == 40
    monkeypatch.setattr(sinusoid_maml, "sample_sinusoids", sample)
    resumed = run(tmp_path / "killed", "--resume")

    straight_ckpt = load_file(str(tmp_path / "straight" / "checkpoint.pt"))
    resumed_ckpt = load_file(str(tmp_path / "killed" / "checkpoint.pt"))
    for key in ("meta_params", "baseline_params"):
        for a, b in zip(straight_ckpt[key], resumed_ckpt[key]):
            assert torch.equal(a, b)
    assert metrics_rows(tmp_path / "straight" / "metrics.csv") == metrics_rows(tmp_path / "killed" / "metrics.csv")
    with open(tmp_path / "straight" / "results.json") as f:  # as text: an early baseline can diverge to NaN
        assert json.dumps(json.load(f)["mse"]) == json.dumps(resumed["mse"])


def test_a_resumed_reptile_run_keeps_the_iterations_its_meta_step_is_annealed_over(tmp_path, capsys):
    run(tmp_path, "--algorithm", "reptile", "--meta-iterations", "10")
    capsys.readouterr()
    with pytest.raises(SystemExit):  # its algorithm is the saved run's, though not given again
        sinusoid_maml.main(["--resume", "--meta-iterations", "20", "--out-dir", str(tmp_path)])
    assert "--meta-iterations 20 differs from the resumed run's 10" in capsys.readouterr().err
    longer = run(tmp_path / "maml", "--meta-iterations", "10")
    assert set(longer["mse"]) == {"maml", "pretrained"}
    resumed = sinusoid_maml.main(["--resume", "--meta-iterations", "20", "--out-dir", str(tmp_path / "maml")])
    assert resumed["meta_iterations"] == 20


def test_resume_refuses_a_changed_hyperparameter(tmp_path, capsys):
    run(tmp_path, "--meta-iterations", "10")
    with pytest.raises(SystemExit):
        run(tmp_path, "--resume", "--inner-lr", "0.5")
    assert "differs from the resumed run" in capsys.readouterr().err
