"""Tasks spread over processes with torch.distributed: gloo on this CPU, started
by torchrun (python -m torch.distributed.run) or torch.multiprocessing."""
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import distributed
import meta_learning
import models
from test_meta_learning import PROBLEMS, relative_error
from conftest import load_file, metrics_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_SINE = ["--meta-iterations", "30", "--checkpoint-every", "10", "--log-every", "5", "--eval-tasks", "20",
              "--eval-k-shots", "5", "--eval-steps", "2"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_thread_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


# Characters of a failed run's stderr that an assertion shows: a worker's error comes before torchrun's summary.
ERROR_TAIL = 6000


def torchrun(*args, nproc=2, **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), *args]
    return subprocess.run(command, cwd=ROOT, env=single_thread_env(), capture_output=True, text=True,
                          timeout=240, **kwargs)


def sine(out_dir, *args):
    return ["sinusoid_maml.py", *QUICK_SINE, "--out-dir", str(out_dir), *args]


def final_params(run_dir):
    return load_file(os.path.join(run_dir, "checkpoint.pt"))["meta_params"]


def assert_same_params(a, b, tolerance=1e-6):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tolerance, atol=tolerance)


def test_shares_are_as_even_as_possible_and_cover_every_task():
    assert [distributed.share(25, r, 2) for r in range(2)] == [slice(0, 13), slice(13, 25)]
    for n in (1, 5, 16, 25, 600):
        for world in range(1, min(n, 7) + 1):
            sizes = [s.stop - s.start for s in (distributed.share(n, r, world) for r in range(world))]
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
            assert [distributed.share(n, r, world).start for r in range(world)] == [sum(sizes[:r]) for r in range(world)]


# ---- the meta-gradient of 2 processes equals that of 1 (float64) ---------------
# Every case in one pair of processes: starting them is most of a case's time.
SPREAD_CASES = [("mlp", "maml"), ("cnn", "maml"), ("mlp", "reptile"), ("cnn", "metasgd"), ("cnn", "protonet"),
                ("cnn", "cnp"), ("mlp", "cnp")]


