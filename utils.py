"""Run machinery shared by both experiments: command-line config, run folders,
atomic checkpoints, metrics CSV, confidence intervals and plots."""
import argparse
import csv
import fcntl
import json
import math
import os
import pickle
import shlex
import signal
import sys
import zipfile
from types import SimpleNamespace

import torch

import distributed

# Keys that may be given anew when a run is resumed: where it and its data live,
# where it runs, how many tasks its final test uses, and its time budget.
RESUME_FREE_KEYS = {"out_dir", "device", "data_dir", "test_tasks", "train_minutes"}
# Keys that say what this invocation does rather than what the run is.
INVOCATION_KEYS = {"resume", "eval_only"}


def fail(message, code=2):
    """Stop with a one-line error: exit code 2 for bad input (before any work),
    1 for a failure mid-run (on a line of its own, after the progress bar)."""
    print(("\n" if code == 1 else "") + f"error: {message}", file=sys.stderr)
    sys.exit(code)


def check_settings(cfg, choices=None, at_least=None, positive=(), zero_is_off=None):
    """Stop in one line at the first setting out of its range: choices {key: allowed
    values}, at_least {key: minimum} (None, the paper's value to come, passes),
    positive (keys that must be > 0), zero_is_off {key: what 0 means} (>= 0)."""
    def flag(key):
        return "--" + key.replace("_", "-")
    for key, allowed in (choices or {}).items():
        if getattr(cfg, key) not in allowed:
            fail(f"{flag(key)} must be one of {', '.join(allowed)}, not {getattr(cfg, key)!r}")
    for key, minimum in (at_least or {}).items():
        if getattr(cfg, key) is not None and getattr(cfg, key) < minimum:
            fail(f"{flag(key)} must be at least {minimum}, got {getattr(cfg, key)}")
    for key in positive:
        if not getattr(cfg, key) > 0:
            fail(f"{flag(key)} must be positive, got {getattr(cfg, key)}")
    for key, off in (zero_is_off or {}).items():
        if getattr(cfg, key) < 0:
            fail(f"{flag(key)} must be 0 ({off}) or positive, got {getattr(cfg, key)}")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        fail(message)


def _parse_bool(text):
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_stop_signal = []  # the signal that asked the run to stop, once one has


def stop_on_signals():
    """From now on SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop after
    its current iteration (stop_requested); a second one stops at once."""
    def request_stop(signum, frame):
        if _stop_signal:
            sys.exit(128 + signum)
        _stop_signal.append(signum)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)


def stop_requested():
    """The exit code a stop asked for by a signal ends with (130 for SIGINT, 143
    for SIGTERM), or 0 when no signal came."""
    return 128 + _stop_signal[0] if _stop_signal else 0


def stop_if_requested(iteration, save, script, argv, rank, world_size, device):
    """At the top of a training iteration: when a signal has asked any process to
    stop, all stop here together; process 0 writes a checkpoint (save()) and says
    how to continue, and every process exits with the signal's code."""
    code = distributed.largest(stop_requested(), world_size, device)
    if not code:
        return
    if rank == 0:
        save()
        launcher = "python" if world_size == 1 else f"torchrun --nproc-per-node {world_size}"
        argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        command = " ".join([launcher, script, *map(shlex.quote, argv), "--resume"])
        print(f"\nstopped at iteration {iteration}, checkpoint saved; continue with: {command}", file=sys.stderr)
    sys.exit(code)


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def config_comments(script):
    """{key: its comment} for the `CONFIG = dict(...)` block of a script: the
    comment after the key, continued by deeper-indented comment lines below it;
    a comment line at the keys' indentation introduces the key that follows."""
    comments, key, preamble = {}, None, []
    with open(script) as f:
        lines = f.read().split("CONFIG = dict(\n", 1)[1].split("\n)\n", 1)[0].splitlines()
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            if key and len(line) - len(line.lstrip()) > 4:
                comments[key] += " " + text[1:].strip()
            else:
                preamble.append(text[1:].strip())
        elif "=" in text:
            key = text.split("=", 1)[0]
            comment = text.split("#", 1)[1].strip() if "#" in text else ""
            comments[key] = " ".join([*preamble, comment]).strip()
            preamble = []
    return comments


