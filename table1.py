"""Table 1 of Finn et al. 2017, reproduced: every Omniglot cell trained by
omniglot_maml.py, then one markdown table and one figure beside the published numbers,
built from the run records kept in the repository.

    python table1.py --minutes 30                                  # every cell, 30 minutes of training each
    python table1.py --cells maml-5w1s,fomaml-5w1s --processes 2   # under torchrun, 2 processes
    python table1.py --cells reptile-5w1s --iterations 6000        # a budget in iterations
    python table1.py --add results/omniglot/RUN                    # add a finished run of your own
    python table1.py --report                                      # only rebuild the table and figure

Cells: maml-, fomaml-, reptile-, protonet- with 5w1s, 5w5s, 20w1s, 20w5s; metasgd-5w1s,
metasgd-5w5s; mlp-5w1s, mlp-5w5s (the "no conv" network). Each cell is one run in <out_dir>/<split>/<cell>.
Rerunning the command continues unfinished runs (--resume) and skips those whose
budget is met; a larger budget continues a finished run. Validation and test
accuracy are recorded every --evaluate-every iterations against iterations and
training time (metrics.csv), so the table says when each cell first came within
the published confidence interval.

The table is built from run records alone: config.json, metrics.csv and
results*.json of each cell in <records>/<split>/<cell> (docs/runs, committed).
A cell that finishes here (or is found finished), and a run given to --add, is
copied there, replacing that cell's record. The table and figure go to <records>/<split>/table1.md and
table1.png; for the repository's own docs/runs and the paper split, the table
also replaces the block between the table1 markers in README.md.
"""
import contextlib
import glob
import io
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import matplotlib
import numpy as np
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import omniglot_maml  # noqa: E402
import files  # noqa: E402
import reports  # noqa: E402
import settings  # noqa: E402
import signals  # noqa: E402
import utils  # noqa: E402

CONFIG = dict(
    cells="all",                # comma-separated cells (listed above), or all
    split="paper",              # paper (1100/100/423 characters) | background (images_background/_evaluation)
    minutes=0.0,                # training budget of each cell in minutes (0: none)
    iterations=0,               # meta-iterations of each cell (0: the paper's)
    total_minutes=0.0,          # stop starting cells after this much time, cutting the last one's budget (0: none)
    processes=1,                # processes per run (more than 1: python distributed.py --processes N)
    device="auto",              # auto | cpu | cuda
    evaluate_every=500,         # iterations between validations and points of the test-accuracy curve
    data_dir="data/omniglot",   # where the archives are (downloaded if missing)
    extra="",                   # more omniglot_maml.py settings for every run, e.g. "--test-tasks 100"
    out_dir="results/table1",   # the runs go to <out_dir>/<split>/<cell>
    records="docs/runs",        # the run records the table is built from: <records>/<split>/<cell>
    add="",                     # a finished omniglot_maml.py run folder to add to the records, then report
    report=False,               # only rebuild the table and figure from the records
)
WAYS_SHOTS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}
# Published test accuracy (%) and its 95% CI: MAML, "no conv" and first-order MAML from
# Finn et al. Table 1; Reptile with transduction from Nichol et al. 2018, Table 1; Meta-SGD
# from Li et al. 2017 (its Omniglot table, 5-way); Prototypical Networks from Snell et al.
# 2017 (its Omniglot table), which gives no interval (None).
PUBLISHED = {
    "maml": ((98.7, 0.4), (99.9, 0.1), (95.8, 0.3), (98.9, 0.2)),
    "fomaml": ((98.3, 0.5), (99.2, 0.2), (89.4, 0.5), (97.9, 0.1)),
    "reptile": ((97.68, 0.04), (99.48, 0.06), (89.43, 0.14), (97.12, 0.32)),
    "mlp": ((89.7, 1.1), (97.5, 0.6)),
    "metasgd": ((99.53, 0.26), (99.93, 0.09)),
    "protonet": ((98.8, None), (99.7, None), (96.0, None), (98.9, None)),
}
CELLS = {f"{family}-{config}": (family, config, published)
         for family, numbers in PUBLISHED.items() for config, published in zip(WAYS_SHOTS, numbers)}
EXTRAPOLATION_REACH = 100  # no estimate beyond 100x the iterations a curve has
TEST_MINUTES = 1.0  # kept free under --total-minutes for a run's start and final test
ROOT = os.path.dirname(os.path.abspath(__file__))
README_MARKERS = ("<!-- table1: written by table1.py --report -->", "<!-- table1 end -->")
RECORD_FILES = ("config.json", "metrics.csv", "results*.json")
# Settings a row names when a run differs from the paper's (beyond those PAPER_DEFAULTS resolves).
PAPER_SETTINGS = dict(meta_lr=1e-3, rotate_test_classes=False)


