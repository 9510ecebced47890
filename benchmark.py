"""Seconds per meta-iteration, end to end (task sampling, meta-gradient, Adam
step), for the per-task loop, the vmapped core over the whole meta-batch and the core the
scripts use now, measured in one process on the same inputs (medians of
repeated iterations); for Omniglot also the time of the convolutions alone.

    python benchmark.py sinusoid
    python benchmark.py omniglot [--device cuda] [--configs 5w1s,20w5s] [--repeats 3]
    python benchmark.py processes [--configs 5w1s,20w1s]   # needs the data in data/omniglot
    python benchmark.py algorithms [--configs 5w1s] [--repeats 20]   # each of meta_learning.ALGORITHMS

Omniglot tasks are sampled by the real task sampler from random images of the
real shape and number (speed does not depend on pixel values), so no data is needed.

"convs alone" replays every convolution kernel call that one second- or
first-order meta-iteration of the per-task loop makes (forward, backward and
the double backward's), each on random tensors of the recorded shapes, with
nothing else in between: what a meta-iteration would cost if everything but
its convolutions were free.
"""
import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import meta_learning
import models
import omniglot_data
import omniglot_maml
import sinusoid_maml

# name: (n_way, k_shot, meta_batch_size, inner_steps, inner SGD step), the paper's settings
OMNIGLOT_CONFIGS = {
    "5w1s": (5, 1, 32, 1, 0.4 * 5),
    "5w5s": (5, 5, 32, 1, 0.4 * 5),
    "20w1s": (20, 1, 16, 5, 0.1 * 20),
    "20w5s": (20, 5, 16, 5, 0.1 * 20),
}
TRAIN_CHARACTERS = 1100  # the paper split's meta-training characters


def one_backward(meta_loss_fn):
    """A meta-loss function turned into a meta-gradient function: one backward
    pass over the whole meta-batch, as the scripts did before grouping tasks."""
    def meta_gradient(forward, loss_fn, params, support, query, steps, lr, first_order):
        loss, predictions = meta_loss_fn(forward, loss_fn, params, support, query, steps, lr, first_order)
        loss.backward()
        return loss.detach(), predictions
    return meta_gradient


def implementations(grouping):
    return {
        "loop": one_backward(meta_learning.maml_meta_loss_loop),
        "vmap all at once": one_backward(meta_learning.maml_meta_loss),
        "now": functools.partial(meta_learning.maml_meta_gradient, **grouping),
    }


def seconds_per_iteration(meta_gradient, forward, loss_fn, params, sample, steps, lr, first_order,
                          device, repeats, warmup=2):
    optimizer = torch.optim.Adam(params, lr=1e-3)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        support, query = sample()
        optimizer.zero_grad()
        meta_gradient(forward, loss_fn, params, support, query, steps, lr, first_order)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class ConvolutionRecorder(TorchDispatchMode):
    """Records every convolution kernel call (forward and backward) made while active."""
    OPS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            self.calls.append((func, [(a.shape, a.dtype, a.device) if isinstance(a, torch.Tensor) else a
                                      for a in args]))
        return func(*args, **(kwargs or {}))


