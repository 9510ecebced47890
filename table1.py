"""Table 1 of Finn et al. 2017, reproduced: every Omniglot cell trained by
omniglot_maml.py, then one markdown table and one figure beside the published numbers.

    python table1.py --minutes 30                                  # every cell, 30 minutes of training each
    python table1.py --cells maml-5w1s,fomaml-5w1s --processes 2   # under torchrun, 2 processes
    python table1.py --cells reptile-5w1s --iterations 6000        # a budget in iterations
    python table1.py --report                                      # only the table and figure of the runs there

Cells: maml-, fomaml-, reptile- with 5w1s, 5w5s, 20w1s, 20w5s; mlp-5w1s, mlp-5w5s
(the "no conv" network). Each cell is one run in <out_dir>/<split>/<cell>.
Rerunning the command continues unfinished runs (--resume) and skips those whose
budget is met; a larger budget continues a finished run. Validation and test
accuracy are recorded every --evaluate-every iterations against iterations and
training time (metrics.csv), so the table says when each cell first came within
the published confidence interval. Writes table1.md and table1.png to <out_dir>/<split>.
"""
import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time

import matplotlib
import numpy as np
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import omniglot_maml  # noqa: E402
import utils  # noqa: E402

CONFIG = dict(
    cells="all",                # comma-separated cells (listed above), or all
    split="paper",              # paper (1100/100/423 characters) | background (images_background/_evaluation)
    minutes=0.0,                # training budget of each cell in minutes (0: none)
    iterations=0,               # meta-iterations of each cell (0: the paper's)
    total_minutes=0.0,          # stop starting cells after this much time, cutting the last one's budget (0: none)
    processes=1,                # processes per run (more than 1: torchrun)
    device="auto",              # auto | cpu | cuda
    evaluate_every=500,         # iterations between validations and points of the test-accuracy curve
    data_dir="data/omniglot",   # where the archives are (downloaded if missing)
    extra="",                   # more omniglot_maml.py settings for every run, e.g. "--test-tasks 100"
    out_dir="results/table1",   # the runs go to <out_dir>/<split>/<cell>
    report=False,               # only write the table and figure of the runs already there
)
WAYS_SHOTS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}
# Published test accuracy (%) and its 95% CI: MAML, "no conv" and first-order MAML from
# Finn et al. Table 1; Reptile with transduction from Nichol et al. 2018, Table 1.
PUBLISHED = {
    "maml": ((98.7, 0.4), (99.9, 0.1), (95.8, 0.3), (98.9, 0.2)),
    "fomaml": ((98.3, 0.5), (99.2, 0.2), (89.4, 0.5), (97.9, 0.1)),
    "reptile": ((97.68, 0.04), (99.48, 0.06), (89.43, 0.14), (97.12, 0.32)),
    "mlp": ((89.7, 1.1), (97.5, 0.6)),
}
CELLS = {f"{family}-{config}": (family, config, published)
         for family, numbers in PUBLISHED.items() for config, published in zip(WAYS_SHOTS, numbers)}
TEST_MINUTES = 1.0  # kept free under --total-minutes for a run's start and final test


def arguments(cell, cfg, minutes, run_dir):
    family, config, _ = CELLS[cell]
    n_way, k_shot = WAYS_SHOTS[config]
    args = ["--n-way", n_way, "--k-shot", k_shot, "--split", cfg.split, "--device", cfg.device,
            "--data-dir", cfg.data_dir, "--out-dir", run_dir, "--validate-every", cfg.evaluate_every,
            "--test-every", cfg.evaluate_every, "--train-minutes", minutes]
    args += ["--model", "mlp"] if family == "mlp" else ["--algorithm", family]
    args += ["--meta-iterations", cfg.iterations] if cfg.iterations else []
    args += ["--resume"] if os.path.exists(os.path.join(run_dir, "checkpoint.pt")) else []
    launcher = [sys.executable]
    if cfg.processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc-per-node", str(cfg.processes)]
    return launcher + ["omniglot_maml.py"] + [str(a) for a in args] + shlex.split(cfg.extra)


def read_run(run_dir):
    """(config, results or None, metrics rows) of a run folder, None if it has not started."""
    if not os.path.exists(os.path.join(run_dir, "metrics.csv")):
        return None
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    results = None
    if os.path.exists(os.path.join(run_dir, "results.json")):
        with open(os.path.join(run_dir, "results.json")) as f:
            results = json.load(f)
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        rows = [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(f)]
    return config, results, rows