def _gradient_worker(rank, world_size, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_default_dtype(torch.float64)
    result = every_spread_update(rank, world_size)
    if rank == 0:
        torch.save(result, path)
    dist.barrier()
    os._exit(0)  # past the process group's C++ destructors, which can abort at exit


def every_spread_update(rank, world_size):
    """Each case's spread_update, and Meta-SGD's with every named network."""
    return {**{f"{problem}-{algorithm}": spread_update(problem, algorithm, rank, world_size)
               for problem, algorithm in SPREAD_CASES},
            **{f"metasgd-{name}": update for name, update in metasgd_updates_of_every_network(rank, world_size).items()}}


def spread_update(problem, algorithm, rank, world_size):
    """The meta-gradient (MAML) or the meta-update (Reptile; Meta-SGD, Prototypical Networks
    and the CNP through their meta_update, an SGD step of 1) of a meta-batch, computed by
    this process on its share of the tasks and summed over processes."""
    forward, loss_fn, params, support, query, lr = PROBLEMS[problem](torch.Generator().manual_seed(5))
    n_tasks = support[0].shape[0]
    if algorithm in ("metasgd", "protonet", "cnp"):
        classes = problem == "cnn"
        learner = meta_learning.Learner(
            forward, loss_fn, meta_batch_size=n_tasks, meta_iterations=10, inner_steps=2, inner_lr=lr,
            features=models.cnn_features if classes else models.mlp_features, n_classes=3 if classes else None,
            sum_across=functools.partial(distributed.sum_across, world_size=world_size))
        params = meta_learning.ALGORITHMS[algorithm].parameters(learner, params, torch.Generator().manual_seed(6))
        meta_learning.ALGORITHMS[algorithm].meta_update(
            learner, params, torch.optim.SGD(params, lr=1.0), distributed.take_share(support, rank, world_size),
            distributed.take_share(query, rank, world_size), iteration=0)
        return [p.detach() for p in params]
    if algorithm == "reptile":
        tasks = distributed.take_share([torch.cat([s, q], 1) for s, q in zip(support, query)], rank, world_size)
        params = [p.detach().clone() for p in params]
        sum_over = lambda tensors: distributed.sum_across(tensors, world_size)  # noqa: E731
        meta_learning.reptile_meta_step(forward, loss_fn, params, tasks, 3, lr, 0.5, meta_batch_size=n_tasks,
                                        sum_over_processes=sum_over)
        return params
    meta_learning.maml_meta_gradient(forward, loss_fn, params, distributed.take_share(support, rank, world_size),
                                     distributed.take_share(query, rank, world_size), 2, lr,
                                     meta_batch_size=n_tasks)
    return distributed.sum_across([p.grad for p in params], world_size)


def metasgd_updates_of_every_network(rank, world_size):
    """Meta-SGD's meta-update (an SGD step of 1) with each named network, its inner loop
    adapting what the network says: the step sizes of the parameters it leaves alone get no
    gradient, in any process."""
    updated = {}
    for name, net in models.CONV_NETS.items():
        forward, loss_fn, network, support, query, lr = functools.partial(PROBLEMS["cnn"], net=net)(
            torch.Generator().manual_seed(5))
        learner = meta_learning.Learner(
            forward, loss_fn, meta_batch_size=support[0].shape[0], meta_iterations=10, inner_steps=1, inner_lr=lr,
            adapted=net.inner_loop_mask(len(network)), n_classes=3,
            sum_across=functools.partial(distributed.sum_across, world_size=world_size))
        params = meta_learning.ALGORITHMS["metasgd"].parameters(learner, network, None)
        meta_learning.ALGORITHMS["metasgd"].meta_update(
            learner, params, torch.optim.SGD(params, lr=1.0), distributed.take_share(support, rank, world_size),
            distributed.take_share(query, rank, world_size), iteration=0)
        updated[name] = [p.detach() for p in params]
    return updated


def test_two_processes_give_the_meta_gradient_of_one(tmp_path):
    """MAML, Reptile, Meta-SGD (with every network: official-cnn's inner loop leaves batch
    norm alone, so its step sizes there have no gradient), Prototypical Networks and the CNP."""
    torch.set_default_dtype(torch.float64)
    try:
        expected = every_spread_update(0, 1)
    finally:
        torch.set_default_dtype(torch.float32)
    path = tmp_path / "result.pt"
    mp.spawn(_gradient_worker, args=(2, free_port(), str(path)), nprocs=2)
    spread = torch.load(path)
    assert list(spread) == list(expected) and len(spread) == len(SPREAD_CASES) + len(models.CONV_NETS)
    for case in expected:
        assert relative_error(spread[case], expected[case]) < 1e-12, case


def _die_before_all_reduce_worker(rank, world_size, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    if rank == 1:
        os._exit(0)  # a process that dies without a word
    start = time.perf_counter()
    try:
        distributed.sum_across([torch.ones(3)], world_size)
        message = "no error"
    except distributed.ProcessFailure as error:
        message = str(error)
    with open(path, "w") as f:
        json.dump(dict(message=message, seconds=time.perf_counter() - start), f)
    os._exit(0)  # past the broken process group's C++ destructors, which abort at exit


def test_a_process_that_dies_ends_the_others_collective_with_one_line(tmp_path):
    path = tmp_path / "result.json"
    processes = mp.start_processes(_die_before_all_reduce_worker, args=(2, free_port(), str(path)), nprocs=2,
                                   start_method="spawn", join=False)
    deadline = time.time() + 120
    while not processes.join(timeout=1) and time.time() < deadline:
        pass
    result = json.loads(path.read_text())
    assert result["message"].startswith("another process of the run stopped answering or failed")
    assert "\n" not in result["message"]
    assert result["seconds"] < distributed.TIMEOUT.total_seconds()


# ---- whole runs under torchrun --------------------------------------------------
@pytest.fixture(scope="module")
def one_process_sine(tmp_path_factory):
    """The quick sinusoid run in one process, which the runs of two processes are compared with."""
    run_dir = tmp_path_factory.mktemp("one") / "one"
    one = subprocess.run([sys.executable, *sine(run_dir)], cwd=ROOT, env=single_thread_env(),
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    return run_dir


def test_torchrun_sinusoid_run_equals_one_process(tmp_path, one_process_sine):
    two = torchrun(*sine(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-ERROR_TAIL:]
    assert_same_params(final_params(tmp_path / "two"), final_params(one_process_sine))
    results = {n: json.loads((folder / "results.json").read_text())
               for n, folder in (("one", one_process_sine), ("two", tmp_path / "two"))}
    assert results["one"]["world_size"] == 1 and results["two"]["world_size"] == 2
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    mse_one, mse_two = (torch.tensor(results[n]["mse"]["maml"]["5"]["mean"]) for n in ("one", "two"))
    torch.testing.assert_close(mse_two, mse_one, rtol=1e-5, atol=1e-6)
    rows = {n: (folder / "metrics.csv").read_text().splitlines()
            for n, folder in (("one", one_process_sine), ("two", tmp_path / "two"))}
    assert len(rows["one"]) == len(rows["two"]) == 7  # rank 0 alone wrote its rows
    assert "1 process" not in two.stdout and two.stdout.count('"world_size": 2') == 1  # printed once


def test_two_torchrun_nodes_on_localhost_equal_one_process(tmp_path, one_process_sine):
    port = free_port()
    logs = [open(tmp_path / f"node{rank}.log", "w") for rank in range(2)]  # files: a full pipe cannot block a node
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               *sine(tmp_path / f"node{rank}")],
                              cwd=ROOT, env=single_thread_env(), stdout=logs[rank], stderr=subprocess.STDOUT)
             for rank in range(2)]
    try:
        codes = [node.wait(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    outputs = [(tmp_path / f"node{rank}.log").read_text() for rank in range(2)]
    assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert not (tmp_path / "node1").exists()  # the process of rank 1 writes nothing
    assert_same_params(final_params(tmp_path / "node0"), final_params(one_process_sine))


def test_torchrun_omniglot_run_equals_one_process_and_stops_together(real_data_dir, tmp_path):
    # 5 meta-training, 5 validation and 7 test tasks: uneven shares over 2 processes.
    args = ["omniglot_maml.py", "--split", "paper", "--meta-iterations", "6", "--meta-batch-size", "5",
            "--validate-every", "3", "--log-every", "2", "--validation-tasks", "5", "--test-tasks", "7",
            "--device", "cpu", "--data-dir", str(real_data_dir)]
    one = subprocess.run([sys.executable, *args, "--out-dir", str(tmp_path / "one")], cwd=ROOT,
                         env=single_thread_env(), capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(*args, "--out-dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-ERROR_TAIL:]
    checkpoints = [load_file(str(tmp_path / n / "checkpoint.pt")) for n in ("one", "two")]
    # Adam divides by the gradient's size, so in 6 steps a summation-order difference in a near-zero
    # gradient can move a parameter by a fraction of the step size (1e-3); the exact equality of the
    # meta-gradients is test_two_processes_give_the_meta_gradient_of_one's.
    assert_same_params(checkpoints[1]["params"], checkpoints[0]["params"], tolerance=1e-3)
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two")]
    assert results[1]["world_size"] == 2 and results[1]["test"]["tasks"] == 7
    assert len(results[1]["test"]["accuracy"]["mean"]) == 11
    torch.testing.assert_close(torch.tensor(results[1]["test"]["accuracy"]["mean"]),
                               torch.tensor(results[0]["test"]["accuracy"]["mean"]), rtol=0, atol=0.03)

    budget = torchrun(*args, "--meta-iterations", "1000", "--train-minutes", "0.0001",
                      "--out-dir", str(tmp_path / "budget"))
    assert budget.returncode == 0, budget.stderr[-ERROR_TAIL:]
    assert json.loads((tmp_path / "budget" / "results.json").read_text())["test"]["meta_iterations"] == 2
    assert budget.stdout.count("stopped after iteration 2") == 1


def _children(pid):
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except OSError:
                pass
    return children


def start_and_kill_after_first_checkpoint(args, run_dir, victim):
    """Start torchrun, wait for the first checkpoint, then SIGKILL `victim`:
    'all' kills the whole launch, 'worker' one worker process only; or send
    torchrun a SIGTERM ('sigterm')."""
    launch = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-port", str(free_port()), *args],
                              cwd=ROOT, env=single_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    if victim == "sigterm":  # torchrun passes it on to its workers
        launch.send_signal(signal.SIGTERM)
    workers = _children(launch.pid)  # torchrun starts each worker in a session of its own
    for pid in {"all": workers + [launch.pid], "worker": workers[-1:], "sigterm": []}[victim]:
        os.kill(pid, signal.SIGKILL)
    output = launch.communicate(timeout=120)[0]
    return launch.returncode, output


SLOW = ["--hidden-units", "200", "--meta-batch-size", "100"]  # slow enough to be killed half way


def test_killed_torchrun_run_resumes_under_torchrun_and_with_another_world_size(tmp_path, straight_launched_sine):
    for name, resume_processes in (("two-two", 2), ("two-one", 1)):
        run_dir = tmp_path / name
        start_and_kill_after_first_checkpoint(sine(run_dir, "--meta-iterations", "60", "--checkpoint-every", "10", *SLOW),
                                              run_dir, victim="all")
        assert load_file(str(run_dir / "checkpoint.pt"))["iteration"] < 60
        resume = ["sinusoid_maml.py", "--resume", "--out-dir", str(run_dir)]
        if resume_processes == 2:
            resumed = torchrun(*resume)
        else:
            resumed = subprocess.run([sys.executable, *resume], cwd=ROOT, env=single_thread_env(),
                                     capture_output=True, text=True, timeout=240)
        assert resumed.returncode == 0, resumed.stderr[-ERROR_TAIL:]
        assert ("resuming a run of 2 process(es) in 1" in resumed.stdout) == (resume_processes == 1)
        assert_same_params(final_params(run_dir), final_params(straight_launched_sine))
        assert json.loads((run_dir / "results.json").read_text())["world_size"] == resume_processes


def test_a_killed_worker_stops_the_whole_run_without_hanging(tmp_path):
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    code, output = start_and_kill_after_first_checkpoint(
        sine(run_dir, "--meta-iterations", "100000", "--checkpoint-every", "5"), run_dir, victim="worker")
    assert code != 0
    assert time.perf_counter() - start < 120
    assert load_file(str(run_dir / "checkpoint.pt"))["iteration"] >= 5  # kept for --resume


@pytest.mark.parametrize("args, message", [
    (["--meta-batch-size", "1"], "2 processes cannot share --meta-batch-size 1: start at most 1 processes"),
    (["--eval-tasks", "1"], "--eval-tasks must be at least 2"),
])
def test_bad_input_under_torchrun_is_one_line(tmp_path, args, message):
    result = torchrun(*sine(tmp_path / "run", *args))
    assert result.returncode != 0
    # One line from each process that says it before torchrun stops the others.
    assert 1 <= sum(line.startswith(f"error: {message}") for line in result.stderr.splitlines()) <= 2
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def launcher(*args, processes=2):
    return subprocess.run([sys.executable, "distributed.py", "--processes", str(processes), *args], cwd=ROOT,
                          env=single_thread_env(), capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def straight_launched_sine(tmp_path_factory):
    """The run the signalled ones are compared with, launched uninterrupted, once for both."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    straight = launcher(*sine(run_dir, "--meta-iterations", "60", "--checkpoint-every", "10", "--log-every", "7",
                              *SLOW))
    assert straight.returncode == 0, straight.stderr[-2000:]
    return run_dir


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_stops_every_process_with_its_code_and_resumes_to_the_same_run(
        tmp_path, signum, straight_launched_sine):
    run_dir = tmp_path / "run"
    args = sine(run_dir, "--meta-iterations", "60", "--checkpoint-every", "10", "--log-every", "7", *SLOW)
    launch = subprocess.Popen([sys.executable, "distributed.py", "--processes", "2", *args], cwd=ROOT,
                              env=single_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    # As a terminal's Ctrl-C (to the whole process group) or a scheduler's SIGTERM would.
    os.killpg(launch.pid, signum)
    output = launch.communicate(timeout=120)[0]
    assert launch.returncode == 128 + signum, output[-2000:]
    stopped_at = load_file(run_dir / "checkpoint.pt")["iteration"]
    assert 10 <= stopped_at < 60 and "Traceback" not in output
    assert f"stopped at iteration {stopped_at}, checkpoint saved; continue with: python distributed.py " \
           f"--processes 2 sinusoid_maml.py" in output
    resumed = launcher("sinusoid_maml.py", "--resume", "--out-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-ERROR_TAIL:]
    assert all(torch.equal(a, b) for a, b in zip(final_params(run_dir), final_params(straight_launched_sine)))
    # Every process's metric window was in the checkpoint: the row after the stop is the uninterrupted one.
    assert metrics_rows(run_dir / "metrics.csv") == metrics_rows(straight_launched_sine / "metrics.csv")


def test_the_launcher_exits_with_the_code_of_a_failure_in_its_processes(tmp_path):
    bad = launcher(*sine(tmp_path / "run", "--eval-tasks", "1"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert 1 <= sum(line.startswith("error: --eval-tasks must be at least 2") for line in bad.stderr.splitlines()) <= 2
    assert not (tmp_path / "run").exists()  # a failed start leaves no folder behind


def test_a_resumed_process_takes_its_own_metric_window_or_its_share_of_the_sums():
    windows = [[[1.0, 2.0], [5.0, 5.0]], [[10.0, 20.0], [5.0, 5.0]]]  # 2 processes: a share, a replicated metric
    checkpoint = dict(windows=windows)
    assert distributed.own_window(None, 0, 2, metrics=2) == [[], []]
    assert distributed.own_window(dict(window=windows[0]), 0, 1, metrics=2) == windows[0]  # an older checkpoint
    assert distributed.own_window(checkpoint, 1, 2, 2, replicated=(1,)) == [[10.0, 20.0], [5.0, 5.0]]
    assert distributed.own_window(checkpoint, 0, 1, 2, replicated=(1,)) == [[11.0, 22.0], [5.0, 5.0]]
    three = [distributed.own_window(checkpoint, rank, 3, 2, replicated=(1,)) for rank in range(3)]
    assert three == [[[11.0, 22.0], [5.0, 5.0]], [[0.0, 0.0], [5.0, 5.0]], [[0.0, 0.0], [5.0, 5.0]]]
    # A metrics row sums the processes' means: the same row in any number of processes.
    assert sum(sum(w[0]) / len(w[0]) for w in three) == sum(sum(w[0]) / len(w[0]) for w in windows)


def test_sigterm_to_torchrun_stops_the_workers_with_a_checkpoint_and_torchrun_reports_it(tmp_path):
    """What torchrun allows: its workers stop cleanly, it then exits 1 with its own report."""
    run_dir = tmp_path / "run"
    args = sine(run_dir, "--meta-iterations", "60", "--checkpoint-every", "10", *SLOW)
    code, output = start_and_kill_after_first_checkpoint(args, run_dir, victim="sigterm")
    stopped_at = load_file(run_dir / "checkpoint.pt")["iteration"]
    assert 10 <= stopped_at < 60 and code == 1
    assert f"stopped at iteration {stopped_at}, checkpoint saved; continue with: torchrun --nproc-per-node 2 " \
           f"sinusoid_maml.py" in output
    resumed = torchrun("sinusoid_maml.py", "--resume", "--out-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-ERROR_TAIL:]


FAILS_IN_RANK_1 = """
import os, sys, time
if os.environ["RANK"] == "1":
    sys.exit(3)
time.sleep(60)  # process 0 runs on, then fails too: the launcher ends it before
sys.exit(5)
"""


def launch_in_this_process(tmp_path, source):
    """distributed.launch of a script of that source in 2 processes; its exit code. The
    signal handlers it sets are put back."""
    script = tmp_path / "script.py"
    script.write_text(source)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return distributed.launch(2, [str(script)])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_the_launcher_reports_the_process_that_failed_first_in_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "FAILURE_GRACE_SECONDS", 0.5)
    code = launch_in_this_process(tmp_path, FAILS_IN_RANK_1)
    # Process 0, ended by the launcher half a second later (killed: 137), comes first in rank order.
    assert code == 3 and "error: process 1 of 2 failed first (exit code 3)" in capsys.readouterr().err


KILLED_IN_RANK_1 = """
import os, signal, sys, time
if os.environ["RANK"] == "1":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(0.3)  # process 0 fails soon after, as a collective would once its peer is gone
sys.exit(1)
"""


def test_the_launcher_blames_a_process_a_signal_ended_over_one_that_failed_in_the_same_look(
        tmp_path, monkeypatch, capsys):
    sleep = time.sleep
    monkeypatch.setattr(distributed.time, "sleep", lambda seconds: sleep(2.0))  # both have ended at the next look
    code = launch_in_this_process(tmp_path, KILLED_IN_RANK_1)
    assert code == 137 and "error: process 1 of 2 failed first (killed by signal 9)" in capsys.readouterr().err
    assert distributed.failed_first([1, -9, None]) == (1, -9) and distributed.failed_first([None, 3, 1]) == (1, 3)
    assert distributed.failed_first([0, None]) is None
