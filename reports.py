"""What a run reports: statistics over tasks (mean, 95% CI, diverged tasks),
numbers for tables, and plot helpers."""
import json
import math
import statistics

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib import ticker  # noqa: E402

import files  # noqa: E402


def summarize(per_task):
    """Per column of a (tasks, steps) tensor: the mean over the tasks whose value
    is finite and the half-width of its 95% normal confidence interval (1.96
    standard errors), the median over all tasks, and how many tasks diverged
    (NaN or infinite). Lists, one entry per column."""
    values = torch.as_tensor(per_task, dtype=torch.float64)
    finite = torch.isfinite(values)
    n = finite.sum(0)
    mean = torch.where(finite, values, 0).sum(0) / n
    variance = torch.where(finite, values - mean, 0).pow(2).sum(0) / (n - 1)
    median = torch.where(torch.isnan(values), math.inf, values).median(0).values  # NaN counts as diverged high
    return dict(mean=mean.tolist(), ci95=(1.96 * variance.sqrt() / n.sqrt()).tolist(), median=median.tolist(),
                diverged=(values.shape[0] - n).tolist())


# Config keys that say where or how a run was launched, not what it is.
NOT_SETTINGS = {"out_dir", "resume", "eval_only", "data_dir", "device"}


def seed_groups(configs):
    """The configs (run settings, dicts) grouped by what they set but their seed: lists of
    indices, in the order of each group's first config (a run alone is a group of one). A
    setting one config lacks does not tell it from another: the scripts gained it after
    that run, with a default that keeps what they did before."""
    groups = []  # (the settings of a group's first config, its indices)
    for index, config in enumerate(configs):
        settings = {key: value for key, value in config.items() if key not in NOT_SETTINGS | {"seed"}}
        group = next((indices for first, indices in groups
                      if all(first[key] == settings[key] for key in first.keys() & settings.keys())), None)
        if group is None:
            groups.append((settings, [index]))
        else:
            group.append(index)
    return [indices for _, indices in groups]


def spread(values, digits):
    """mean ± standard deviation (sample, n - 1) of the values, and how many."""
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n = {len(values)})"


def number(x):
    """A number for a table: 3 decimals, or 3 significant digits with an exponent when large."""
    return "n/a" if x is None else f"{x:.3f}" if abs(x) < 1e4 else f"{x:.2e}"


def percent(stats):
    """The mean and 95% CI of accuracies (fractions) as percentages, None kept."""
    return [[None if v is None else 100 * v for v in stats[key]] for key in ("mean", "ci95")]


def log_scale_if_possible(ax, axis="y"):
    """A log scale, with plain tick labels, on an axis whose positive finite data
    span more than a factor of 10; else a linear one (a narrow range, or a
    diverged run, still plots)."""
    data = [line.get_ydata() if axis == "y" else line.get_xdata() for line in ax.get_lines()]
    values = torch.cat([torch.as_tensor(d, dtype=torch.float64).flatten() for d in data]) if data else torch.zeros(0)
    values = values[torch.isfinite(values) & (values > 0)]
    if len(values) and values.max() > 10 * values.min():
        ax.set(**{f"{axis}scale": "log"})
        scale_axis = ax.yaxis if axis == "y" else ax.xaxis
        scale_axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        scale_axis.set_minor_formatter(ticker.NullFormatter())


LINE_STYLES = [dict(linestyle=style, marker=marker) for style, marker in
               (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 1)), "P"))]


def plot_with_ci(ax, mean, ci, label, span=None, **style):
    """A line over steps 0..S with its 95% confidence band; a single value (of a method
    that predicts in one pass) as a dashed level over `span` steps."""
    if len(mean) == 1 and span:
        mean, ci, style = mean * span, ci * span, {"linestyle": "--", "marker": None, **style}
    steps = range(len(mean))
    mean, ci = (torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
                for values in (mean, ci))
    line, = ax.plot(steps, mean, **{"marker": "o", "markersize": 4, **style}, label=label)
    ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2, color=line.get_color())


def print_accuracy_by_step(stats, tasks, headline_step):
    """Test accuracy after each number of adaptation steps, as the paper's figures show it,
    with the tasks whose adaptation diverged; or the one accuracy of an algorithm that
    predicts in one pass."""
    if len(stats["mean"]) == 1:
        mean, ci = (values[0] for values in percent(stats))
        print(f"test accuracy (%), predicted in one pass from the support set, mean ± 95% CI over {tasks} tasks: "
              + ("n/a" if mean is None or ci is None else f"{mean:.2f} ± {ci:.2f}"))
        return
    print(f"test accuracy (%) after each number of adaptation steps, mean ± 95% CI over {tasks} tasks:")
    for step, (mean, ci, diverged) in enumerate(zip(*percent(stats), stats["diverged"])):
        shown = "n/a" if mean is None or ci is None else f"{mean:6.2f} ± {ci:.2f}"
        print(f"  {step:>3} steps: {shown}" + ("  (the headline)" if step == headline_step else "")
              + (f"; diverged on {diverged} of the tasks" if diverged else ""))


def plot_classification_training(rows, train_steps, test_steps, path):
    """Training loss and accuracy, and validation accuracy, against iterations; the steps
    are None and 0 for an algorithm that predicts in one pass."""
    after_train = f"after {train_steps} step(s)" if train_steps else "one pass"
    after_test = f"after {test_steps} steps" if test_steps else "one pass"
    fig, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    iterations = [r["iteration"] for r in rows]
    loss_ax.plot(iterations, [r["train_loss"] for r in rows])
    loss_ax.set(xlabel="meta-iteration", ylabel=f"query loss, {after_train}",
                title="meta-training tasks (mean per metrics row)")
    log_scale_if_possible(loss_ax)
    accuracy_ax.plot(iterations, [100 * r["train_accuracy"] for r in rows],
                     label=f"meta-training tasks, {after_train}")
    validated = [r for r in rows if r["validation_accuracy"] == r["validation_accuracy"]]  # not NaN
    accuracy_ax.plot([r["iteration"] for r in validated], [100 * r["validation_accuracy"] for r in validated],
                     marker="o", label=f"validation tasks, {after_test}")
    accuracy_ax.set(xlabel="meta-iteration", ylabel="query accuracy (%)")
    accuracy_ax.legend()
    files.save_figure(fig, path)


def plot_test_accuracy(test, title, path):
    """Test accuracy after each number of adaptation steps, the headline marked (one point for one pass)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    plot_with_ci(ax, *percent(test["accuracy"]),
                         f"mean, 95% CI over {test['tasks']} test tasks (band)")
    s = test["headline_step"]
    if len(test["accuracy"]["mean"]) > 1:
        ax.axvline(s, color="grey", linestyle=":", label=f"headline: {s} steps")
    else:
        title += " (one pass)"
    ax.set(xlabel="adaptation steps", ylabel="query accuracy (%)", title=title)
    ax.legend()
    files.save_figure(fig, path)


def plot_metric_curve(ax, rows, key, scale, accuracy, label, **style):
    """One accuracy column of metrics.csv rows against iterations or minutes (r[key] / scale),
    in percent; the test curve with markers and its 95% band."""
    points = [r for r in rows if math.isfinite(r[accuracy])]
    x, mean = [r[key] / scale for r in points], [100 * r[accuracy] for r in points]
    tested = accuracy == "test_accuracy"
    line, = ax.plot(x, mean, **{"marker": "o" if tested else None, "markersize": 3, **style}, label=label)
    if tested and points:
        ci = [100 * r["test_ci95"] for r in points]
        ax.fill_between(x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                        color=line.get_color(), alpha=0.2)