def convolution_seconds(calls, device, repeats):
    """Median time to replay the recorded convolution calls on random tensors."""
    replays = [(func, [torch.randn(a[0], dtype=a[1], device=a[2]) if isinstance(a, tuple) else a for a in args])
               for func, args in calls]
    totals = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for func, args in replays:
            func(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        totals.append(time.perf_counter() - start)
    return statistics.median(totals[1:])


def sinusoid(device, repeats):
    params = [p.to(device).requires_grad_() for p in models.init_mlp([1, 40, 40, 1])]
    generator = torch.Generator().manual_seed(0)

    def sample():
        x, y, _, _ = sinusoid_maml.sample_sinusoids(generator, 25, 20)
        x, y = x.to(device), y.to(device)
        return (x[:, :10], y[:, :10]), (x[:, 10:], y[:, 10:])

    impls = implementations(dict(tasks_per_call=None, batched=True))  # as sinusoid_maml.py
    print("| sinusoid, K=10, 25 tasks, 1 step | " + " | ".join(f"{name} s/iter" for name in impls) + " |")
    print("|---|" + "---|" * len(impls))
    for first_order in (False, True):
        t = {name: seconds_per_iteration(fn, models.mlp, sinusoid_maml.mse, params, sample, 1, 0.01,
                                         first_order, device, repeats * 50)
             for name, fn in impls.items()}
        order = "first order" if first_order else "second order"
        print(f"| {order} | " + " | ".join(f"{seconds:.5f}" for seconds in t.values()) + " |")


def omniglot(device, repeats, configs):
    print("| Omniglot (paper settings) | order | loop s/iter | vmap all at once s/iter | now s/iter | "
          "vmap / now | convs alone s | now / convs | now runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    random_images = np.random.default_rng(0).integers(0, 256, (TRAIN_CHARACTERS, omniglot_data.DRAWERS, 28, 28),
                                                      dtype=np.uint8)
    sampler = omniglot_data.TaskSampler(random_images, rotations=True, device=device)
    for name in configs:
        n_way, k_shot, tasks, steps, lr = OMNIGLOT_CONFIGS[name]
        params = [p.to(device).requires_grad_() for p in models.init_cnn(n_way)]
        generator = torch.Generator().manual_seed(0)
        sample = functools.partial(sampler.sample, tasks, n_way, k_shot, k_shot, generator)
        grouping = meta_learning.task_grouping(device, tasks, 2 * n_way * k_shot)  # as omniglot_maml.py
        impls = implementations(grouping)
        for first_order in (False, True):
            t = {impl: seconds_per_iteration(fn, models.cnn, F.cross_entropy, params, sample, steps, lr,
                                             first_order, device, repeats)
                 for impl, fn in impls.items()}
            recorder = ConvolutionRecorder()
            with recorder:
                impls["loop"](models.cnn, F.cross_entropy, params, *sample(), steps, lr, first_order)
            convs = convolution_seconds(recorder.calls, device, repeats)
            order = "first" if first_order else "second"
            runs = (f"vmap, groups of {grouping['tasks_per_call'] or tasks} tasks" if grouping["batched"]
                    else "task by task")
            print(f"| {name} ({tasks} tasks, {steps} step{'s' if steps > 1 else ''}) | {order} | "
                  + " | ".join(f"{seconds:.4f}" for seconds in t.values())
                  + f" | {t['vmap all at once'] / t['now']:.2f}x | {convs:.4f} | {t['now'] / convs:.2f}x | {runs} |",
                  flush=True)


def algorithms(device, repeats, configs):
    """Seconds per meta-iteration of each algorithm of meta_learning.ALGORITHMS as
    omniglot_maml.py runs it with its paper settings (PAPER_DEFAULTS: MAML's meta-batch of
    32 tasks; Reptile's 5 tasks of 10 images per class; Prototypical Networks' one episode
    of 60 classes and 5 queries each), their iterations interleaved in one process so that
    all see the same machine."""
    random_images = np.random.default_rng(0).integers(0, 256, (TRAIN_CHARACTERS, omniglot_data.DRAWERS, 28, 28),
                                                      dtype=np.uint8)
    sampler = omniglot_data.TaskSampler(random_images, rotations=True, device=device)
    names = list(meta_learning.ALGORITHMS)
    print("| Omniglot (paper settings) | " + " | ".join(f"{name} s/iter" for name in names) + " |")
    print("|---|" + "---|" * len(names))
    for config in configs:
        n_way, k_shot = OMNIGLOT_CONFIGS[config][:2]
        runs = {}
        for name in names:
            cfg = types.SimpleNamespace(**{**omniglot_maml.CONFIG, "algorithm": name, "n_way": n_way, "k_shot": k_shot})
            omniglot_maml.resolve_paper_defaults(cfg)
            algorithm = meta_learning.ALGORITHMS[name]
            network, forward, features, _ = omniglot_maml.build_network("cnn", n_way, torch.Generator().manual_seed(0),
                                                                         device)
            learner, train_tasks, _ = omniglot_maml.algorithm_setup(
                cfg, algorithm, forward, features,
                meta_learning.inner_loop_mask(len(network), head_only=algorithm.head_only), device)
            params = algorithm.parameters(learner, network, torch.Generator().manual_seed(0))
            sample = functools.partial(sampler.sample, cfg.meta_batch_size, *train_tasks,
                                       torch.Generator().manual_seed(0))
            runs[name] = (learner, params, torch.optim.Adam(params, lr=cfg.meta_lr), sample, [])
        for round in range(2 + repeats):  # the first two rounds warm up
            for name, (learner, params, optimizer, sample, times) in runs.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                meta_learning.ALGORITHMS[name].meta_update(learner, params, optimizer, *sample(), round)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if round >= 2:
                    times.append(time.perf_counter() - start)
        print(f"| {config} | " + " | ".join(f"{statistics.median(run[-1]):.4f}" for run in runs.values()) + " |",
              flush=True)


# How each launch of omniglot_maml.py runs: (command prefix, threads per process).
LAUNCHES = {
    "1 process, 1 thread": ([sys.executable], 1),
    "1 process, 2 threads": ([sys.executable], 2),
    "2 processes, 1 thread each": ([sys.executable, "distributed.py", "--processes", "2"], 1),
}
# Meta-iterations timed per launch: 20 to 50 s of training each on a 2-core CPU.
PROCESS_ITERATIONS = {"5w1s": 60, "5w5s": 12, "20w1s": 20, "20w5s": 2}


def processes(configs):
    """Meta-iterations per second of omniglot_maml.py itself (train_seconds in
    its results.json) on the paper split, launched in each way of LAUNCHES."""
    print("| Omniglot (paper split) | " + " | ".join(f"{name}: it/s" for name in LAUNCHES)
          + " | 2 processes / 1 process, 1 thread |")
    print("|---|" + "---|" * (len(LAUNCHES) + 1))
    for name in configs:
        n_way, k_shot = OMNIGLOT_CONFIGS[name][:2]
        iterations = PROCESS_ITERATIONS[name]
        rates = []
        for launcher, threads in LAUNCHES.values():
            with tempfile.TemporaryDirectory() as out_dir:
                subprocess.run([*launcher, "omniglot_maml.py", "--split", "paper", "--n-way", str(n_way),
                                "--k-shot", str(k_shot), "--meta-iterations", str(iterations), "--device", "cpu",
                                "--validate-every", str(iterations), "--log-every", str(iterations),
                                "--validation-tasks", "2", "--test-tasks", "2", "--out-dir", out_dir],
                               env={**os.environ, "OMP_NUM_THREADS": str(threads)}, check=True,
                               capture_output=True)
                with open(os.path.join(out_dir, "results.json")) as f:
                    rates.append(iterations / json.load(f)["test"]["train_seconds"])
        print(f"| {name} ({iterations} iterations) | " + " | ".join(f"{rate:.3f}" for rate in rates)
              + f" | {rates[2] / rates[0]:.2f}x |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=["sinusoid", "omniglot", "processes", "algorithms"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed meta-iterations per cell (x50 for sinusoid)")
    parser.add_argument("--configs", default=",".join(OMNIGLOT_CONFIGS), help="Omniglot configurations to time")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    if args.experiment == "sinusoid":
        sinusoid(device, args.repeats)
    elif args.experiment == "omniglot":
        omniglot(device, args.repeats, args.configs.split(","))
    elif args.experiment == "algorithms":
        algorithms(device, args.repeats, args.configs.split(","))
    else:
        processes(args.configs.split(","))