def published_text(published):
    return f"{published[0]} ± {published[1]}" if published[1] is not None else f"{published[0]} (no CI given)"


def lower_end(published):
    """The published CI's lower end (the number itself when the paper gives no CI)."""
    return published[0] - (published[1] or 0)


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
        launcher += ["distributed.py", "--processes", str(cfg.processes)]
    return launcher + ["omniglot_maml.py"] + [str(a) for a in args] + shlex.split(cfg.extra)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_run(run_dir):
    """(config, results or None, metrics rows, {results file: results} of other test
    protocols) of a run folder or record, None if it has not started."""
    if not os.path.exists(os.path.join(run_dir, "metrics.csv")):
        return None
    results_path = os.path.join(run_dir, "results.json")
    results = read_json(results_path) if os.path.exists(results_path) else None
    others = {os.path.basename(path): read_json(path)
              for path in sorted(glob.glob(os.path.join(run_dir, "results-*.json")))}
    rows = files.read_metrics(os.path.join(run_dir, "metrics.csv"))
    return read_json(os.path.join(run_dir, "config.json")), results, rows, others


def cell_of(config):
    """The Table 1 cell an omniglot_maml.py run's config trains, or None."""
    family = "mlp" if config.get("model") == "mlp" else config.get("algorithm")
    size = next((name for name, ways_shots in WAYS_SHOTS.items()
                 if ways_shots == (config.get("n_way"), config.get("k_shot"))), None)
    cell = f"{family}-{size}"
    if cell in CELLS and config.get("model") in omniglot_maml.MODELS and \
            (family != "mlp" or config["algorithm"] == "maml"):
        return cell
    return None


def record_name(cell, config):
    """The folder of a run's record, its row's name: the cell, then +<network> for a network
    other than the cell's, +running-batch-norm for batch norm that is not transductive, and
    -seed<k> for a seed other than 0."""
    name = cell
    if config.get("model", "cnn") != ("mlp" if CELLS[cell][0] == "mlp" else "cnn"):
        name += f"+{config['model']}"
    if config.get("batch_norm", "transductive") != "transductive":
        name += f"+{config['batch_norm']}-batch-norm"
    return name + (f"-seed{config['seed']}" if config.get("seed", 0) else "")


def cell_records(folder, cell):
    """The names of a cell's records in a folder, the cell's own first."""
    names = [name for name in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, name))
             and (name == cell or name.startswith((cell + "+", cell + "-seed")))] if os.path.isdir(folder) else []
    return sorted(names, key=lambda name: name != cell)


def record(run_dir, records, split, cell):
    """Copy a finished run's text records into <records>/<split>/<record_name>, replacing
    that record."""
    target = os.path.join(records, split, record_name(cell, read_json(os.path.join(run_dir, "config.json"))))
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    for pattern in RECORD_FILES:
        for path in glob.glob(os.path.join(run_dir, pattern)):
            shutil.copyfile(path, os.path.join(target, os.path.basename(path)))
    return target


def add(run_dir, records):
    """--add: the records of a finished run of a Table 1 cell; the split it was run on."""
    if not os.path.exists(os.path.join(run_dir, "results.json")):
        utils.fail(f"{run_dir} holds no finished run (no results.json): finish it first (--resume)")
    config = read_json(os.path.join(run_dir, "config.json"))
    cell = cell_of(config)
    if cell is None:
        utils.fail(f"{run_dir} is not a Table 1 cell ({config.get('algorithm')}, {config.get('model')}, "
                   f"{config.get('n_way')}-way {config.get('k_shot')}-shot); the cells are {', '.join(CELLS)}")
    print(f"{cell}: the records of {run_dir} are now in {record(run_dir, records, config['split'], cell)}")
    return config["split"]


def budget_met(run, cfg, minutes):
    """Whether a run's last results already cover the budget asked for."""
    if run is None or run[1] is None:
        return False
    config, results = run[0], run[1]["test"]
    iterations = cfg.iterations or config["meta_iterations"]
    return results["meta_iterations"] >= iterations or 0 < 60 * minutes <= results["train_seconds"]


def train(command):
    """Run one cell to its end, in a session of its own: Ctrl-C and SIGTERM, to this
    process or its group, reach the run once, through here (the run checkpoints and
    stops); then the table stops too."""
    child = subprocess.Popen(command, start_new_session=True)
    stopped = []

    def pass_on(signum, frame):
        stopped.append(signum)
        if child.poll() is None:
            child.send_signal(signum)
    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
    code = child.wait()
    for s, handler in previous.items():
        signal.signal(s, handler)
    return code, stopped


