"""Omniglot N-way K-shot classification with MAML (Finn et al. 2017, section 5.2,
Table 1, appendix A.1), first-order MAML, ANIL, Reptile, Meta-SGD, Prototypical
Networks and a Conditional Neural Process (docs/algorithms.md).

    python omniglot_maml.py                          # 5-way 1-shot, the paper's setting
    python omniglot_maml.py --n-way 20 --k-shot 5    # any of Table 1's four configurations
    python omniglot_maml.py --split paper            # the paper's 1100/100/423 character split
    python omniglot_maml.py --out-dir results/omniglot/RUN --eval-only   # test a saved run

Every value in CONFIG can be overridden as --name value (dashes for underscores).
A run writes config.json, metrics.csv, checkpoint.pt (latest), best.pt (best
validation accuracy), results.json and plots to its folder; --resume continues it.
The data, splits, network, batch norm and protocol: docs/omniglot.md.
"""
import sys

import settings  # first: --help is answered before the imports below, which take seconds on a busy machine
if __name__ == "__main__":
    settings.answer_help(__file__, __doc__, sys.argv[1:])

import functools  # noqa: E402
import math  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lifecycle  # noqa: E402
import meta_learning  # noqa: E402
import models  # noqa: E402
import omniglot_data  # noqa: E402
import reports  # noqa: E402
import signals  # noqa: E402
import utils  # noqa: E402

CONFIG = dict(
    # The experiment
    algorithm="maml",           # maml (second order) | fomaml (first order) | anil (MAML, only the final
                                # layer adapts) | reptile | metasgd (MAML with learned inner step sizes) |
                                # protonet (distances to class prototypes) | cnp (a network reads the support set)
    n_way=5,                    # classes per task (N)
    k_shot=1,                   # support images per class; the query set has as many (official code)
    split="background",         # background: meta-train on images_background (minus 5 validation
                                # alphabets), meta-test on images_evaluation; paper: 1100/100/423
    model="cnn",                # cnn (the paper's 4 blocks of stride-2 convs, built our way) | official-cnn
                                # (as the paper's code builds it) | maxpool | mlp (256-128-64-64, "no conv");
                                # and the variants between cnn and official-cnn of the first-order ablation
    rotate_test_classes=False,  # rotations as new classes for validation/test too (the official code does)
    batch_norm="transductive",  # transductive: each task's own statistics (the paper's code) | running: averaged
                                # in meta-training, used at test (Prototypical Networks' code; protonet only)
    # Meta-training (None: the paper's value for the N-way and the algorithm, PAPER_DEFAULTS below;
    # fomaml and anil take maml's)
    meta_lr=1e-3,               # Adam, outer loop (all but reptile)
    meta_lr_halving=None,       # meta-iterations between halvings of meta_lr (0: constant)
    meta_iterations=None,       # meta-updates; a run may be continued to more (not Reptile's: annealed over them)
    meta_batch_size=None,       # tasks per meta-update
    inner_lr=None,              # maml/fomaml: the paper's SGD step, taken as inner_lr x N on the mean
                                # cross-entropy (the paper's code sums over the N classes); reptile: Adam step
    inner_steps=None,           # adaptation steps in meta-training
    test_steps=None,            # adaptation steps of the headline test accuracy (0 for protonet and cnp,
                                # which predict in one pass, without gradient steps)
    train_way=None,             # classes per meta-training task (None: N; protonet may train on more than N)
    train_queries=None,         # query images per class of a meta-training task (None: K)
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
    data_dir="data/omniglot",   # where the two archives (or the folders they unzip into) are, downloaded if
                                # missing, and the cache; this and out_dir are relative to the current folder
    device="auto",              # auto | cpu | cuda
    threads=0,                  # torch threads per process (0: one per core that other jobs leave free,
                                # measured over a quarter second as the run starts)
    seed=0,                     # seed of the initial parameters and of the training tasks
    out_dir="",                 # default: results/omniglot/<algorithm>-<split>-<N>w<K>s-seed<seed>[-<settings given>]
    resume=False,               # continue the run in out_dir from its checkpoint
    eval_only=False,            # only test the run's best checkpoint; given other --rotate-test-classes,
                                # --test-tasks or --test-steps, into results-<key>=<value>.json beside the run's
)
# Paper settings, their sources and where ours differ (inner_lr x N): docs/omniglot.md#paper-settings.
# Other N-ways take the 5-way values below 20, the 20-way above.
MAML_5, MAML_20 = (dict(meta_iterations=60_000, meta_batch_size=32, inner_lr=0.4, inner_steps=1, test_steps=3),
                   dict(meta_iterations=60_000, meta_batch_size=16, inner_lr=0.1, inner_steps=5, test_steps=5))
