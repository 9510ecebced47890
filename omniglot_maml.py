"""Omniglot N-way K-shot classification with MAML (Finn et al. 2017, section 5.2,
Table 1, appendix A.1), first-order MAML and Reptile.

    python omniglot_maml.py                          # 5-way 1-shot, the paper's setting
    python omniglot_maml.py --n-way 20 --k-shot 5    # any of Table 1's four configurations
    python omniglot_maml.py --split paper            # the paper's 1100/100/423 character split
    python omniglot_maml.py --out-dir results/omniglot/RUN --eval-only   # test a saved run

Every value in CONFIG can be overridden as --name value (dashes for underscores).
A run writes config.json, metrics.csv, checkpoint.pt (latest), best.pt (best
validation accuracy), results.json and plots to its folder; --resume continues it.

Batch norm always uses the statistics of the batch it sees, at meta-test time
too: the query set of a task is classified as one batch (transductive, as in
the paper and its code).
"""
import functools
import json
import math
import os
import sys
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import distributed  # noqa: E402
import meta_learning  # noqa: E402
import models  # noqa: E402
import omniglot_data  # noqa: E402
import utils  # noqa: E402

CONFIG = dict(
    # The experiment
    algorithm="maml",           # maml (second order) | fomaml (first order) | reptile
    n_way=5,                    # classes per task (N)
    k_shot=1,                   # support images per class; the query set has as many (official code)
    split="background",         # background: meta-train on images_background (minus 5 validation
                                # alphabets), meta-test on images_evaluation; paper: 1100/100/423
    model="cnn",                # cnn (stride-2 convs, the paper's) | maxpool | mlp (256-128-64-64, "no conv")
    rotate_test_classes=False,  # rotations as new classes for validation/test too (the official code does)
    # Meta-training (None: the paper's value for the algorithm and N-way, PAPER_DEFAULTS below)
    meta_lr=1e-3,               # Adam, outer loop of maml/fomaml
    meta_iterations=None,       # meta-updates; a run may be continued to more (not Reptile's: annealed over them)
    meta_batch_size=None,       # tasks per meta-update
    inner_lr=None,              # maml/fomaml: the paper's SGD step, taken as inner_lr x N on the mean
                                # cross-entropy (the paper's code sums over the N classes); reptile: Adam step
    inner_steps=None,           # adaptation steps in meta-training
    test_steps=None,            # adaptation steps of the headline test accuracy
    # Reptile
    reptile_train_shots=10,     # images per class of a Reptile meta-training task
    reptile_inner_batch=None,   # images per Reptile inner step in meta-training
    reptile_eval_batch=None,    # images per Reptile inner step at validation/test
    reptile_meta_step=1.0,      # outer step size, annealed linearly to 0
    # Budget, validation and test
    train_minutes=0.0,          # stop meta-training once this much time is spent (0: no limit)
    log_every=50,               # iterations per metrics.csv row
    validate_every=500,         # iterations between validations (and checkpoints)
    validation_tasks=200,       # fixed validation tasks (the best parameters are kept)
    test_every=0,               # iterations between tests of the current parameters, for the accuracy-
                                # against-time curve in metrics.csv (0: only the final test of the best)
    test_tasks=600,             # fixed test tasks of the final test
    # Where and how it runs
    data_dir="data/omniglot",   # where the two archives are (downloaded if missing) and the cache
    device="auto",              # auto | cpu | cuda
    threads=0,                  # torch threads per process (0: torch's default, one per core); on a machine
                                # that other jobs share, 1 (see the README's quick start)
    seed=0,                     # seed of the initial parameters and of the training tasks
    out_dir="",                 # default: results/omniglot/<algorithm>-<split>-<N>w<K>s-seed<seed>[-<key>=<value>
                                # for each other setting given on the command line]
    resume=False,               # continue the run in out_dir from its checkpoint
    eval_only=False,            # only test the run's best checkpoint; given other --rotate-test-classes,
                                # --test-tasks or --test-steps, into results-<key>=<value>.json beside the run's
)
# Paper settings. MAML (Finn et al. App. A.1): its code's inner loss is the sum over
# classes of the mean cross-entropy over shots, i.e. N x the mean cross-entropy;
# we use the mean, so the inner SGD step is inner_lr x N. Reptile (Nichol et al.,
# their public Omniglot command lines): Adam with beta1 = 0 in the inner loop.
# N-ways other than 5 and 20 take the 5-way values below 20, the 20-way ones above.
PAPER_DEFAULTS = {
    ("maml", 5): dict(meta_iterations=60_000, meta_batch_size=32, inner_lr=0.4, inner_steps=1, test_steps=3),
    ("maml", 20): dict(meta_iterations=60_000, meta_batch_size=16, inner_lr=0.1, inner_steps=5, test_steps=5),
    ("reptile", 5): dict(meta_iterations=100_000, meta_batch_size=5, inner_lr=1e-3, inner_steps=5,
                         test_steps=50, reptile_inner_batch=10, reptile_eval_batch=5),
    ("reptile", 20): dict(meta_iterations=200_000, meta_batch_size=5, inner_lr=5e-4, inner_steps=10,
                          test_steps=50, reptile_inner_batch=20, reptile_eval_batch=10),
}
AUTO_TYPES = {"meta_iterations": int, "meta_batch_size": int, "inner_lr": float, "inner_steps": int,
              "test_steps": int, "reptile_inner_batch": int, "reptile_eval_batch": int}