def budget_met(run, cfg, minutes):
    """Whether a run's last results already cover the budget asked for."""
    if run is None or run[1] is None:
        return False
    config, results = run[0], run[1]["test"]
    iterations = cfg.iterations or config["meta_iterations"]
    return results["meta_iterations"] >= iterations or 0 < 60 * minutes <= results["train_seconds"]


def train(command):
    """Run one cell to its end. SIGTERM is passed on (the run checkpoints and stops),
    then the table stops too; Ctrl-C reaches the run by itself."""
    child = subprocess.Popen(command)
    stopped = []

    def pass_on(signum, frame):
        stopped.append(signum)
        if signum == signal.SIGTERM:
            child.send_signal(signum)
    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
    code = child.wait()
    for s, handler in previous.items():
        signal.signal(s, handler)
    return code, stopped


def first_within(rows, published):
    """(iteration, minutes) of the first test-curve point at or above the published CI's lower end."""
    low = published[0] - published[1]
    return next(((r["iteration"], r["train_seconds"] / 60) for r in rows
                 if r["test_accuracy"] is not None and 100 * r["test_accuracy"] >= low), None)


def extrapolated(rows, published):
    """(iterations, minutes) at which a power law in iterations fitted to the test error
    of the second half of the test curve reaches the published CI's lower end; None
    when there are fewer than 3 such points or the error hardly falls."""
    tested = [r for r in rows if r["test_accuracy"] is not None]
    late = tested[len(tested) // 2:]
    if len(late) < 3:
        return None
    slope, intercept = np.polyfit(np.log([r["iteration"] for r in late]),
                                  np.log([100 - 100 * r["test_accuracy"] for r in late]), 1)
    if slope > -0.01:  # an error that falls by under 5% over 100x the iterations: no estimate
        return None
    iterations = math.exp((math.log(100 - published[0] + published[1]) - intercept) / slope)
    return iterations, iterations * late[-1]["train_seconds"] / late[-1]["iteration"] / 60


def protocol_notes(cell, config, results):
    family = CELLS[cell][0]
    paper = omniglot_maml.PAPER_DEFAULTS[("reptile" if family == "reptile" else "maml", config["n_way"])]
    trained, planned = results["test"]["meta_iterations"], config["meta_iterations"]
    notes = [f"{trained:,} of the paper's {paper['meta_iterations']:,} iterations"] \
        if trained < paper["meta_iterations"] else []
    if family == "reptile":
        notes.append("fresh Adam state per task (Reptile's code keeps one)")
        if planned != paper["meta_iterations"]:
            notes.append(f"meta step annealed to 0 over {planned:,} iterations")
    notes.append("1100 train + 100 validation characters (paper: 1200 train)" if config["split"] == "paper"
                 else "background/evaluation alphabets (paper: 1200/423 random characters)")
    return "; ".join(notes)


def report(cfg, folder):
    runs = {cell: read_run(os.path.join(folder, cell)) for cell in CELLS}
    lines = ["| cell | published | ours (95% CI) | iterations | training time | device | "
             "first within published CI | protocol notes |", "|---|---|---|---|---|---|---|---|"]
    for cell, (family, config, published) in CELLS.items():
        run = runs[cell]
        if run is None or run[1] is None:
            lines.append(f"| {cell} | {published[0]} ± {published[1]} | not run | | | | | |")
            continue
        config, results, rows = run
        test, step = results["test"], results["test"]["headline_step"]
        ours = f"{100 * test['accuracy']['mean'][step]:.2f} ± {100 * test['accuracy']['ci95'][step]:.2f}"
        ours += f" ({test['tasks']} tasks)" if test["tasks"] != 600 else ""
        reached, estimate = first_within(rows, published), extrapolated(rows, published)
        if reached:
            reached = f"iteration {reached[0]:,.0f} ({reached[1]:.1f} min)"
        elif estimate:
            reached = f"not yet; extrapolated: ~{estimate[0]:,.0f} iterations (~{estimate[1] / 60:.1f} h on its device)"
        else:
            reached = "not yet"
        lines.append(f"| {cell} | {published[0]} ± {published[1]} | {ours} | {test['meta_iterations']:,} | "
                     f"{test['train_seconds'] / 60:.1f} min | {results.get('device', '?')} | {reached} | "
                     f"{protocol_notes(cell, config, results)} |")
    lines += ["", f"Split: {cfg.split}. Test accuracy of the best-validation parameters on "
              "600 fixed test tasks (unless said), after 3 steps (5-way) or 5 (20-way), 50 Adam steps for Reptile; "
              "batch norm transductive as in the paper's code; test classes not rotated (the official "
              "code rotates them). Training time includes validation, not the test-curve points. Extrapolated: a power law "
              "fitted to the test error of the second half of the test curve, on the run's own device."]
    with open(os.path.join(folder, "table1.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot_curves({cell: run for cell, run in runs.items() if run}, os.path.join(folder, "table1.png"))
    print("\n".join(lines))
    print(f"table and figure in {folder}")


def plot_curves(runs, path):
    """Per cell: validation and test accuracy against iterations (top) and minutes
    (bottom), published number as a line; then MAML, FOMAML and Reptile at
    5-way 1-shot against the same minutes, when two or more of them ran."""
    if not runs:
        return
    algorithms = [c for c in ("maml-5w1s", "fomaml-5w1s", "reptile-5w1s") if c in runs]
    columns = len(runs) + (len(algorithms) > 1)
    fig, axes = plt.subplots(2, columns, figsize=(3.6 * columns, 6.4), squeeze=False)
    for column, (cell, (_, results, rows)) in enumerate(runs.items()):
        published = CELLS[cell][2]
        device = f", {results['device'].split(',')[0]}" if results else ""
        for row, (key, scale, label) in enumerate([("iteration", 1, "meta-iteration"),
                                                   ("train_seconds", 60, f"training time (min{device})")]):
            ax = axes[row][column]
            for accuracy, name in (("validation_accuracy", "validation (200 tasks)"), ("test_accuracy", "test")):
                curve_line(ax, rows, key, scale, accuracy, name)
            ax.axhline(published[0], color="black", linestyle="--", label=f"published {published[0]}")
            ax.axhspan(published[0] - published[1], published[0] + published[1], color="black", alpha=0.1)
            lowest = min([100 * r[a] for r in rows for a in ("validation_accuracy", "test_accuracy")
                          if r[a] is not None], default=100)
            ax.set(xlabel=label, ylabel="accuracy (%)", title=cell, ylim=(max(0, min(published[0] - 20, lowest - 2)), 100.5))
            ax.legend(fontsize=7, loc="lower right")
    if len(algorithms) > 1:
        for row, (accuracy, name) in enumerate((("test_accuracy", "test"), ("validation_accuracy", "validation"))):
            ax = axes[row][-1]
            for cell in algorithms:
                curve_line(ax, runs[cell][2], "train_seconds", 60, accuracy, cell)
            ax.set(xlabel="training time (min)", ylabel=f"{name} accuracy (%)", title="5-way 1-shot at equal time",
                   ylim=(60, 100.5))
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def curve_line(ax, rows, key, scale, accuracy, label):
    """One accuracy column of metrics.csv against iterations or minutes; the test curve with its 95% band."""
    points = [r for r in rows if r[accuracy] is not None]
    x, mean = [r[key] / scale for r in points], [100 * r[accuracy] for r in points]
    line, = ax.plot(x, mean, marker="o" if accuracy == "test_accuracy" else None, markersize=3, label=label)
    if accuracy == "test_accuracy" and points:
        ci = [100 * r["test_ci95"] for r in points]
        ax.fill_between(x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                        color=line.get_color(), alpha=0.2)


def main(argv=None):
    cfg, _ = utils.parse_config(CONFIG, argv, __doc__, comments=utils.config_comments(__file__))
    cells = list(CELLS) if cfg.cells == "all" else cfg.cells.split(",")
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        utils.fail(f"unknown cell {unknown[0]!r}; the cells are {', '.join(CELLS)}")
    utils.check_settings(cfg, choices=dict(split=("paper", "background")),
                         at_least=dict(processes=1, evaluate_every=1),
                         zero_is_off=dict(minutes="none", iterations="the paper's", total_minutes="none"))
    folder = os.path.join(cfg.out_dir, cfg.split)
    os.makedirs(folder, exist_ok=True)
    start = time.monotonic()
    for cell in [] if cfg.report else cells:
        run_dir = os.path.join(folder, cell)
        minutes = cfg.minutes
        if cfg.total_minutes:
            left = cfg.total_minutes - (time.monotonic() - start) / 60 - TEST_MINUTES
            if left <= 0:
                print(f"{cell}: not started, --total-minutes {cfg.total_minutes} is spent")
                continue
            minutes = min(minutes, left) if minutes else left
        if budget_met(read_run(run_dir), cfg, minutes):
            print(f"{cell}: its budget is met in {run_dir}, skipped")
            continue
        command = arguments(cell, cfg, minutes, run_dir)
        print(f"{cell}: {' '.join(command)}", flush=True)
        code, stopped = train(command)
        if stopped:
            report(cfg, folder)
            sys.exit(code)
        if code != 0:
            print(f"{cell}: the run failed (exit code {code}); going on with the next cell", flush=True)
    report(cfg, folder)


if __name__ == "__main__":
    main(sys.argv[1:])