def parse_config(defaults, argv, description="", types=None, comments=None):
    """Override the plain values of `defaults` with `--name value` arguments
    (underscores written as dashes). A flag's type is its default's type, or
    types[key] for a default of None; a boolean may also be given bare
    (`--resume`); --help shows each flag with its comment (config_comments) and
    default. Returns the config as a namespace and the set of keys given on the
    command line."""
    parser = _OneLineParser(description=description, argument_default=argparse.SUPPRESS,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, default in defaults.items():
        flag = "--" + key.replace("_", "-")
        shown = "the paper's value for the algorithm and N-way" if default is None else repr(default)
        text = f"{(comments or {}).get(key, '')} (default: {shown})".strip().replace("%", "%%")
        if isinstance(default, bool):
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, metavar="BOOL", help=text)
        else:
            value_type = type(default) if default is not None else types[key]
            parser.add_argument(flag, type=_finite_float if value_type is float else value_type,
                                metavar=value_type.__name__.upper(), help=text)
    given = vars(parser.parse_args(argv))
    return SimpleNamespace(**{**defaults, **given}), set(given)


_held_locks = {}  # run folder: its open lock file; a run holds its folder until its process ends


def prepare_run_dir(run_dir, resume):
    """Create the run folder and lock it for this process (the operating system
    drops the lock when the process ends, however it ends); refuse a folder that
    another run is using, a started run unless resuming, and a resume without a
    checkpoint."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        fail(f"output folder {run_dir} is a file")
    if os.path.realpath(run_dir) not in _held_locks:
        try:
            os.makedirs(run_dir, exist_ok=True)
            lock = open(os.path.join(run_dir, ".lock"), "w")
        except OSError as error:
            fail(f"cannot write in the output folder {run_dir}: {error.strerror}")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(f"another run is using {run_dir} right now; wait for it or choose another --out-dir")
        _held_locks[os.path.realpath(run_dir)] = lock
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    if resume and not os.path.exists(checkpoint):
        fail(f"no checkpoint at {checkpoint} to continue from")
    if not resume and os.path.exists(checkpoint):
        fail(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out-dir")
    return run_dir


def open_run(run_dir, resuming, experiment, rank, world_size):
    """Process 0 prepares the run folder (prepare_run_dir) and, when resuming,
    loads the checkpoint of the experiment; every process gets the checkpoint
    (None for a new run)."""
    checkpoint = None
    if rank == 0:
        prepare_run_dir(run_dir, resuming)
        checkpoint = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"), experiment) if resuming else None
        before = checkpoint["config"].get("world_size", 1) if checkpoint else world_size
        if before != world_size:
            print(f"resuming a run of {before} process(es) in {world_size}: the tasks are the same, "
                  f"the sums over them are added up in another order")
    return distributed.from_rank_zero(checkpoint, world_size)


def check_tasks_per_process(world_size, **task_counts):
    """Every process needs at least one task of each kind."""
    for key, count in task_counts.items():
        if world_size > count:
            fail(f"{world_size} processes cannot share --{key.replace('_', '-')} {count}: "
                 f"start at most {count} processes")


def default_run_dir(experiment, name, cfg, given, named_keys):
    """results/<experiment>/<name>, tagged with the settings given on the command
    line that the name does not already say (key=value), so that runs with other
    settings never land in the same folder."""
    tags = [f"{key}={getattr(cfg, key)}" for key in sorted(given - named_keys - RESUME_FREE_KEYS - INVOCATION_KEYS)]
    return os.path.join("results", experiment, "-".join([name, *tags]))


def resumed_config(checkpoint, cfg, given, defaults, also_free=frozenset()):
    """The saved run's config, with the keys that may change on resume (those
    of RESUME_FREE_KEYS and also_free) taken from the command line. Any other
    key given with a different value is an error, and so is a value at the top
    of the script (defaults) that was changed since the run started."""
    saved, free_keys = checkpoint["config"], RESUME_FREE_KEYS | set(also_free)
    for key in given - free_keys - INVOCATION_KEYS:
        if getattr(cfg, key) != saved[key]:
            fail(f"--{key.replace('_', '-')} {getattr(cfg, key)} differs from the resumed run's {saved[key]}")
    started_with = checkpoint.get("defaults", defaults)
    for key in sorted(defaults.keys() - given - free_keys - INVOCATION_KEYS):
        if key in started_with and defaults[key] != started_with[key]:
            fail(f"{key} = {defaults[key]!r} at the top of the script differs from {started_with[key]!r}, "
                 f"its value when the run started: put it back, or start a new run")
    free = {key: value for key, value in vars(cfg).items()
            if key in INVOCATION_KEYS or (key in free_keys and key in given)}
    return SimpleNamespace(**{**saved, **free})


def _strict(data):
    """data with every NaN or infinity replaced by None (null), as strict JSON wants."""
    if isinstance(data, dict):
        return {key: _strict(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_strict(value) for value in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def save_json(data, path):
    """Strict JSON (NaN and infinity written as null), written then renamed."""
    with open(path + ".tmp", "w") as f:
        json.dump(_strict(data), f, indent=2, allow_nan=False)
    os.replace(path + ".tmp", path)


def save_checkpoint(state, path):
    """Write then rename, so a kill mid-write never leaves a broken checkpoint;
    a failed write (a full disk) stops the run in one line, the last checkpoint intact."""
    try:
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error).splitlines()[0]
        fail(f"cannot write {path} ({reason}); the last checkpoint written is intact", code=1)


def load_checkpoint(path, experiment):
    """A checkpoint written by the `experiment` script (its "experiment" entry)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        fail(f"{path} is damaged ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
             f"resume from a copy or start a new run")
    if not isinstance(checkpoint, dict) or checkpoint.get("experiment") != experiment:
        fail(f"{path} belongs to another experiment, not {experiment}")
    return checkpoint