ALGORITHMS = ("maml", "fomaml", "reptile")
MODELS = ("cnn", "maxpool", "mlp")
REPORTED_STEPS = 10  # test accuracy is reported after 0..max(10, test_steps) steps
VALIDATION_SEED, TEST_SEED = 1, 2  # the same validation and test tasks for every run
CHUNK_TASKS = 50  # tasks adapted at once during validation and test (a step of their progress bar)
CHECKPOINT_KEYS = ("config", "iteration", "train_seconds", "best", "params", "optimizer", "task_generator")
TEST_ONLY_KEYS = ("rotate_test_classes", "test_tasks", "test_steps")  # --eval-only may change these


def paper_values():
    """--help text of each setting whose default is the paper's value: those values."""
    texts = {}
    for key in AUTO_TYPES:
        families = {}
        for (family, n_way), values in PAPER_DEFAULTS.items():
            if key in values:
                shown = f"{values[key]:,}" if isinstance(values[key], int) else f"{values[key]:g}"
                families.setdefault("maml/fomaml" if family == "maml" else family, []).append(f"{n_way}-way {shown}")
        texts[key] = "the paper's: " + "; ".join(f"{family} {', '.join(v)}" for family, v in families.items())
    return texts


def resolve_paper_defaults(cfg):
    """Fill the None values with the paper's; keys of the other algorithm family stay None."""
    family = "reptile" if cfg.algorithm == "reptile" else "maml"
    paper = PAPER_DEFAULTS[(family, 5 if cfg.n_way < 20 else 20)]
    for key, value in paper.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)


def validate(cfg):
    utils.check_settings(
        cfg, choices=dict(algorithm=ALGORITHMS, split=omniglot_data.SPLITS, model=MODELS),
        at_least=dict(n_way=2, **{key: 1 for key in (
            "k_shot", "meta_iterations", "meta_batch_size", "inner_steps", "test_steps", "reptile_train_shots",
            "reptile_inner_batch", "reptile_eval_batch", "log_every", "validate_every", "validation_tasks")}),
        positive=("meta_lr", "inner_lr", "reptile_meta_step"),
        zero_is_off=dict(train_minutes="no limit", test_every="only the final test"))
    if cfg.test_tasks < 2:
        utils.fail(f"--test-tasks must be at least 2 for a confidence interval, got {cfg.test_tasks}")
    drawers = omniglot_data.DRAWERS
    if 2 * cfg.k_shot > drawers:
        utils.fail(f"--k-shot {cfg.k_shot} with as many query images needs {2 * cfg.k_shot} drawers; "
                   f"each character has {drawers}")
    if cfg.algorithm == "reptile" and cfg.reptile_train_shots > drawers:
        utils.fail(f"--reptile-train-shots {cfg.reptile_train_shots} exceeds the {drawers} drawers per character")


def accuracy(logits, labels):
    """Fraction classified right; NaN where the logits are not finite (a diverged adaptation)."""
    correct = (logits.argmax(dim=-1) == labels).float().mean()
    return torch.where(torch.isfinite(logits).all(), correct, math.nan)