PROTONET = dict(meta_iterations=20_000, meta_batch_size=1, test_steps=0, train_way=60, train_queries=5,
                meta_lr_halving=2000)
PAPER_DEFAULTS = {
    ("maml", 5): dict(MAML_5, meta_lr_halving=0),
    ("maml", 20): dict(MAML_20, meta_lr_halving=0),
    ("reptile", 5): dict(meta_iterations=100_000, meta_batch_size=5, inner_lr=1e-3, inner_steps=5,
                         test_steps=50, reptile_inner_batch=10, reptile_eval_batch=5),
    ("reptile", 20): dict(meta_iterations=200_000, meta_batch_size=5, inner_lr=5e-4, inner_steps=10,
                          test_steps=50, reptile_inner_batch=20, reptile_eval_batch=10),
    ("metasgd", 5): dict(MAML_5, test_steps=1, meta_lr_halving=0),
    ("metasgd", 20): dict(MAML_20, inner_steps=1, test_steps=1, meta_lr_halving=0),
    ("protonet", 5): PROTONET,
    ("protonet", 20): PROTONET,
    ("cnp", 5): dict(meta_iterations=60_000, meta_batch_size=32, test_steps=0, meta_lr_halving=0),
    ("cnp", 20): dict(meta_iterations=60_000, meta_batch_size=16, test_steps=0, meta_lr_halving=0),
}
AUTO_TYPES = settings.paper_types(PAPER_DEFAULTS)  # the types of the settings whose default is None
MODELS = {**models.CONV_NETS, "mlp": None}  # the networks: models.CONV_NETS, and the paper's "no conv" MLP
REPORTED_STEPS = 10  # test accuracy is reported after 0..max(10, test_steps) steps
VALIDATION_SEED, TEST_SEED = 1, 2  # the same validation and test tasks for every run
CHUNK_TASKS = 50  # tasks adapted at once during validation and test (a step of their progress bar)
TEST_ONLY_KEYS = ("rotate_test_classes", "test_tasks", "test_steps")  # --eval-only may change these
STEP_KEYS = ("inner_lr", "inner_steps", "test_steps")  # settings of the algorithms that adapt by gradient steps


def resolve_paper_defaults(cfg):
    """Fill the None values with the paper's (fomaml, anil and an algorithm without values
    of its own take maml's); keys the algorithm has no use for stay None."""
    n_way = 5 if cfg.n_way < 20 else 20
    paper = PAPER_DEFAULTS.get((cfg.algorithm, n_way), PAPER_DEFAULTS[("maml", n_way)])
    for key, value in paper.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    cfg.train_way = cfg.n_way if cfg.train_way is None else cfg.train_way
    cfg.train_queries = cfg.k_shot if cfg.train_queries is None else cfg.train_queries


def refuse_step_settings(cfg, given):
    """One line for a setting of gradient steps given to an algorithm that predicts in one pass
    (checked again once a resumed or tested run's own algorithm is known)."""
    step_settings = [key for key in STEP_KEYS if key in given]
    if step_settings and not meta_learning.ALGORITHMS[cfg.algorithm].steps:
        utils.fail(f"--{step_settings[0].replace('_', '-')} does not apply to {cfg.algorithm}, which predicts in one "
                   f"pass from the support set, without gradient steps")