def first_within(rows, published):
    """(iteration, minutes) of the first test-curve point at or above the published CI's lower end."""
    low = lower_end(published)
    return next(((r["iteration"], r["train_seconds"] / 60) for r in rows
                 if finite(r["test_accuracy"]) and 100 * r["test_accuracy"] >= low), None)


def finite(value):
    return value is not None and math.isfinite(value)


def extrapolated(rows, published):
    """(iterations, minutes) at which a power law in iterations fitted to the test error
    of the second half of the test curve reaches the published CI's lower end; None
    when there are fewer than 3 such points, the error hardly falls, or the fit reaches
    the published number only beyond EXTRAPOLATION_REACH times the iterations tested."""
    tested = [r for r in rows if finite(r["test_accuracy"])]
    late = tested[len(tested) // 2:]
    if len(late) < 3:
        return None
    slope, intercept = np.polyfit(np.log([r["iteration"] for r in late]),
                                  np.log([100 - 100 * r["test_accuracy"] for r in late]), 1)
    if slope > -0.01:  # an error that falls by under 5% over 100x the iterations: no estimate
        return None
    iterations = math.exp((math.log(100 - lower_end(published)) - intercept) / slope)
    if iterations > EXTRAPOLATION_REACH * late[-1]["iteration"]:
        return None
    return iterations, iterations * late[-1]["train_seconds"] / late[-1]["iteration"] / 60


def headline(test):
    """Test accuracy (%) at the headline step, mean ± 95% CI, and the task count when not 600."""
    step = test["headline_step"]
    text = f"{100 * test['accuracy']['mean'][step]:.2f} ± {100 * test['accuracy']['ci95'][step]:.2f}"
    return text + (f" ({test['tasks']} tasks)" if test["tasks"] != 600 else "")


def over_seeds(runs):
    """The ours cell of a row of several seeds: mean ± sd over them, and each one's headline."""
    tests = [results["test"] for _, results, _, _ in runs]
    spread = reports.spread([100 * t["accuracy"]["mean"][t["headline_step"]] for t in tests], 2)
    seeds = ", ".join(f"seed {config.get('seed', 0)}: {headline(results['test'])}" for config, results, _, _ in runs)
    return f"{spread} over seeds ({seeds})"


def protocol_notes(cell, config, results, others):
    family = CELLS[cell][0]
    paper_defaults = omniglot_maml.PAPER_DEFAULTS
    paper = paper_defaults.get((family, config["n_way"]), paper_defaults[("maml", config["n_way"])])
    trained, planned = results["test"]["meta_iterations"], config["meta_iterations"]
    whose = "its default" if family == "protonet" else "the paper's"  # Snell et al. give no episode count
    notes = [f"{trained:,} of {whose} {paper['meta_iterations']:,} iterations"] \
        if trained < paper["meta_iterations"] else []
    if family == "reptile":
        notes.append("fresh Adam state per task (Reptile's code keeps one)")
        if planned != paper["meta_iterations"]:
            notes.append(f"meta step annealed to 0 over {planned:,} iterations")
    if family == "protonet":
        notes.append("the paper: Vinyals et al.'s 1200 training characters, test classes rotated too")
    if config.get("batch_norm", "transductive") != "transductive":
        notes.append("batch norm with running statistics at test, as its paper's code (not transductive)")
    notes.append("1100 train + 100 validation characters (paper: 1200 train)" if config["split"] == "paper"
                 else "background/evaluation alphabets (paper: 1200/423 random characters)")
    paper_values = {**{k: v for k, v in paper.items() if k != "meta_iterations"}, **PAPER_SETTINGS}
    notes += [f"{key} {config[key]} (paper: {value})" for key, value in paper_values.items()
              if key in config and config[key] != value]
    for other in others.values():
        test = other["test"]
        protocol = ["test classes rotated (the official code's protocol)"] if test.get("rotate_test_classes") else []
        protocol += [f"{test['headline_step']} steps"] if test["headline_step"] != results["test"]["headline_step"] \
            else []
        notes.append(f"{', '.join(protocol) or 'tested again'}: {headline(test)}")
    return "; ".join(notes)


def table(records, split, notes=True):
    """The markdown table of the records of a split (without the protocol notes
    column and the text under it when notes is False), and the runs it read."""
    folder = os.path.join(records, split)
    runs = {}  # cell: {record name: its run}, of the finished records
    for cell in CELLS:
        found = {name: read_run(os.path.join(folder, name)) for name in cell_records(folder, cell)}
        runs[cell] = {name: run for name, run in found.items() if run and run[1]}
    lost_path = os.path.join(folder, "lost.json")
    lost = read_json(lost_path) if os.path.exists(lost_path) else {}
    lines = ["| cell | published | ours (95% CI) | network | iterations | training time | device | "
             "first within published CI | protocol notes |", "|---|---|---|---|---|---|---|---|---|"]
    for cell, (family, config, published) in CELLS.items():
        if not runs[cell]:
            missing = f"records lost ({lost[cell]}); rerun the cell" if cell in lost else "not run"
            lines.append(f"| {cell} | {published_text(published)} | {missing} | | | | | | |")
            continue
        names = list(runs[cell])
        for group in reports.seed_groups([runs[cell][name][0] for name in names]):
            name, group_runs = names[group[0]], [runs[cell][names[i]] for i in group]
            config, results, rows, others = group_runs[0]
            test = results["test"]
            reached, estimate = first_within(rows, published), extrapolated(rows, published)
            if reached:
                reached = f"iteration {reached[0]:,.0f} ({reached[1]:.1f} min)"
            elif estimate:
                reached = (f"not yet; extrapolated: ~{estimate[0]:,.0f} iterations (~{estimate[1] / 60:.1f} h on its "
                           f"device)")
            else:
                reached = "not yet"
            ours = headline(test) if len(group) == 1 else over_seeds(group_runs)
            after = "" if len(group) == 1 else f"seed {config.get('seed', 0)}'s: "
            lines.append(f"| {name} | {published_text(published)} | {ours} | {config['model']} | "
                         f"{after}{test['meta_iterations']:,} | "
                         f"{test['train_seconds'] / 60:.1f} min | {results.get('device', '?')} | {reached} | "
                         f"{protocol_notes(cell, config, results, others)} |")
    if not notes:
        return ["|".join(line.split("|")[:-2]) + "|" for line in lines], None
    lines += ["", f"Split: {split}. Test accuracy of the best-validation parameters on "
              "600 fixed test tasks (unless said), after 3 steps (5-way) or 5 (20-way), 50 Adam steps for Reptile, "
              "1 step of its learned sizes for Meta-SGD, one pass for Prototypical Networks; "
              "batch norm transductive as in the paper's code and test classes not rotated (the official "
              "code rotates them) unless a note says so. Training time includes validation, not the test-curve "
              "points. Extrapolated: a power law fitted to the test error of the second half of the test curve, "
              "on the run's own device."]
    return lines, {name: (cell, run) for cell, records in runs.items() for name, run in records.items()}


def report(records, split):
    """Write the table and figure of a split's records; for the repository's own
    records of the paper split, the README's table block too."""
    lines, runs = table(records, split)
    folder = os.path.join(records, split)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "table1.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    written = [os.path.join(folder, "table1.md")]
    if runs:
        plot_curves(runs, os.path.join(folder, "table1.png"))
        written.append(os.path.join(folder, "table1.png"))
    else:
        print(f"no finished cell has records in {folder}, so no figure")
    if split == "paper" and os.path.realpath(records) == os.path.join(ROOT, "docs", "runs"):
        if replace_readme_block(os.path.join(ROOT, "README.md"), table(records, split, notes=False)[0]):
            written.append("README.md (its Table 1 block)")
    print(f"table built from the records in {folder}; written: {', '.join(written)}")


def replace_readme_block(path, lines):
    """Put the table between the README's table1 markers; False when it has none."""
    with open(path) as f:
        text = f.read()
    start, end = (text.find(marker) for marker in README_MARKERS)
    if start < 0 or end < start:
        return False
    block = README_MARKERS[0] + "\n" + "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text[:start] + block + text[end:])
    return True


def plot_curves(runs, path):
    """One panel per cell: validation and test accuracy (95% band) against
    iterations, training minutes on the top axis, the published number and its
    CI as a line and band; then the algorithms at 5-way 1-shot against
    the same minutes, when two or more of them ran. Three panels a row."""
    algorithms = [c for c in ("maml-5w1s", "fomaml-5w1s", "reptile-5w1s", "metasgd-5w1s", "protonet-5w1s")
                  if c in runs]  # the cells' own records
    panels = len(runs) + (len(algorithms) > 1)
    columns = min(3, panels)
    rows_of_panels = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(4.2 * columns, 3.6 * rows_of_panels), squeeze=False)
    axes = axes.flatten()
    for ax, (name, (cell, (_, results, rows, _))) in zip(axes, runs.items()):
        published = CELLS[cell][2]
        for accuracy, name in (("validation_accuracy", "validation (200 tasks)"), ("test_accuracy", "test")):
            reports.plot_metric_curve(ax, rows, "iteration", 1, accuracy, name)
        ax.axhline(published[0], color="black", linestyle="--", label=f"published {published[0]}")
        if published[1] is not None:
            ax.axhspan(published[0] - published[1], published[0] + published[1], color="black", alpha=0.1)
        lowest = min([100 * r[a] for r in rows for a in ("validation_accuracy", "test_accuracy")
                      if finite(r[a])], default=100)
        ax.set(xlabel="meta-iteration", ylabel="accuracy (%)", title=f"{name}, {results['device'].split(',')[0]}",
               ylim=(max(0, min(published[0] - 20, lowest - 2)), 100.5))
        seconds_per_iteration = rows[-1]["train_seconds"] / rows[-1]["iteration"]
        top = ax.secondary_xaxis("top", functions=(lambda i, s=seconds_per_iteration: i * s / 60,
                                                   lambda m, s=seconds_per_iteration: m * 60 / s))
        top.set_xlabel("training minutes (mean rate)", fontsize=8)
        ax.legend(fontsize=8, loc="lower right")
    if len(algorithms) > 1:
        ax = axes[len(runs)]
        for cell in algorithms:
            reports.plot_metric_curve(ax, runs[cell][1][2], "train_seconds", 60, "test_accuracy", cell)
        ax.set(xlabel="training time (min)", ylabel="test accuracy (%)", title="5-way 1-shot at equal time",
               ylim=(60, 100.5))
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes[panels:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def check_inputs(cfg):
    """table1.py's own settings, before any cell starts and before any folder is made:
    one line and exit 2 for a bad one."""
    settings.check_settings(cfg, choices=dict(split=("paper", "background"), device=("auto", "cpu", "cuda")),
                            at_least=dict(processes=1, evaluate_every=1),
                            zero_is_off=dict(minutes="none", iterations="the paper's", total_minutes="none"))
    cells = list(CELLS) if cfg.cells == "all" else cfg.cells.split(",")
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        utils.fail(f"unknown cell {unknown[0]!r}; the cells are {', '.join(CELLS)}")
    try:
        extra = shlex.split(cfg.extra)
    except ValueError as error:
        utils.fail(f"--extra {cfg.extra!r}: {error}")
    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):
            settings.parse_config(omniglot_maml.CONFIG, extra, types=omniglot_maml.AUTO_TYPES)
    except SystemExit:
        utils.fail(f"--extra {cfg.extra!r}: {complaint.getvalue().strip().removeprefix('error: ')}")
    if os.path.exists(cfg.data_dir) and not os.path.isdir(cfg.data_dir):
        utils.fail(f"--data-dir {cfg.data_dir} is a file, not a folder")
    for key in ("out_dir", "records"):
        folder = getattr(cfg, key)
        existing = os.path.abspath(folder)  # the folder, or the part of its path that exists: made when used
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            where = "" if existing == os.path.abspath(folder) else f": {existing}"
            utils.fail(f"--{key.replace('_', '-')} {folder}{where} is a file, not a folder")
        if not os.access(existing, os.W_OK):
            utils.fail(f"--{key.replace('_', '-')} {folder}: cannot write in {existing}")
    return cells


