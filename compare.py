"""Compare finished runs side by side: a markdown table and one figure.

    python compare.py results/sinusoid/maml-k10-seed0 results/sinusoid/fomaml-k10-seed0 ... --figure docs/x.png
    python compare.py results/omniglot            # every finished run in a folder

Sinusoid runs: query MSE at each K after 0, 1, 5, 10 steps (those the runs
have) for each run's algorithm and its pretrained baseline. Omniglot runs: test
accuracy after each run's headline step count; the figure adds their training
and validation accuracy against iterations. Settings that differ between the
runs are listed under the table. Each run given is a row, named by its folder
(with the folders above it where two runs' folders share a name).
"""
import itertools
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
plt.rcParams.update({"font.size": 11, "legend.fontsize": 10})

import files  # noqa: E402
import reports  # noqa: E402
import settings  # noqa: E402
import utils  # noqa: E402

TABLE_STEPS = (0, 1, 5, 10)
# Config keys that say where or how a run was launched, not what it is.
NOT_SETTINGS = {"out_dir", "resume", "eval_only", "data_dir", "device"}


# What each experiment's records must hold: results.json keys, and config.json keys.
NEEDED = {"sinusoid": (("mse", "train_seconds"), ("algorithm",)),
          "omniglot": (("test",), ("algorithm", "n_way", "k_shot"))}
NEEDED_TEST = ("accuracy", "headline_step", "split", "meta_iterations", "train_seconds")