def validate(cfg, given):
    settings.check_settings(
        cfg, choices=dict(algorithm=tuple(meta_learning.ALGORITHMS), split=omniglot_data.SPLITS, model=tuple(MODELS),
                          batch_norm=meta_learning.BATCH_NORM),
        at_least=dict(n_way=2, train_way=2, **{key: 1 for key in (
            "k_shot", "train_queries", "meta_iterations", "meta_batch_size", "inner_steps", "reptile_train_shots",
            "reptile_inner_batch", "reptile_eval_batch", "log_every", "validate_every", "validation_tasks")},
                      test_tasks=2),  # 2 tasks at least for a confidence interval
        positive=("meta_lr", "reptile_meta_step"),
        zero_is_off=dict(train_minutes="no limit", test_every="only the final test", meta_lr_halving="constant"))
    refuse_step_settings(cfg, given)
    algorithm = meta_learning.choose(cfg.algorithm, cfg.batch_norm)
    if algorithm.steps:
        settings.check_settings(cfg, at_least=dict(test_steps=1), positive=("inner_lr",))
    if cfg.train_way != cfg.n_way and not algorithm.any_way:
        utils.fail(f"--train-way {cfg.train_way} differs from --n-way {cfg.n_way}: {cfg.algorithm}'s network has "
                   f"one output per class, so it trains on tasks of N classes")
    drawers = omniglot_data.DRAWERS
    if cfg.k_shot + max(cfg.k_shot, cfg.train_queries) > drawers:
        utils.fail(f"--k-shot {cfg.k_shot} with {max(cfg.k_shot, cfg.train_queries)} query images per class needs "
                   f"{cfg.k_shot + max(cfg.k_shot, cfg.train_queries)} drawers; each character has {drawers}")
    if cfg.algorithm == "reptile" and MODELS[cfg.model] and not MODELS[cfg.model].inner_loop_batch_norm:
        utils.fail(f"--model {cfg.model} keeps batch norm out of the inner loop, and Reptile learns only "
                   f"what its inner loop adapts: choose another --model for reptile")
    if cfg.algorithm == "reptile" and cfg.reptile_train_shots > drawers:
        utils.fail(f"--reptile-train-shots {cfg.reptile_train_shots} exceeds the {drawers} drawers per character")


def accuracy(logits, labels):
    """Fraction classified right; NaN where the logits are not finite (a diverged adaptation)."""
    correct = (logits.argmax(dim=-1) == labels).float().mean()
    return torch.where(torch.isfinite(logits).all(), correct, math.nan)


def build_network(model, n_way, generator, device):
    """Initial parameters, forward function, features function (the network without its
    output layer) and inner-loop mask (the parameters its inner loop adapts; None: all)
    of the chosen network."""
    net = MODELS[model]
    if net is None:
        params = models.init_mlp([28 * 28, 256, 128, 64, 64, n_way], batch_norm=True, generator=generator)

        def forward(p, x):
            return models.mlp(p, x.flatten(1), batch_norm=True)

        def features(body, x, **batch_norm):
            return models.mlp_features(body, x.flatten(1), batch_norm=True, **batch_norm)
        mask = None
    else:
        params = models.init_cnn(n_way, generator=generator, net=net)
        forward, features = functools.partial(models.cnn, net=net), functools.partial(models.cnn_features, net=net)
        mask = net.inner_loop_mask(len(params))
    return [p.to(device).requires_grad_() for p in params], forward, features, mask