def build_network(model, n_way, generator, device):
    """Initial parameters and forward function of the chosen network."""
    if model == "mlp":
        params = models.init_mlp([28 * 28, 256, 128, 64, 64, n_way], batch_norm=True, generator=generator)

        def forward(p, x):
            return models.mlp(p, x.flatten(1), batch_norm=True)
    else:
        params = models.init_cnn(n_way, generator=generator)
        forward = functools.partial(models.cnn, max_pool=model == "maxpool")
    return [p.to(device).requires_grad_() for p in params], forward


def main(argv=None):
    # ---- config -------------------------------------------------------------
    cfg, given = utils.parse_config(CONFIG, argv, __doc__, types=AUTO_TYPES,
                                    comments=utils.config_comments(__file__), none_means=paper_values())
    resolve_paper_defaults(cfg)
    validate(cfg)
    utils.use_threads(cfg.threads)
    rank, world_size, device = distributed.setup(utils.pick_device(cfg.device))  # 1 process unless torchrun
    utils.check_tasks_per_process(world_size, meta_batch_size=cfg.meta_batch_size,
                                  validation_tasks=cfg.validation_tasks, test_tasks=cfg.test_tasks)
    # A MAML run may be continued to more iterations; Reptile's meta step is annealed over them.
    budget_keys = {"meta_iterations"} if cfg.algorithm != "reptile" else set()
    run_dir = cfg.out_dir or utils.default_run_dir(
        "omniglot", f"{cfg.algorithm}-{cfg.split}-{cfg.n_way}w{cfg.k_shot}s-seed{cfg.seed}", cfg, given,
        named_keys={"algorithm", "split", "n_way", "k_shot", "seed"}, also_free=budget_keys)
    checkpoint_path, best_path = os.path.join(run_dir, "checkpoint.pt"), os.path.join(run_dir, "best.pt")
    checkpoint = utils.open_run(run_dir, cfg.resume or cfg.eval_only, "omniglot", rank, world_size,
                                required=CHECKPOINT_KEYS)
    retest = {}  # test settings of an --eval-only that differ from the run's own
    if checkpoint:
        cfg = utils.resumed_config(checkpoint, cfg, given, CONFIG,
                                   also_free=budget_keys | set(TEST_ONLY_KEYS if cfg.eval_only else ()))
        retest = {key: getattr(cfg, key) for key in TEST_ONLY_KEYS
                  if cfg.eval_only and getattr(cfg, key) != checkpoint["config"][key]}
    results_name = "-".join(["results", *(f"{key}={value}" for key, value in retest.items())])
    cfg.out_dir, cfg.world_size = run_dir, world_size

    # ---- data ---------------------------------------------------------------
    with distributed.rank_zero_first(rank, world_size):  # process 0 builds the cache
        try:
            images, names = omniglot_data.load_omniglot(cfg.data_dir)
        except omniglot_data.DataError as error:
            utils.fail(str(error))
    train_chars, validation_chars, test_chars = omniglot_data.split_characters(names, cfg.split)
    samplers = {
        "train": omniglot_data.TaskSampler(images[train_chars], rotations=True, device=device),
        "validation": omniglot_data.TaskSampler(images[validation_chars], cfg.rotate_test_classes, device),
        "test": omniglot_data.TaskSampler(images[test_chars], cfg.rotate_test_classes, device),
    }
    for part, sampler in samplers.items():
        if cfg.n_way > sampler.n_classes:
            utils.fail(f"--n-way {cfg.n_way} exceeds the {sampler.n_classes} classes of the "
                       f"{cfg.split} split's {part} set")
    if rank == 0:
        print(json.dumps(vars(cfg), indent=2))
        print(f"run folder: {run_dir}")
        print(f"device {device}, {world_size} process(es); classes: "
              + ", ".join(f"{p} {s.n_classes}" for p, s in samplers.items()))
        if not cfg.eval_only:
            utils.save_json(vars(cfg), os.path.join(run_dir, "config.json"))

    # ---- model --------------------------------------------------------------
    params, forward = build_network(cfg.model, cfg.n_way, torch.Generator().manual_seed(cfg.seed), device)
    optimizer = torch.optim.Adam(params, lr=cfg.meta_lr)
    task_generator = torch.Generator().manual_seed(cfg.seed)
    start, train_seconds, best = 0, 0.0, dict(accuracy=-1.0, iteration=0, params=None)
    if checkpoint:
        with torch.no_grad():
            for p, saved in zip(params, checkpoint["params"]):
                p.copy_(saved)
        optimizer.load_state_dict(checkpoint["optimizer"])
        task_generator.set_state(checkpoint["task_generator"])
        start, train_seconds, best = checkpoint["iteration"], checkpoint["train_seconds"], checkpoint["best"]
        if rank == 0:  # best.pt is written just after the checkpoint: a kill in between leaves it stale
            utils.save_checkpoint(best, best_path)
            print(f"testing the run of {start} iterations" if cfg.eval_only else f"resumed from iteration {start}")

    grouping = meta_learning.task_grouping(device, cfg.meta_batch_size, 2 * cfg.n_way * cfg.k_shot)
    if cfg.algorithm == "reptile":
        adaptation = dict(lr=cfg.inner_lr, optimizer="adam", batch_size=cfg.reptile_eval_batch)
    else:
        adaptation = dict(lr=cfg.inner_lr * cfg.n_way, optimizer="sgd", batch_size=None)

    def evaluate(sampler, n_tasks, seed, steps, parameters, name):
        """Query accuracy of n_tasks fixed tasks after 0..steps adaptation steps, (tasks, steps + 1)."""
        support, query = sampler.sample(n_tasks, cfg.n_way, cfg.k_shot, cfg.k_shot, torch.Generator().manual_seed(seed),
                                        distributed.share(n_tasks, rank, world_size))
        per_task = meta_learning.evaluate_adaptation(
            forward, F.cross_entropy, accuracy, parameters, support, query, steps, chunk_size=CHUNK_TASKS,
            progress=f"{name} on {n_tasks} tasks" if rank == 0 else None, **adaptation)
        return distributed.gather_rows(per_task.cpu(), world_size)

    # ---- meta-training ------------------------------------------------------
    if rank == 0:
        metrics = utils.MetricsLog(os.path.join(run_dir, "metrics.csv"),
                                   ["iteration", "train_seconds", "train_loss", "train_accuracy",
                                    "validation_accuracy", "test_accuracy", "test_ci95"],
                                   resume_iteration=start if checkpoint else None)
    # Every process draws the same meta-batches and builds only its share of the tasks.
    my_tasks = distributed.share(cfg.meta_batch_size, rank, world_size)
    share_of_batch = (my_tasks.stop - my_tasks.start) / cfg.meta_batch_size
    # Metrics of the iterations since the last row (a checkpoint keeps them, so that
    # a resumed run logs the rows of an uninterrupted one).
    window_loss, window_accuracy = [[t.to(device) for t in w]
                                    for w in distributed.own_window(checkpoint, rank, world_size, metrics=2)]
    budget_spent = 0 < 60 * cfg.train_minutes <= train_seconds
    if budget_spent and rank == 0 and not cfg.eval_only:
        print(f"--train-minutes {cfg.train_minutes}: the run's budget is spent; testing it again")
    training = not (cfg.eval_only or budget_spent)
    progress = tqdm(range(start, cfg.meta_iterations if training else start), initial=start,
                    total=cfg.meta_iterations, desc=f"{cfg.algorithm} {cfg.n_way}-way {cfg.k_shot}-shot",
                    dynamic_ncols=True, disable=rank > 0 or not training)
    window_start = time.perf_counter()
    trained_iterations = start
    forecast = utils.DurationForecast(start, cfg.meta_iterations, rank)

    def save_checkpoint(done, seconds):  # called by every process: the checkpoint holds each one's metric window
        windows = distributed.every_process([[t.cpu() for t in window_loss], [t.cpu() for t in window_accuracy]],
                                            world_size)
        if rank == 0:
            utils.save_checkpoint(dict(
                experiment="omniglot", config=vars(cfg), defaults=CONFIG, iteration=done, train_seconds=seconds,
                best=best, params=[p.detach().cpu() for p in params], optimizer=optimizer.state_dict(),
                task_generator=task_generator.get_state(), windows=windows), checkpoint_path)

    for iteration in progress:
        utils.stop_if_requested(iteration, lambda: save_checkpoint(
            iteration, train_seconds + time.perf_counter() - window_start), "omniglot_maml.py", argv, rank,
            world_size, device)
        if cfg.algorithm == "reptile":
            tasks, _ = samplers["train"].sample(cfg.meta_batch_size, cfg.n_way, cfg.reptile_train_shots, 0,
                                                task_generator, my_tasks)
            meta_step_size = cfg.reptile_meta_step * (1 - iteration / cfg.meta_iterations)
            loss, predictions = meta_learning.reptile_meta_step(
                forward, F.cross_entropy, params, tasks, cfg.inner_steps, cfg.inner_lr, meta_step_size,
                optimizer="adam", batch_size=cfg.reptile_inner_batch, meta_batch_size=cfg.meta_batch_size,
                sum_over_processes=functools.partial(distributed.sum_across, world_size=world_size))
            labels = tasks[1]
        else:
            support, query = samplers["train"].sample(cfg.meta_batch_size, cfg.n_way, cfg.k_shot, cfg.k_shot,
                                                      task_generator, my_tasks)
            optimizer.zero_grad()
            loss, predictions = meta_learning.maml_meta_gradient(
                forward, F.cross_entropy, params, support, query, cfg.inner_steps, cfg.inner_lr * cfg.n_way,
                first_order=cfg.algorithm == "fomaml", meta_batch_size=cfg.meta_batch_size, **grouping)
            distributed.sum_gradients(params, world_size)
            optimizer.step()
            labels = query[1]
        # Kept as tensors until a row is logged, so a GPU is not synchronised every iteration;
        # this process's share of the meta-batch means, summed over processes at each row.
        window_loss.append(loss.detach())
        window_accuracy.append(accuracy(predictions, labels) * share_of_batch)

        done = iteration + 1
        forecast.update(done)
        over_budget = 0 < 60 * cfg.train_minutes <= train_seconds + time.perf_counter() - window_start
        # Several processes must stop together: they agree to at a metrics row (every log_every iterations).
        out_of_time = over_budget and world_size == 1
        validating = done % cfg.validate_every == 0 or done == cfg.meta_iterations or out_of_time
        testing = cfg.test_every > 0 and (done % cfg.test_every == 0 or done == cfg.meta_iterations)
        if not (validating or testing or done % cfg.log_every == 0):
            continue
        losses = torch.stack(window_loss)
        if not torch.isfinite(losses).all():  # the same iteration in every process: they share parameters
            first = done - len(losses) + 1 + int((~torch.isfinite(losses)).nonzero()[0])
            utils.stop_diverged(f"the meta-training loss is not finite at iteration {first}", trained_iterations)
        mean_loss, mean_accuracy, stop = distributed.sum_across(
            [losses.mean(), torch.stack(window_accuracy).mean(),
             torch.tensor(float(over_budget), device=loss.device)], world_size)
        out_of_time, validating = stop.item() > 0, validating or stop.item() > 0
        testing = testing or (out_of_time and cfg.test_every > 0)
        row = dict(iteration=done, train_seconds=round(train_seconds + time.perf_counter() - window_start, 2),
                   train_loss=mean_loss.item(), train_accuracy=mean_accuracy.item(), validation_accuracy="",
                   test_accuracy="", test_ci95="")
        window_loss, window_accuracy = [], []
        if validating:
            row["validation_accuracy"] = evaluate(samplers["validation"], cfg.validation_tasks, VALIDATION_SEED,
                                                  cfg.test_steps, params, "validation")[:, -1].nanmean().item()
            if math.isnan(row["validation_accuracy"]):  # NaN for every task: adaptation diverged on all of them
                utils.stop_diverged(f"the adaptation diverged on every validation task at iteration {done}",
                                    trained_iterations)
            if row["validation_accuracy"] > best["accuracy"]:
                best = dict(accuracy=row["validation_accuracy"], iteration=done,
                            params=[p.detach().cpu().clone() for p in params])
        if testing:  # not counted in train_seconds
            paused = time.perf_counter()
            curve = utils.summarize(evaluate(samplers["test"], cfg.test_tasks, TEST_SEED, cfg.test_steps, params,
                                             "test"))
            row.update(test_accuracy=curve["mean"][-1], test_ci95=curve["ci95"][-1])
            window_start += time.perf_counter() - paused
        if rank == 0:
            metrics.log(**row)  # before the checkpoint, so a resume never loses a row
        if validating:
            train_seconds += time.perf_counter() - window_start
            trained_iterations = done
            save_checkpoint(done, train_seconds)
            if rank == 0:
                utils.save_checkpoint(best, best_path)  # a copy for users; the checkpoint holds it too
                progress.set_postfix(val_acc=f"{row['validation_accuracy']:.3f}", best=f"{best['accuracy']:.3f}")
            window_start = time.perf_counter()
        if out_of_time:
            if rank == 0:
                print(f"\n--train-minutes {cfg.train_minutes}: stopped after iteration {done}")
            break
    progress.close()

    # ---- meta-test: the best parameters on 600 fixed test tasks -------------
    utils.stop_at_once_from_now("omniglot_maml.py", argv, rank, world_size)
    if best["params"] is None:  # stopped by a signal before its first validation
        utils.fail(f"{run_dir} has no validated parameters yet: continue it with --resume first")
    best_params = [p.to(device) for p in best["params"]]
    reported_steps = max(REPORTED_STEPS, cfg.test_steps)
    test_accuracy = utils.summarize(evaluate(samplers["test"], cfg.test_tasks, TEST_SEED, reported_steps, best_params,
                                             "test"))
    results = {"test": {
        "accuracy": test_accuracy,
        "headline_step": cfg.test_steps, "tasks": cfg.test_tasks, "split": cfg.split,
        "rotate_test_classes": cfg.rotate_test_classes,
        "best_iteration": best["iteration"], "best_validation_accuracy": best["accuracy"],
        "meta_iterations": trained_iterations, "train_seconds": round(train_seconds, 1)},
        "world_size": world_size, "device": utils.device_name(device, world_size)}
    if rank > 0:
        return results
    utils.save_json(results, os.path.join(run_dir, results_name + ".json"))
    s, diverged = cfg.test_steps, test_accuracy["diverged"][cfg.test_steps]
    print(f"{cfg.algorithm} {cfg.split} {cfg.n_way}-way {cfg.k_shot}-shot, best iteration {best['iteration']}: "
          f"test accuracy after {s} steps {100 * test_accuracy['mean'][s]:.2f} "
          f"± {100 * test_accuracy['ci95'][s]:.2f}% "
          f"({cfg.test_tasks} tasks{f'; diverged on {diverged} of them' if diverged else ''}); "
          f"trained {train_seconds:.0f} s")
    utils.print_accuracy_by_step(test_accuracy, cfg.test_tasks, cfg.test_steps)

    # ---- plots --------------------------------------------------------------
    plot_training(metrics.read(), cfg.inner_steps, cfg.test_steps, os.path.join(run_dir, "training_curves.png"))
    plot_test_accuracy(results["test"], f"{cfg.algorithm}, {cfg.n_way}-way {cfg.k_shot}-shot, {cfg.split}",
                       os.path.join(run_dir, results_name.replace("results", "test_accuracy") + ".png"))
    print(f"results in {run_dir}" + (f" ({results_name}.json)" if retest else ""))
    return results


