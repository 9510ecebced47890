"""Compare finished runs side by side: a markdown table and one figure.

    python compare.py results/sinusoid/maml-k10-seed0 results/sinusoid/fomaml-k10-seed0 ... --figure docs/x.png
    python compare.py results/omniglot/RUN_A results/omniglot/RUN_B

Sinusoid runs: query MSE at K = 5, 10, 20 after 0, 1, 5, 10 steps for each run's
algorithm, with the pretrained baseline of the first run. Omniglot runs: test
accuracy after each run's headline step count.
"""
import argparse
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import utils  # noqa: E402

TABLE_STEPS = (0, 1, 5, 10)


def load(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(run_dir, "config.json")) as f:
        return results, json.load(f)


def sinusoid(runs, figure):
    algorithms = [config["algorithm"] for (_, config), _ in runs]
    curves = {}  # label: (mse by K, train seconds or None)
    for i, ((results, config), run_dir) in enumerate(runs):
        label = config["algorithm"]
        if algorithms.count(label) > 1:  # two runs of one algorithm: tell them apart by folder
            label += f" ({os.path.basename(run_dir.rstrip('/'))})"
        curves[label] = (results["mse"][config["algorithm"]], results["train_seconds"])
        if i == 0:
            curves["pretrained"] = (results["mse"]["pretrained"], None)
    k_shots = list(next(iter(curves.values()))[0])
    header = "| method | K | " + " | ".join(f"step {s}" for s in TABLE_STEPS) + " | training time |"
    print(header + "\n|" + "---|" * (len(TABLE_STEPS) + 3))
    for method, (by_k, seconds) in curves.items():
        for k in k_shots:
            cells = " | ".join(f"{by_k[k]['mean'][s]:.3f} ± {by_k[k]['ci95'][s]:.3f}" for s in TABLE_STEPS)
            time_cell = f"{seconds / 60:.1f} min" if seconds is not None else "(with the first run)"
            print(f"| {method} | {k} | {cells} | {time_cell} |")
    if figure:
        fig, axes = plt.subplots(1, len(k_shots), figsize=(4 * len(k_shots), 3.5), squeeze=False)
        for ax, k in zip(axes[0], k_shots):
            for method, (by_k, _) in curves.items():
                utils.plot_with_ci(ax, by_k[k]["mean"], by_k[k]["ci95"], method)
            ax.set(title=f"K = {k}", xlabel="gradient steps", ylabel="query MSE", yscale="log")
            ax.legend()
        save(fig, figure)


def omniglot(runs, figure):
    print("| run | algorithm | split | N-way K-shot | meta-iterations | training time | "
          "test accuracy (95% CI) | after steps |")
    print("|---|---|---|---|---|---|---|---|")
    for (results, config), run_dir in runs:
        test, s = results["test"], results["test"]["headline_step"]
        print(f"| {os.path.basename(run_dir.rstrip('/'))} | {config['algorithm']} | {test['split']} | "
              f"{config['n_way']}-way {config['k_shot']}-shot | {test['meta_iterations']} | "
              f"{test['train_seconds'] / 60:.1f} min | {100 * test['accuracy']['mean'][s]:.2f} ± "
              f"{100 * test['accuracy']['ci95'][s]:.2f}% | {s} |")
    if figure:
        fig, ax = plt.subplots(figsize=(6, 4))
        for (results, config), run_dir in runs:
            accuracy = results["test"]["accuracy"]
            utils.plot_with_ci(ax, accuracy["mean"], accuracy["ci95"], os.path.basename(run_dir.rstrip("/")))
        ax.set(xlabel="adaptation steps", ylabel="test accuracy", xscale="symlog")
        ax.legend(fontsize=8)
        save(fig, figure)


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"\nfigure: {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders holding results.json and config.json")
    parser.add_argument("--figure", help="where to save the comparison figure (PNG)")
    args = parser.parse_args()
    loaded = []
    for run_dir in args.runs:
        try:
            loaded.append(load(run_dir))
        except (OSError, json.JSONDecodeError) as error:
            parser.error(f"{run_dir} is not a finished run: {error}")
    if all("mse" in results for results, _ in loaded):
        sinusoid(list(zip(loaded, args.runs)), args.figure)
    elif all("test" in results for results, _ in loaded):
        omniglot(list(zip(loaded, args.runs)), args.figure)
    else:
        parser.error("give runs of one experiment: all sinusoid or all Omniglot")
