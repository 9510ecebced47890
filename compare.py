"""Compare finished runs side by side: a markdown table and one figure.

    python compare.py results/sinusoid/maml-k10-seed0 results/sinusoid/fomaml-k10-seed0 ... --figure docs/x.png
    python compare.py results/omniglot            # every finished run in a folder

Sinusoid runs: query MSE at each K after 0, 1, 5, 10 steps (those the runs
have) for each run's algorithm and its pretrained baseline. Omniglot runs: test
accuracy after each run's headline step count. Settings that differ between
the runs are listed under the table.
"""
import argparse
import itertools
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
plt.rcParams.update({"font.size": 11, "legend.fontsize": 10})

import reports  # noqa: E402

TABLE_STEPS = (0, 1, 5, 10)
# Config keys that say where or how a run was launched, not what it is.
NOT_SETTINGS = {"out_dir", "resume", "eval_only", "data_dir", "device"}


def load(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(run_dir, "config.json")) as f:
        return results, json.load(f)


def finished_runs(folder):
    """The folder itself if it holds a finished run, else the finished runs below it."""
    if os.path.exists(os.path.join(folder, "results.json")):
        return [folder]
    return sorted(os.path.dirname(os.path.join(root, "results.json")) for root, _, files in os.walk(folder)
                  if "results.json" in files)


def name(run_dir):
    return os.path.basename(run_dir.rstrip("/"))


def cell(stats, step):
    if step >= len(stats["mean"]):
        return "-"
    return f"{reports.number(stats['mean'][step])} ± {reports.number(stats['ci95'][step])}"


def sinusoid(runs, figure):
    algorithms = [config["algorithm"] for (_, config), _ in runs]
    curves = {}  # label: (mse by K, training time cell)
    for (results, config), run_dir in runs:
        label = config["algorithm"]
        if algorithms.count(label) > 1:  # two runs of one algorithm: tell them apart by folder
            label += f" ({name(run_dir)})"
        curves[label] = (results["mse"][config["algorithm"]], f"{results['train_seconds'] / 60:.1f} min")
        baseline = "pretrained" if len(runs) == 1 else f"pretrained ({name(run_dir)})"
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


def omniglot(runs, figure):
    print("| run | algorithm | split | N-way K-shot | meta-iterations | training time | "
          "test accuracy (95% CI) | after steps |")
    print("|---|---|---|---|---|---|---|---|")
    for (results, config), run_dir in runs:
        test, s = results["test"], results["test"]["headline_step"]
        mean, ci = reports.percent(test["accuracy"])
        print(f"| {name(run_dir)} | {config['algorithm']} | {test['split']} | "
              f"{config['n_way']}-way {config['k_shot']}-shot | {test['meta_iterations']} | "
              f"{test['train_seconds'] / 60:.1f} min | {mean[s]:.2f} ± {ci[s]:.2f}% | {s} |")
    if figure:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for ((results, config), run_dir), style in zip(runs, itertools.cycle(reports.LINE_STYLES)):
            reports.plot_with_ci(ax, *reports.percent(results["test"]["accuracy"]), name(run_dir), **style)
        ax.set(xlabel="adaptation steps", ylabel="test accuracy (%)",
               title="Omniglot test tasks: mean and 95% CI after each step")
        ax.legend()
        save(fig, figure)


def differing_settings(runs):
    """Print the settings (config keys) whose values are not the same in all runs."""
    configs = [config for (_, config), _ in runs]
    keys = sorted({key for config in configs for key in config} - NOT_SETTINGS)
    differing = [key for key in keys if len({json.dumps(config.get(key)) for config in configs}) > 1]
    if len(runs) > 1 and differing:
        print("\nsettings that differ between the runs:\n")
        print("| run | " + " | ".join(differing) + " |\n|---|" + "---|" * len(differing))
        for (_, config), run_dir in runs:
            print(f"| {name(run_dir)} | " + " | ".join(str(config.get(key, "-")) for key in differing) + " |")


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\nfigure: {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders holding results.json and config.json, "
                                                "or folders of such runs")
    parser.add_argument("--figure", help="where to save the comparison figure (PNG)")
    args = parser.parse_args()
    run_dirs, loaded = [], []
    for folder in args.runs:
        found = finished_runs(folder)
        if not found:
            print(f"skipped {folder}: it holds no finished run (no results.json)", file=sys.stderr)
        for run_dir in found:
            try:
                loaded.append(load(run_dir))
                run_dirs.append(run_dir)
            except (OSError, json.JSONDecodeError) as error:
                parser.error(f"{run_dir} is not a finished run: {error}")
    if not loaded:
        parser.error("none of the folders given holds a finished run")
    runs = list(zip(loaded, run_dirs))
    if all("mse" in results for results, _ in loaded):
        sinusoid(runs, args.figure)
    elif all("test" in results for results, _ in loaded):
        omniglot(runs, args.figure)
    else:
        parser.error("give runs of one experiment: all sinusoid or all Omniglot")
    differing_settings(runs)
