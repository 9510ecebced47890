"""Compare finished runs side by side: a markdown table and one figure.

    python compare.py results/sinusoid/maml-k10-seed0 results/sinusoid/fomaml-k10-seed0 ... --figure docs/x.png
    python compare.py results/omniglot            # every finished run in a folder

Sinusoid runs: query MSE at each K after 0, 1, 5, 10 steps (those the runs
have; an algorithm that predicts in one pass has its value under step 0) for
each run's algorithm and its pretrained baseline. Omniglot runs: test accuracy
after each run's headline step count (or of its one pass); with --minutes, the
test-curve accuracy of each run at equal training time; the figure adds their
training and validation accuracy against iterations and the test curves against
training minutes; --iterations compares the test curves at equal iterations.
Settings that differ between the runs are listed under the table. Each run given
is a row, named by its folder (with the folders above it where two runs' folders
share a name). Runs whose settings differ only in --seed are a group: a table
under the runs' gives each group's mean and standard deviation over its seeds
beside each seed's own 95% interval over the test tasks.
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
    groups = seed_groups(runs)
    if groups:
        print("\nruns that differ only in their seed: query MSE, mean ± sd over the seeds:\n")
        print("| runs | K | " + " | ".join(f"step {s}" for s in TABLE_STEPS) + " |\n|" + "---|" * (len(TABLE_STEPS) + 2))
        for group in groups:
            by_k = [runs[i][0][0]["mse"][runs[i][0][1]["algorithm"]] for i in group]
            for k in k_shots:
                cells = " | ".join("-" if any(s >= len(curves[k]["mean"]) for curves in by_k)
                                   else reports.spread([curves[k]["mean"][s] for curves in by_k], 3) for s in TABLE_STEPS)
                print(f"| {group_name(runs, group)} | {k} | {cells} |")
    if figure:
        fig, axes = plt.subplots(1, len(k_shots), figsize=(4.5 * len(k_shots), 4), squeeze=False)
        span = max(len(by_k[k]["mean"]) for by_k, _ in curves.values() for k in k_shots)
        for ax, k in zip(axes[0], k_shots):
            for (method, (by_k, _)), style in zip(curves.items(), itertools.cycle(reports.LINE_STYLES)):
                reports.plot_with_ci(ax, by_k[k]["mean"], by_k[k]["ci95"], method, span=span, **style)
            ax.set(title=f"K = {k}: mean, 95% CI", xlabel="gradient steps", ylabel="query MSE")
            reports.log_scale_if_possible(ax)
            ax.legend()
        save(fig, figure)


def test_curve(rows):
    """The test-curve points of a run's metrics.csv rows (--test-every), [] if it has none."""
    return [r for r in rows or [] if "test_accuracy" in r and r["test_accuracy"] == r["test_accuracy"]]  # not NaN


def point_at(points, key, value, trained):
    """The last test-curve point whose `key` (train_seconds or iteration) is at or before
    value; None before the first point, or past the run's training (trained: its
    seconds, 1% spare, or its iterations)."""
    before = [p for p in points if p[key] <= value]
    spare = 0.99 if key == "train_seconds" else 1.0
    if not before or trained < spare * value:
        return None
    return before[-1]


def seed_groups(runs):
    """reports.seed_groups of the runs, those of two or more seeds."""
    return [group for group in reports.seed_groups([config for (_, config), _ in runs])
            if len({json.dumps(runs[i][0][1].get("seed")) for i in group}) > 1]


def curve_table(runs, curves, groups, key, values, unit, trained):
    """The test-curve accuracy of each run (and of each seed group) at each value of key."""
    print(f"\ntest accuracy (%) of the current parameters at equal {unit} (the last test-curve point at or before "
          f"it; 95% CI over the test tasks; a group: mean ± sd over its seeds):\n")
    suffix = " min" if key == "train_seconds" else ""
    print("| run | " + " | ".join(f"{v:g}{suffix}" for v in values) + " |\n|---|" + "---|" * len(values))
    scale = 60 if key == "train_seconds" else 1
    found = [[point_at(points, key, scale * v, trained(results)) for v in values]
             for ((results, _), _), points in zip(runs, curves)]
    for ((_, _), name), points in zip(runs, found):
        print(f"| {name} | " + " | ".join("-" if p is None else
                                          f"{100 * p['test_accuracy']:.2f} ± {100 * p['test_ci95']:.2f}"
                                          for p in points) + " |")
    for group in groups:
        cells = []
        for column in range(len(values)):
            points = [found[i][column] for i in group]
            cells.append("-" if None in points else reports.spread([100 * p["test_accuracy"] for p in points], 2))
        print(f"| {group_name(runs, group)} | " + " | ".join(cells) + " |")


def group_name(runs, group):
    return f"{runs[group[0]][1]} and {len(group) - 1} other seed(s)"


