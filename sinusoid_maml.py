"""Sinusoid regression with MAML (Finn et al. 2017, section 5.1 and appendix C), and
the other algorithms of docs/algorithms.md that apply to regression.

Each task is a sine wave y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi],
x ~ U[-5, 5]. A 1-40-40-1 ReLU network is meta-trained to fit a new wave from
K points after a few SGD steps, beside a "pretrained" baseline: the same
network trained on all tasks pooled, then fine-tuned with the same SGD steps.

    python sinusoid_maml.py                        # the paper's setting
    python sinusoid_maml.py --k-shot 5 --meta-iterations 2000 --out-dir results/sine-test

Every value in CONFIG can be overridden as --name value (dashes for underscores).
A run writes config.json, metrics.csv, checkpoint.pt, results.json and plots to
its folder; --resume continues it from its last checkpoint.
"""
import sys

import settings  # first: --help is answered before the imports below, which take seconds on a busy machine
if __name__ == "__main__":
    settings.answer_help(__file__, __doc__, sys.argv[1:])

import functools  # noqa: E402
import math  # noqa: E402

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import files  # noqa: E402
import lifecycle  # noqa: E402
import meta_learning  # noqa: E402
import models  # noqa: E402
import reports  # noqa: E402
import signals  # noqa: E402
import utils  # noqa: E402

CONFIG = dict(
    # The experiment (the paper's section 5.1)
    algorithm="maml",           # maml (second order) | fomaml (first order) | anil (MAML, only the final
                                # layer adapts) | reptile | metasgd (MAML with learned inner step sizes) |
                                # cnp (a network reads the support set and predicts in one pass)
    k_shot=10,                  # support points per meta-training task; as many query points
    meta_iterations=70_000,     # meta-updates (and Adam steps of the pretrained baseline); a run may be
                                # continued to more (not Reptile's: its meta step is annealed over them)
    meta_batch_size=25,         # tasks per meta-update
    meta_lr=1e-3,               # Adam, outer loop of maml/fomaml and the pretrained baseline
    inner_lr=0.01,              # SGD step of the inner loop (and of fine-tuning the baseline)
    inner_steps=1,              # SGD steps in the inner loop during meta-training
    hidden_units=40,            # two hidden layers of this width
    # Reptile: inner steps on all 2K points, then theta += eps * (phi - theta); tested as it trains
    reptile_inner_optimizer="adam",  # adam (beta1 = 0, as the Reptile paper) | sgd
    reptile_inner_lr=0.01,      # step size of the Reptile inner optimizer
    reptile_inner_steps=10,     # inner steps per task, in training and at test
    reptile_meta_step=1.0,      # eps at the start, annealed linearly to 0
    # Evaluation: the same seeded test tasks for every run, so runs compare
    eval_tasks=600,             # test tasks (sine waves)
    eval_k_shots="5,10,20",     # support points per test task, comma-separated: one test per K
    eval_steps=10,              # report the query MSE after 0..eval_steps SGD steps
    eval_query_points=100,      # query points per test task
    eval_seed=1234,             # seed of the test tasks
    # The run
    seed=0,                     # seed of the initial parameters and of the training tasks
    threads=1,                  # torch threads (0: one per core that other jobs leave free); the network is
                                # too small for more than one to help much, and on a shared machine more are slower
    log_every=100,              # iterations per metrics.csv row
    checkpoint_every=1000,      # iterations between checkpoints
    out_dir="",                 # default: results/sinusoid/<algorithm>-k<k_shot>-seed<seed>[-<settings given>]
    resume=False,               # continue the run in out_dir from its checkpoint
)
INNER_OPTIMIZERS = ("adam", "sgd")
AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