def load(run_dir):
    """(results, config, experiment) of a finished run; one line and exit 2 for a
    folder that does not hold the records of one of the two scripts."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            results = json.load(f)
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        utils.fail(f"{run_dir} is not a finished run: {error}")
    experiment = "sinusoid" if "mse" in results else "omniglot" if "test" in results else None
    if experiment is None or not isinstance(config, dict):
        utils.fail(f"{run_dir}/results.json holds the results of neither sinusoid_maml.py (mse) "
                   f"nor omniglot_maml.py (test)")
    needed_results, needed_config = NEEDED[experiment]
    missing = [f"results.json {key}" for key in needed_results if key not in results]
    missing += [f"results.json test.{key}" for key in NEEDED_TEST if experiment == "omniglot"
                and key not in results["test"]]
    missing += [f"config.json {key}" for key in needed_config if key not in config]
    if missing:
        utils.fail(f"{run_dir} is not a whole record of a run: it lacks {', '.join(missing)}")
    return results, config, experiment


def finished_runs(folder):
    """The folder itself if it holds a finished run, else the finished runs below it."""
    if os.path.exists(os.path.join(folder, "results.json")):
        return [folder]
    return sorted(os.path.dirname(os.path.join(root, "results.json")) for root, _, files in os.walk(folder)
                  if "results.json" in files)


def labels(run_dirs):
    """A name for each run that tells it from the others: its folder's name, with as
    many of the folders above it as that takes (a run given twice is numbered)."""
    parts = [os.path.normpath(os.path.abspath(d)).split(os.sep) for d in run_dirs]
    names = []
    for path in parts:
        others = [p for p in parts if p != path]
        depth = 1
        while depth < len(path) and any(p[-depth:] == path[-depth:] for p in others):
            depth += 1
        names.append("/".join(path[-depth:]))
    return [name if names.count(name) == 1 else f"{name} ({names[:i + 1].count(name)})"
            for i, name in enumerate(names)]


def cell(stats, step):
    if step >= len(stats["mean"]):
        return "-"
    return f"{reports.number(stats['mean'][step])} ± {reports.number(stats['ci95'][step])}"


def sinusoid(runs, figure):
    algorithms = [config["algorithm"] for (_, config), _ in runs]
    curves = {}  # label: (mse by K, training time cell)
    for (results, config), name in runs:
        label = config["algorithm"]
        if algorithms.count(label) > 1:  # two runs of one algorithm: tell them apart by folder
            label += f" ({name})"
        curves[label] = (results["mse"][config["algorithm"]], f"{results['train_seconds'] / 60:.1f} min")
        baseline = "pretrained" if len(runs) == 1 else f"pretrained ({name})"
        curves[baseline] = (results["mse"]["pretrained"], "(trained beside it)")
    k_shots = list(next(iter(curves.values()))[0])
    header = "| method | K | " + " | ".join(f"step {s}" for s in TABLE_STEPS) + " | training time |"
    print(header + "\n|" + "---|" * (len(TABLE_STEPS) + 3))
    for method, (by_k, time_cell) in curves.items():
        for k in k_shots:
            cells = " | ".join(cell(by_k[k], s) for s in TABLE_STEPS)
            print(f"| {method} | {k} | {cells} | {time_cell} |")
    if figure:
        fig, axes = plt.subplots(1, len(k_shots), figsize=(4.5 * len(k_shots), 4), squeeze=False)
        for ax, k in zip(axes[0], k_shots):
            for (method, (by_k, _)), style in zip(curves.items(), itertools.cycle(reports.LINE_STYLES)):
                reports.plot_with_ci(ax, by_k[k]["mean"], by_k[k]["ci95"], method, **style)
            ax.set(title=f"K = {k}: mean, 95% CI", xlabel="gradient steps", ylabel="query MSE")
            reports.log_scale_if_possible(ax)
            ax.legend()
        save(fig, figure)


def omniglot(runs, figure, run_dirs):
    print("| run | algorithm | model | split | N-way K-shot | meta-iterations | training time | "
          "test accuracy (95% CI) | after steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (results, config), name in runs:
        test, s = results["test"], results["test"]["headline_step"]
        mean, ci = reports.percent(test["accuracy"])
        print(f"| {name} | {config['algorithm']} | {config.get('model', 'cnn')} | {test['split']} | "
              f"{config['n_way']}-way {config['k_shot']}-shot | {test['meta_iterations']} | "
              f"{test['train_seconds'] / 60:.1f} min | {mean[s]:.2f} ± {ci[s]:.2f}% | {s} |")
    if figure:
        logs = [os.path.join(run_dir, "metrics.csv") for run_dir in run_dirs]
        curves = all(os.path.exists(log) for log in logs)  # training and validation against iterations too
        fig, axes = plt.subplots(1, 3 if curves else 1, figsize=(18 if curves else 7, 4.5), squeeze=False)
        styles = list(itertools.islice(itertools.cycle(reports.LINE_STYLES), len(runs)))
        for ((results, config), name), style in zip(runs, styles):
            reports.plot_with_ci(axes[0, 0], *reports.percent(results["test"]["accuracy"]), name, **style)
        axes[0, 0].set(xlabel="adaptation steps", ylabel="test accuracy (%)",
                       title="Omniglot test tasks: mean and 95% CI after each step")
        axes[0, 0].legend()
        if curves:
            for ((_, config), name), style, log in zip(runs, styles, logs):
                rows = files.read_metrics(log)
                validated = [r for r in rows if r["validation_accuracy"] == r["validation_accuracy"]]  # not NaN
                axes[0, 1].plot([r["iteration"] for r in rows], [100 * r["train_accuracy"] for r in rows],
                                label=name, markevery=8, **style)
                axes[0, 2].plot([r["iteration"] for r in validated],
                                [100 * r["validation_accuracy"] for r in validated], label=name, **style)
            axes[0, 1].set(xlabel="meta-iteration", ylabel="query accuracy (%)",
                           title="meta-training tasks, after the inner steps")
            axes[0, 2].set(xlabel="meta-iteration", ylabel="query accuracy (%)",
                           title="validation tasks, after the test steps")
            axes[0, 2].legend()
        save(fig, figure)


def differing_settings(runs):
    """Print the settings (config keys) whose values are not the same in all runs."""
    configs = [config for (_, config), _ in runs]
    keys = sorted({key for config in configs for key in config} - NOT_SETTINGS)
    differing = [key for key in keys if len({json.dumps(config.get(key)) for config in configs}) > 1]
    if len(runs) > 1 and differing:
        print("\nsettings that differ between the runs:\n")
        print("| run | " + " | ".join(differing) + " |\n|---|" + "---|" * len(differing))
        for (_, config), name in runs:
            print(f"| {name} | " + " | ".join(str(config.get(key, "-")) for key in differing) + " |")


def save(fig, path):
    files.save_figure(fig, path)
    print(f"\nfigure: {path}")


def main(argv=None):
    parser = settings.OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders holding results.json and config.json, "
                                                "or folders of such runs")
    parser.add_argument("--figure", help="where to save the comparison figure (PNG)")
    args = parser.parse_args(argv)
    if args.figure and not os.path.isdir(os.path.dirname(os.path.abspath(args.figure))):
        utils.fail(f"--figure {args.figure}: the folder {os.path.dirname(args.figure) or '.'} does not exist")
    run_dirs = []
    for folder in args.runs:
        found = finished_runs(folder)
        if not found:
            print(f"skipped {folder}: it holds no finished run (no results.json)", file=sys.stderr)
        run_dirs += found
    if not run_dirs:
        utils.fail("none of the folders given holds a finished run")
    loaded = [load(run_dir) for run_dir in run_dirs]
    experiments = {experiment: run_dir for (_, _, experiment), run_dir in zip(loaded, run_dirs)}
    if len(experiments) > 1:
        utils.fail(f"give runs of one experiment: {experiments['sinusoid']} is a sinusoid run, "
                   f"{experiments['omniglot']} an Omniglot run")
    runs = [((results, config), label) for (results, config, _), label in zip(loaded, labels(run_dirs))]
    if "sinusoid" in experiments:
        sinusoid(runs, args.figure)
    else:
        omniglot(runs, args.figure, run_dirs)
    differing_settings(runs)


if __name__ == "__main__":
    main(sys.argv[1:])