def main(argv=None):
    cfg, _ = settings.parse_config(CONFIG, argv, __doc__, comments=settings.config_comments(__file__))
    cells = check_inputs(cfg)
    if cfg.add:
        report(cfg.records, add(cfg.add, cfg.records))
        return
    folder = os.path.join(cfg.out_dir, cfg.split)
    start, failed = time.monotonic(), {}
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
            print(f"{cell}: its budget is met in {run_dir}, skipped; records in "
                  f"{record(run_dir, cfg.records, cfg.split, cell)}")
            continue
        command = arguments(cell, cfg, minutes, run_dir)
        print(f"{cell}: {' '.join(command)}", flush=True)
        code, stopped = train(command)
        if code == 0:
            print(f"{cell}: records in {record(run_dir, cfg.records, cfg.split, cell)}", flush=True)
        if stopped:
            report(cfg.records, cfg.split)
            print(f"stopped by a signal; continue with: {signals.continue_command('table1.py', argv, 1, False)}",
                  file=sys.stderr, flush=True)
            sys.exit(128 + stopped[0])
        if code != 0:
            failed[cell] = code
            print(f"{cell}: the run failed (exit code {code}); going on with the next cell", flush=True)
    report(cfg.records, cfg.split)
    if failed:
        codes = set(failed.values())
        print(f"error: {len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(codes.pop() if len(codes) == 1 else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