def validate(cfg):
    if cfg.algorithm in meta_learning.ALGORITHMS and not meta_learning.ALGORITHMS[cfg.algorithm].regression:
        utils.fail(f"--algorithm {cfg.algorithm} classifies and does not apply to regression; choose one of "
                   + ", ".join(name for name, a in meta_learning.ALGORITHMS.items() if a.regression))
    settings.check_settings(
        cfg, choices=dict(algorithm=tuple(meta_learning.ALGORITHMS), reptile_inner_optimizer=INNER_OPTIMIZERS),
        at_least=dict(eval_tasks=2, **{key: 1 for key in (  # 2 test tasks at least for a confidence interval
            "k_shot", "meta_iterations", "meta_batch_size", "inner_steps", "hidden_units", "reptile_inner_steps",
            "eval_steps", "eval_query_points", "log_every", "checkpoint_every")}),
        positive=("meta_lr", "inner_lr", "reptile_inner_lr", "reptile_meta_step"))
    try:
        k_shots = [int(k) for k in cfg.eval_k_shots.split(",")]
    except ValueError:
        utils.fail(f"--eval-k-shots must be comma-separated integers, got {cfg.eval_k_shots!r}")
    if min(k_shots) < 1:
        utils.fail(f"--eval-k-shots must all be at least 1, got {cfg.eval_k_shots!r}")


def uniform(generator, shape, low, high):
    return low + (high - low) * torch.rand(shape, generator=generator)


def sample_sinusoids(generator, n_tasks, n_points):
    """n_tasks random sine waves, n_points random inputs each: x, y of shape
    (n_tasks, n_points, 1), and each task's amplitude and phase, shape (n_tasks, 1, 1)."""
    amplitude = uniform(generator, (n_tasks, 1, 1), *AMPLITUDE_RANGE)
    phase = uniform(generator, (n_tasks, 1, 1), *PHASE_RANGE)
    x = uniform(generator, (n_tasks, n_points, 1), *INPUT_RANGE)
    return x, amplitude * torch.sin(x - phase), amplitude, phase


def mse(prediction, y):
    return (prediction - y).pow(2).mean()