class MetricsLog:
    """Append-only metrics CSV, flushed row by row. When a run resumes from a
    checkpoint, rows logged after that checkpoint are dropped first, so the
    file reads as one uninterrupted run."""

    def __init__(self, path, fields, resume_iteration=None):
        self.path, self.fields = path, fields
        rows = []
        if resume_iteration is not None and os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= resume_iteration]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, **row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)

    def read(self):
        return read_metrics(self.path)


def read_metrics(path):
    """The rows of a metrics CSV as floats, an empty cell as NaN."""
    with open(path, newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in r.items()} for r in csv.DictReader(f)]


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


def number(x):
    """A number for a table: 3 decimals, or 3 significant digits with an exponent when large."""
    return "n/a" if x is None else f"{x:.3f}" if abs(x) < 1e4 else f"{x:.2e}"


def percent(stats):
    """The mean and 95% CI of accuracies (fractions) as percentages, None kept."""
    return [[None if v is None else 100 * v for v in stats[key]] for key in ("mean", "ci95")]


def log_scale_if_possible(ax, axis="y"):
    """A log scale on an axis that has positive finite data, else a linear one
    (so that a diverged run still plots)."""
    data = [line.get_ydata() if axis == "y" else line.get_xdata() for line in ax.get_lines()]
    if any(((d > 0) & torch.isfinite(d)).any() for d in (torch.as_tensor(x, dtype=torch.float64) for x in data)):
        ax.set(**{f"{axis}scale": "log"})


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        fail(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def device_name(device, world_size):
    """The hardware a run trained on, for its results: GPU or CPU model, and processes."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {world_size} process(es)"
    model = "CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{model}, {torch.get_num_threads()} thread(s) per process, {world_size} process(es)"


def plot_with_ci(ax, mean, ci, label, **style):
    """A line over steps 0..S with its 95% confidence band."""
    steps = range(len(mean))
    mean, ci = (torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
                for values in (mean, ci))
    line, = ax.plot(steps, mean, marker="o", markersize=3, label=label, **style)
    ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2, color=line.get_color())


def run_main(main, argv):
    """Run a script's main(argv) as a command: signals stop it cleanly
    (stop_on_signals), and a failed process group ends in one line, exit 1."""
    stop_on_signals()
    try:
        main(argv)
        distributed.finish()
    except distributed.ProcessFailure as error:
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        os._exit(1)  # not through the broken process group's destructors, which can abort