def algorithm_setup(cfg, algorithm, forward, features, adapted, device, sum_across=list):
    """The Learner of cfg's algorithm, the shape of its meta-training tasks (classes, support
    and query images per class) and how it adapts at test (adapt's arguments)."""
    train_tasks = (cfg.train_way, cfg.k_shot, cfg.train_queries)
    if cfg.algorithm == "reptile":
        train_tasks = (cfg.n_way, cfg.reptile_train_shots, 0)
        inner = dict(inner_lr=cfg.inner_lr, inner_optimizer="adam", inner_batch=cfg.reptile_inner_batch)
        adaptation = dict(lr=cfg.inner_lr, optimizer="adam", batch_size=cfg.reptile_eval_batch)
    elif algorithm.steps:
        inner = dict(inner_lr=cfg.inner_lr * cfg.n_way, adapted=adapted)
        adaptation = dict(lr=cfg.inner_lr * cfg.n_way, optimizer="sgd", adapted=adapted)
    else:  # one pass from the support set: no inner loop
        inner, adaptation = {}, {}
    learner = meta_learning.Learner(
        forward, F.cross_entropy, inner_steps=cfg.inner_steps, meta_batch_size=cfg.meta_batch_size,
        meta_iterations=cfg.meta_iterations, meta_step=cfg.reptile_meta_step, features=features,
        n_classes=cfg.n_way, train_classes=cfg.train_way, meta_lr=cfg.meta_lr, meta_lr_halving=cfg.meta_lr_halving,
        sum_across=sum_across, **meta_learning.task_grouping(device, cfg.meta_batch_size, 2 * cfg.n_way * cfg.k_shot),
        **inner)
    return learner, train_tasks, adaptation


def task_samplers(cfg, run):
    """Task samplers of the split's meta-training, validation and test characters."""
    with run.first_process_first():  # it builds the cache
        try:
            images, names = omniglot_data.load_omniglot(cfg.data_dir)
        except omniglot_data.DataError as error:
            utils.fail(str(error))
    samplers = omniglot_data.task_samplers(images, names, cfg.split, cfg.rotate_test_classes, run.device)
    for part, sampler in samplers.items():
        n_way, flag = (cfg.train_way, "--train-way") if part == "train" else (cfg.n_way, "--n-way")
        if n_way > sampler.n_classes:
            utils.fail(f"{flag} {n_way} exceeds the {sampler.n_classes} classes of the {cfg.split} split's {part} set")
    return samplers