def main(argv=None):
    # ---- config -------------------------------------------------------------
    cfg, given = settings.parse_config(CONFIG, argv, __doc__, comments=settings.config_comments(__file__))
    validate(cfg)
    run = lifecycle.Run("sinusoid", __file__, argv, cfg, given, CONFIG, device=torch.device("cpu"), threads=cfg.threads,
                        folder=f"{cfg.algorithm}-k{cfg.k_shot}-seed{cfg.seed}",
                        named_keys={"algorithm", "k_shot", "seed"},
                        shared_tasks=dict(meta_batch_size=cfg.meta_batch_size, eval_tasks=cfg.eval_tasks),
                        free_on_resume=meta_learning.free_on_resume)
    cfg = run.cfg
    run.start()

    # ---- the algorithm, chosen once -------------------------------------------
    algorithm = meta_learning.ALGORITHMS[cfg.algorithm]
    inner = dict(inner_steps=cfg.reptile_inner_steps, inner_lr=cfg.reptile_inner_lr,
                 inner_optimizer=cfg.reptile_inner_optimizer) if cfg.algorithm == "reptile" else \
        dict(inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr)
    learner = meta_learning.Learner(models.mlp, mse, meta_batch_size=cfg.meta_batch_size, features=models.mlp_features,
                                    meta_iterations=cfg.meta_iterations, meta_step=cfg.reptile_meta_step,
                                    sum_across=run.sum_across,
                                    **inner)

    # ---- model: the algorithm's meta-parameters and the pretrained baseline, same init
    sizes = [1, cfg.hidden_units, cfg.hidden_units, 1]
    init_generator = torch.Generator().manual_seed(cfg.seed)
    init = models.init_mlp(sizes, generator=init_generator)
    meta_params = algorithm.parameters(learner, [p.clone().requires_grad_() for p in init], init_generator)
    baseline_params = [p.clone().requires_grad_() for p in init]
    meta_optimizer = torch.optim.Adam(meta_params, lr=cfg.meta_lr)
    baseline_optimizer = torch.optim.Adam(baseline_params, lr=cfg.meta_lr)
    task_generator = torch.Generator().manual_seed(cfg.seed)
    run.track(meta_params=meta_params, baseline_params=baseline_params, meta_optimizer=meta_optimizer,
              baseline_optimizer=baseline_optimizer, task_generator=task_generator)
    k = cfg.k_shot

    # ---- meta-training ------------------------------------------------------
    for iteration in run.iterations(
            cfg.meta_iterations, recorded=("meta_loss", "baseline_loss"), same_in_every_process=("baseline_loss",),
            log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
            description=f"{cfg.algorithm} meta-training"):
        x, y, _, _ = sample_sinusoids(task_generator, cfg.meta_batch_size, 2 * k)
        # ALGORITHM: a meta-update on this process's share of the tasks, K support and K query points each
        x_share, y_share = run.take_share((x, y))
        meta_loss, _, _ = algorithm.meta_update(learner, meta_params, meta_optimizer, (x_share[:, :k], y_share[:, :k]),
                                                (x_share[:, k:], y_share[:, k:]), iteration)
        # the pretrained baseline: an Adam step on all the tasks' points pooled (cheap: every process does it)
        baseline_loss = mse(models.mlp(baseline_params, x.reshape(-1, 1)), y.reshape(-1, 1))
        baseline_optimizer.zero_grad()
        baseline_loss.backward()
        baseline_optimizer.step()
        # float64, so that a metrics row's sum over its iterations is exact
        run.record(meta_loss=meta_loss.double(), baseline_loss=baseline_loss.double())

    # ---- evaluation: the same 600 test tasks for every run -----------------
    eval_generator = torch.Generator().manual_seed(cfg.eval_seed)
    query_x, query_y, amplitude, phase = sample_sinusoids(
        eval_generator, cfg.eval_tasks, cfg.eval_query_points)
    k_shots = [int(k) for k in cfg.eval_k_shots.split(",")]
    support = {}
    for k_eval in k_shots:
        x = uniform(eval_generator, (cfg.eval_tasks, k_eval, 1), *INPUT_RANGE)
        support[k_eval] = (x, amplitude * torch.sin(x - phase))
    test_adaptation = dict(lr=learner.inner_lr, optimizer=learner.inner_optimizer,
                           adapted=meta_learning.inner_loop_mask(len(init), head_only=algorithm.head_only)) \
        if algorithm.steps else {}
    methods = {  # method: its metric_fn(prediction, y) on tasks' query sets from their support sets, per step
        cfg.algorithm: functools.partial(meta_learning.evaluate, algorithm, learner, params=meta_params,
                                         steps=cfg.eval_steps, **test_adaptation),
        "pretrained": functools.partial(meta_learning.evaluate_adaptation, models.mlp, mse, params=baseline_params,
                                        steps=cfg.eval_steps, lr=cfg.inner_lr, optimizer="sgd"),
    }
    results = {"mse": {}, "tasks": cfg.eval_tasks, "train_seconds": round(run.train_seconds, 1),
               "meta_iterations": cfg.meta_iterations, "world_size": run.world_size}
    for method, evaluate in methods.items():
        results["mse"][method] = {}
        for k_eval in utils.progress(k_shots, desc=f"testing {method} on {cfg.eval_tasks} tasks", transient=True,
                                     disable=run.rank > 0):
            per_task = evaluate(metric_fn=mse, support=run.take_share(support[k_eval]),
                                query=run.take_share((query_x, query_y)))
            results["mse"][method][str(k_eval)] = reports.summarize(run.gather(per_task))
    if run.rank > 0:
        return results
    run.save_results(results)
    print_table(results, [0, 1, 5, cfg.eval_steps] if cfg.eval_steps > 5 else range(cfg.eval_steps + 1))

    # ---- plots --------------------------------------------------------------
    plot_training(run.metrics_rows(), cfg.algorithm, run.path("training_curve.png"))
    plot_mse_vs_steps(results, run.path("mse_vs_steps.png"))
    plot_fits(methods, sample_sinusoids(eval_generator, 3, max(k_shots)), cfg.k_shot,
              cfg.eval_steps, run.path("fits.png"))
    print(f"results in {run.dir}")
    return results


