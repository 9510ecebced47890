"""Seconds per meta-iteration: the vmapped MAML core against the per-task loop,
measured in one process on the same inputs (medians of repeated iterations).

    python benchmark.py sinusoid
    python benchmark.py omniglot [--device cuda]

A meta-iteration is a full outer step: meta-loss, backward, Adam update.
Omniglot timings use random images of the real shape; speed does not depend
on pixel values.
"""
import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F

import meta_learning
import models

# name: (n_way, k_shot, meta_batch_size, inner_steps, inner_lr), the paper's settings
OMNIGLOT_CONFIGS = {
    "5w1s": (5, 1, 32, 1, 0.4 * 5),
    "5w5s": (5, 5, 32, 1, 0.4 * 5),
    "20w1s": (20, 1, 16, 5, 0.1 * 20),
    "20w5s": (20, 5, 16, 5, 0.1 * 20),
}
IMPLEMENTATIONS = {"vmap": meta_learning.maml_meta_loss, "loop": meta_learning.maml_meta_loss_loop}


def seconds_per_iteration(meta_loss_fn, forward, loss_fn, params, sample, steps, lr, first_order,
                          device, repeats, warmup=2):
    optimizer = torch.optim.Adam(params, lr=1e-3)
    times = []
    for i in range(warmup + repeats):
        support, query = sample()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _ = meta_loss_fn(forward, loss_fn, params, support, query, steps, lr, first_order)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def sinusoid(device, repeats):
    params = [p.to(device).requires_grad_() for p in models.init_mlp([1, 40, 40, 1])]

    def sample():
        x = torch.rand(25, 20, 1, device=device) * 10 - 5
        y = 2 * torch.sin(x - 1)
        return (x[:, :10], y[:, :10]), (x[:, 10:], y[:, 10:])

    mse = lambda prediction, y: (prediction - y).pow(2).mean()  # noqa: E731
    print("| sinusoid, K=10, 25 tasks, 1 step | vmap s/iter | loop s/iter | loop / vmap |")
    print("|---|---|---|---|")
    for first_order in (False, True):
        t = {name: seconds_per_iteration(fn, models.mlp, mse, params, sample, 1, 0.01, first_order,
                                         device, repeats * 50)
             for name, fn in IMPLEMENTATIONS.items()}
        order = "first order" if first_order else "second order"
        print(f"| {order} | {t['vmap']:.5f} | {t['loop']:.5f} | {t['loop'] / t['vmap']:.1f}x |")


def omniglot(device, repeats):
    print("| Omniglot (conv, paper settings) | order | vmap s/iter | loop s/iter | loop / vmap |")
    print("|---|---|---|---|---|")
    for name, (n_way, k_shot, tasks, steps, lr) in OMNIGLOT_CONFIGS.items():
        params = [p.to(device).requires_grad_() for p in models.init_cnn(n_way)]
        labels = torch.arange(n_way, device=device).repeat_interleave(k_shot).expand(tasks, -1)

        def sample():
            images = torch.rand(tasks, 2 * n_way * k_shot, 1, 28, 28, device=device)
            return (images[:, :n_way * k_shot], labels), (images[:, n_way * k_shot:], labels)

        for first_order in (False, True):
            t = {impl: seconds_per_iteration(fn, models.cnn, F.cross_entropy, params, sample, steps, lr,
                                             first_order, device, repeats)
                 for impl, fn in IMPLEMENTATIONS.items()}
            order = "first" if first_order else "second"
            print(f"| {name} ({tasks} tasks, {steps} step{'s' if steps > 1 else ''}) | {order} | "
                  f"{t['vmap']:.4f} | {t['loop']:.4f} | {t['loop'] / t['vmap']:.2f}x |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=["sinusoid", "omniglot"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5, help="timed meta-iterations per cell (x50 for sinusoid)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    {"sinusoid": sinusoid, "omniglot": omniglot}[args.experiment](device, args.repeats)