def main(argv=None):
    # ---- config -------------------------------------------------------------
    cfg, given = settings.parse_config(CONFIG, argv, __doc__, types=AUTO_TYPES,
                                       comments=settings.config_comments(__file__),
                                       none_means=settings.paper_values(PAPER_DEFAULTS))
    resolve_paper_defaults(cfg)
    validate(cfg, given)
    run = lifecycle.Run("omniglot", __file__, argv, cfg, given, CONFIG, device=utils.pick_device(cfg.device),
                        threads=cfg.threads,
                        folder=f"{cfg.algorithm}-{cfg.split}-{cfg.n_way}w{cfg.k_shot}s-seed{cfg.seed}",
                        named_keys={"algorithm", "split", "n_way", "k_shot", "seed"},
                        shared_tasks=dict(meta_batch_size=cfg.meta_batch_size, validation_tasks=cfg.validation_tasks,
                                          test_tasks=cfg.test_tasks),
                        free_on_resume=meta_learning.free_on_resume,
                        free_when_testing=TEST_ONLY_KEYS)
    cfg, device = run.cfg, run.device
    refuse_step_settings(cfg, given)

    # ---- data ---------------------------------------------------------------
    samplers = task_samplers(cfg, run)
    run.start(f"device {device}, {run.world_size} process(es); classes: "
              + ", ".join(f"{p} {s.n_classes}" for p, s in samplers.items()))

    # ---- the algorithm, chosen once, and its meta-parameters -----------------
    algorithm = meta_learning.choose(cfg.algorithm, cfg.batch_norm)
    init_generator = torch.Generator().manual_seed(cfg.seed)
    network, forward, features, network_mask = build_network(cfg.model, cfg.n_way, init_generator, device)
    adapted = meta_learning.inner_loop_mask(len(network), network_mask, algorithm.head_only)
    learner, train_tasks, adaptation = algorithm_setup(cfg, algorithm, forward, features, adapted, device,
                                                       run.sum_across)
    params = algorithm.parameters(learner, network, init_generator)
    optimizer = torch.optim.Adam(params, lr=cfg.meta_lr)
    task_generator = torch.Generator().manual_seed(cfg.seed)
    run.track(params=params, optimizer=optimizer, task_generator=task_generator)

    def evaluate(part, params, steps=cfg.test_steps):
        """Query accuracy of the part's fixed tasks after 0..steps adaptation steps, (tasks, steps + 1),
        or predicted in one pass, (tasks, 1)."""
        n_tasks, seed = (cfg.validation_tasks, VALIDATION_SEED) if part == "validation" else (cfg.test_tasks, TEST_SEED)
        support, query = samplers[part].sample(n_tasks, cfg.n_way, cfg.k_shot, cfg.k_shot,
                                               torch.Generator().manual_seed(seed), run.share(n_tasks))
        per_task = meta_learning.evaluate(
            algorithm, learner, accuracy, params, support, query, steps, chunk_size=CHUNK_TASKS,
            progress=f"{part} on {n_tasks} tasks" if run.rank == 0 else None, **adaptation)
        return run.gather(per_task.cpu())

    # ---- meta-training ------------------------------------------------------
    my_tasks = run.share(cfg.meta_batch_size)  # every process draws each meta-batch and builds its share of it
    for iteration in run.iterations(
            cfg.meta_iterations, recorded=("train_loss", "train_accuracy"), own_task_means=("train_accuracy",),
            evaluated=("validation_accuracy", "test_accuracy", "test_ci95"), log_every=cfg.log_every,
            checkpoint_every=cfg.validate_every, test_every=cfg.test_every, train_minutes=cfg.train_minutes,
            description=f"{cfg.algorithm} {cfg.n_way}-way {cfg.k_shot}-shot"):
        # ALGORITHM: a meta-update on a meta-batch of training tasks
        support, query = samplers["train"].sample(cfg.meta_batch_size, *train_tasks, task_generator, my_tasks)
        loss, predictions, labels = algorithm.meta_update(learner, params, optimizer, support, query, iteration)
        due = run.record(train_loss=loss, train_accuracy=accuracy(predictions, labels))
        # every validate_every iterations: validate and keep the best parameters (a checkpoint follows)
        if due.checkpoint:
            run.validated(evaluate("validation", params)[:, -1].nanmean().item(), params)
        if due.test:  # the test accuracy curve of metrics.csv, not counted as training time
            with run.untimed():
                curve = reports.summarize(evaluate("test", params))
            run.log(test_accuracy=curve["mean"][-1], test_ci95=curve["ci95"][-1])

    # ---- meta-test: the best parameters on 600 fixed test tasks -------------
    test_accuracy = reports.summarize(evaluate("test", run.best_params(), max(REPORTED_STEPS, cfg.test_steps)))
    results = {"test": {
        "accuracy": test_accuracy,
        "headline_step": cfg.test_steps, "tasks": cfg.test_tasks, "split": cfg.split,
        "rotate_test_classes": cfg.rotate_test_classes,
        "best_iteration": run.best["iteration"], "best_validation_accuracy": run.best["accuracy"],
        "meta_iterations": run.iteration, "train_seconds": round(run.train_seconds, 1)},
        "world_size": run.world_size, "device": utils.device_name(device, run.world_size)}
    if run.rank > 0:
        return results
    run.save_results(results)
    print(f"{cfg.algorithm} {cfg.split} {cfg.n_way}-way {cfg.k_shot}-shot: {run.iteration} iterations, "
          f"{run.train_seconds:.0f} s of training; the best validation at iteration {run.best['iteration']}")
    reports.print_accuracy_by_step(test_accuracy, cfg.test_tasks, cfg.test_steps)

    # ---- plots --------------------------------------------------------------
    reports.plot_classification_training(run.metrics_rows(), cfg.inner_steps, cfg.test_steps,
                                         run.path("training_curves.png"))
    reports.plot_test_accuracy(results["test"], f"{cfg.algorithm}, {cfg.n_way}-way {cfg.k_shot}-shot, {cfg.split}",
                       run.path(run.results_name.replace("results", "test_accuracy") + ".png"))
    print(f"results in {run.dir}" + (f" ({run.results_name}.json)" if run.results_name != "results" else ""))
    return results


if __name__ == "__main__":
    signals.run_main(main, sys.argv[1:])