def omniglot(runs, figure, run_dirs, minutes, iterations):
    print("| run | algorithm | model | split | N-way K-shot | meta-iterations | training time | "
          "test accuracy (95% CI) | after steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    headlines = []
    for (results, config), name in runs:
        test, s = results["test"], results["test"]["headline_step"]
        mean, ci = reports.percent(test["accuracy"])
        headlines.append((mean[s], ci[s]))
        print(f"| {name} | {config['algorithm']} | {config.get('model', 'cnn')} | {test['split']} | "
              f"{config['n_way']}-way {config['k_shot']}-shot | {test['meta_iterations']} | "
              f"{test['train_seconds'] / 60:.1f} min | {mean[s]:.2f} ± {ci[s]:.2f}% | "
              f"{s if len(mean) > 1 else 'one pass'} |")
    groups = seed_groups(runs)
    if groups:
        print("\nruns that differ only in their seed: test accuracy (%) after the headline steps, mean ± sd over the "
              "seeds, and each seed's mean ± 95% CI over the test tasks:\n")
        print("| runs | seeds | mean ± sd over seeds | each seed (95% CI over test tasks) |\n|---|---|---|---|")
        for group in groups:
            seeds = ", ".join(str(runs[i][0][1].get("seed")) for i in group)
            each = ", ".join(f"{headlines[i][0]:.2f} ± {headlines[i][1]:.2f}" for i in group)
            print(f"| {group_name(runs, group)} | {seeds} | {reports.spread([headlines[i][0] for i in group], 2)} | "
                  f"{each} |")
    logs = [os.path.join(run_dir, "metrics.csv") for run_dir in run_dirs]
    histories = [files.read_metrics(log) if os.path.exists(log) else None for log in logs]
    curves = [test_curve(rows) for rows in histories]
    if minutes:
        curve_table(runs, curves, groups, "train_seconds", minutes, "training time",
                    lambda results: results["test"]["train_seconds"])
    if iterations:
        curve_table(runs, curves, groups, "iteration", iterations, "iterations",
                    lambda results: results["test"]["meta_iterations"])
    if figure:
        every_history = all(rows is not None for rows in histories)  # training and validation against iterations
        timed = any(curves)  # test accuracy against training minutes
        panels = 1 + 2 * every_history + timed
        fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
        styles = list(itertools.islice(itertools.cycle(reports.LINE_STYLES), len(runs)))
        span = max(len(results["test"]["accuracy"]["mean"]) for (results, _), _ in runs)
        for ((results, config), name), style in zip(runs, styles):
            reports.plot_with_ci(axes[0, 0], *reports.percent(results["test"]["accuracy"]), name, span=span, **style)
        axes[0, 0].set(xlabel="adaptation steps", ylabel="test accuracy (%)",
                       title="Omniglot test tasks: mean and 95% CI after each step")
        axes[0, 0].legend()
        if timed:
            ax = axes[0, -1]
            for ((_, _), name), style, points in zip(runs, styles, curves):
                reports.plot_metric_curve(ax, points, "train_seconds", 60, "test_accuracy", name, **style)
            ax.set(xlabel="training time (min)", ylabel="test accuracy (%)",
                   title="test tasks, current parameters, against training time")
            ax.legend()
        if every_history:
            for ((_, config), name), style, rows in zip(runs, styles, histories):
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
    keys = sorted({key for config in configs for key in config} - reports.NOT_SETTINGS)
    differing = [key for key in keys if len({json.dumps(config.get(key)) for config in configs}) > 1]
    if len(runs) > 1 and differing:
        print("\nsettings that differ between the runs:\n")
        print("| run | " + " | ".join(differing) + " |\n|---|" + "---|" * len(differing))
        for (_, config), name in runs:
            print(f"| {name} | " + " | ".join(str(config.get(key, "-")) for key in differing) + " |")


def save(fig, path):
    files.save_figure(fig, path)
    print(f"\nfigure: {path}")


def numbers(args, key):
    """The comma-separated numbers of --minutes or --iterations ([] when not given)."""
    text = getattr(args, key)
    try:
        return [float(m) for m in text.split(",")] if text else []
    except ValueError:
        utils.fail(f"--{key} must be comma-separated numbers, got {text!r}")


def main(argv=None):
    parser = settings.OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders holding results.json and config.json, "
                                                "or folders of such runs")
    parser.add_argument("--figure", help="where to save the comparison figure (PNG)")
    parser.add_argument("--minutes", help="Omniglot: comma-separated training minutes at which to compare the "
                                          "runs' test curves (runs trained with --test-every)")
    parser.add_argument("--iterations", help="Omniglot: comma-separated meta-iterations at which to compare the "
                                             "runs' test curves")
    args = parser.parse_args(argv)
    minutes, iterations = (numbers(args, key) for key in ("minutes", "iterations"))
    if args.figure and not os.path.isdir(os.path.dirname(os.path.abspath(args.figure))):
        utils.fail(f"--figure {args.figure}: the folder {os.path.dirname(args.figure) or '.'} does not exist")
    missing = [folder for folder in args.runs if not os.path.exists(folder)]
    if missing:
        utils.fail(f"{missing[0]} does not exist")
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
        omniglot(runs, args.figure, run_dirs, minutes, iterations)
    differing_settings(runs)


if __name__ == "__main__":
    main(sys.argv[1:])