def print_table(results, steps):
    print("query MSE after adaptation, mean ± 95% CI over the tasks that did not diverge "
          "(a method that predicts in one pass: under step 0)")
    print(f"{'method':<11}{'K':>3}" + "".join(f"{f'step {s}':>22}" for s in steps))
    for method, by_k in results["mse"].items():
        for k, stats in by_k.items():
            print(f"{method:<11}{k:>3}" + "".join(
                f"{reports.number(stats['mean'][s]):>11} ± {reports.number(stats['ci95'][s]):<8}"
                if s < len(stats["mean"]) else f"{'-':>22}" for s in steps))
            if any(stats["diverged"]):
                worst = max(range(len(stats["diverged"])), key=stats["diverged"].__getitem__)
                print(f"  {method}, K = {k}: diverged on {stats['diverged'][worst]} of {results['tasks']} tasks "
                      f"after {worst} steps (median MSE there {reports.number(stats['median'][worst])})")


def plot_training(rows, algorithm, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    iterations = [r["iteration"] for r in rows]
    ax.plot(iterations, [r["meta_loss"] for r in rows], label=f"{algorithm}: query MSE after adaptation")
    ax.plot(iterations, [r["baseline_loss"] for r in rows], label="pretrained: MSE on pooled tasks")
    ax.set(xlabel="meta-iteration", ylabel="training MSE (mean per metrics row)", title="Sinusoid meta-training")
    reports.log_scale_if_possible(ax)
    ax.legend()
    files.save_figure(fig, path)


def plot_mse_vs_steps(results, path):
    """The paper's Fig. 3: query MSE vs gradient steps at test time, per K."""
    methods = list(results["mse"])
    k_shots = list(results["mse"][methods[0]])
    max_steps = max(len(stats["mean"]) for by_k in results["mse"].values() for stats in by_k.values()) - 1
    fig, axes = plt.subplots(1, len(k_shots), figsize=(4 * len(k_shots), 3.5), squeeze=False)
    for ax, k in zip(axes[0], k_shots):
        for method in methods:
            stats = results["mse"][method][k]
            reports.plot_with_ci(ax, stats["mean"], stats["ci95"], method, span=max_steps + 1)
        ax.set(title=f"K = {k}: mean, 95% CI over {results['tasks']} tasks", xlabel="gradient steps",
               ylabel="query MSE")
        reports.log_scale_if_possible(ax)
        ax.legend()
    files.save_figure(fig, path)


def plot_fits(methods, tasks, k, steps, path):
    """The paper's Fig. 2: true wave, the K support points, and the prediction
    before adaptation, after 1 and after `steps` steps (or of one pass), per method and task."""
    x_support, y_support, amplitude, phase = tasks
    x_support, y_support = x_support[:, :k], y_support[:, :k]
    grid = torch.linspace(*INPUT_RANGE, 200).view(1, -1, 1).expand(len(amplitude), -1, -1)
    fig, axes = plt.subplots(len(methods), len(amplitude),
                             figsize=(4 * len(amplitude), 3 * len(methods)), squeeze=False)
    for row, (method, evaluate) in enumerate(methods.items()):
        # an identity "metric" returns the predictions themselves
        predictions = evaluate(metric_fn=lambda prediction, y: prediction, support=(x_support, y_support),
                               query=(grid, grid))
        lines = ((0, ":", "dimgray", "pre-update"), (1, "--", "limegreen", "1 grad step"),
                 (steps, "-", "darkgreen", f"{steps} grad steps")) if predictions.shape[1] > 1 else \
            ((0, "-", "darkgreen", "one pass"),)
        for task, ax in enumerate(axes[row]):
            ax.plot(grid[task], amplitude[task, 0] * torch.sin(grid[task] - phase[task, 0]),
                    color="red", label="ground truth")
            for step, style, color, label in lines:
                ax.plot(grid[task], predictions[task, step], style, color=color, linewidth=2, label=label)
            ax.scatter(x_support[task], y_support[task], color="purple", marker="^",
                       zorder=3, label=f"{k} points used")
            ax.set(title=f"{method}, K = {k}", xlabel="x", ylabel="y", ylim=(-6, 6))
    axes[0, 0].legend(fontsize=7, loc="lower left")
    files.save_figure(fig, path)


if __name__ == "__main__":
    signals.run_main(main, sys.argv[1:])