def plot_training(rows, train_steps, test_steps, path):
    fig, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    iterations = [r["iteration"] for r in rows]
    loss_ax.plot(iterations, [r["train_loss"] for r in rows])
    loss_ax.set(xlabel="meta-iteration", ylabel=f"query loss after {train_steps} step(s)",
                title="meta-training tasks (mean per metrics row)")
    utils.log_scale_if_possible(loss_ax)
    accuracy_ax.plot(iterations, [100 * r["train_accuracy"] for r in rows],
                     label=f"meta-training tasks, after {train_steps} step(s)")
    validated = [r for r in rows if r["validation_accuracy"] == r["validation_accuracy"]]  # not NaN
    accuracy_ax.plot([r["iteration"] for r in validated], [100 * r["validation_accuracy"] for r in validated],
                     marker="o", label=f"validation tasks, after {test_steps} steps")
    accuracy_ax.set(xlabel="meta-iteration", ylabel="query accuracy (%)")
    accuracy_ax.legend()
    utils.save_figure(fig, path)


def plot_test_accuracy(test, title, path):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    utils.plot_with_ci(ax, *utils.percent(test["accuracy"]),
                       f"mean, 95% CI over {test['tasks']} test tasks (band)")
    s = test["headline_step"]
    ax.axvline(s, color="grey", linestyle=":", label=f"headline: {s} steps")
    ax.set(xlabel="adaptation steps", ylabel="query accuracy (%)", title=title)
    ax.legend()
    utils.save_figure(fig, path)


if __name__ == "__main__":
    utils.run_main(main, sys.argv[1:])
